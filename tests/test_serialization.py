"""Tests of exekutor.serialization: round trips through each JSON backend, the registry, and errors (no database)."""

import enum
import math
import subprocess
import sys
import textwrap
import uuid
from datetime import date, datetime, time, timedelta, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from exekutor.errors import SerializationError
from exekutor.serialization import (
    MAX_INT_DIGITS,
    MAX_NESTING,
    TAG,
    dump_arguments,
    json_backend,
    load_arguments,
    serializers,
)


class Color(enum.Enum):
    RED = "r"
    GREEN = "g"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is type(self) and (other.x, other.y) == (self.x, self.y)


class Point3(Point):
    """A subclass of a registered type, not registered itself."""


class Money:
    def __init__(self, amount, currency):
        self.amount, self.currency = amount, currency

    def __eq__(self, other):
        return type(other) is type(self) and (other.amount, other.currency) == (self.amount, self.currency)

    def __exekutor_dump__(self):
        return [self.amount, self.currency]

    @classmethod
    def __exekutor_load__(cls, data):
        return cls(*data)


class Unknown:
    pass


@pytest.fixture(params=["json", "orjson"])
def backend(request):
    if request.param == "orjson":
        pytest.importorskip("orjson")
    return json_backend(request.param)


@pytest.fixture
def registered():
    """Point (register form, dump gives a dict holding a Decimal) and Money (class decorator form)."""
    serializers.register(Point, lambda p: {"x": p.x, "y": p.y}, lambda d: Point(d["x"], d["y"]))
    serializers.register_class(name="test:Money")(Money)
    yield
    serializers.unregister(Point)
    serializers.unregister(Money)


def round_trip(backend, *args, **kwargs):
    text = backend.dumps(dump_arguments(args, kwargs, job_name="job"))
    assert isinstance(text, str)
    return load_arguments(backend.loads(text))


def assert_same(loaded, original):
    """Equal and of the same type, all the way down (== alone says 1 == 1.0 == True)."""
    assert type(loaded) is type(original), (loaded, original)
    if isinstance(original, float) and math.isnan(original):
        assert math.isnan(loaded)
    elif isinstance(original, float):
        assert (loaded, math.copysign(1, loaded)) == (original, math.copysign(1, original))
    elif isinstance(original, (list, tuple)):
        assert len(loaded) == len(original)
        for got, want in zip(loaded, original):
            assert_same(got, want)
    elif isinstance(original, dict):
        assert loaded.keys() == original.keys()
        for key in original:
            assert_same(loaded[key], original[key])
    else:
        assert loaded == original


VALUES = [
    None,
    True,
    False,
    0,
    -7,
    2**63 - 1,
    -(2**63),
    2**64,
    -(10**30),
    1.5,
    0.1,
    -0.0,
    0.0,
    1e16,
    -1.5e300,
    5e-324,
    float("inf"),
    float("-inf"),
    "",
    "héllo ✓",
    "nul\x00inside\x00",
    "\x00",
    [],
    [1, "a", [2.5, None]],
    {},
    {"a": 1, "b": [True, {"c": "d"}]},
    {TAG: "datetime", "v": "not a date"},
    {TAG: "x"},
    {"k\x00ey": "v"},
    (),
    (1, (2, "x")),
    {1, "a", (2, 3)},
    set(),
    frozenset({1, 2}),
    datetime(2024, 2, 29, 13, 45, 1, 123456),
    datetime(2024, 2, 29, 13, 45, 1, 7, tzinfo=timezone(timedelta(hours=5, minutes=30))),
    datetime(2024, 1, 1, tzinfo=timezone.utc),
    date(1999, 12, 31),
    time(23, 59, 59, 999999),
    time(1, 2, 3, tzinfo=timezone(timedelta(hours=-3))),
    timedelta(days=-3, seconds=5, microseconds=17),
    Decimal("1234567890.123456789012345678901"),
    Decimal("-0.00"),
    uuid.UUID("12345678-1234-5678-1234-567812345678"),
    b"\x00\xffbytes",
    Color.GREEN,
    Level.HIGH,
]


@pytest.mark.parametrize("value", VALUES, ids=repr)
def test_builtin_values_round_trip(backend, value):
    (loaded,), _ = round_trip(backend, value)
    assert_same(loaded, value)


def test_nested_containers_and_kwargs_round_trip(backend):
    value = {"when": [datetime(2020, 5, 17, 1, 2, 3)], "ids": {uuid.UUID(int=5)}, "t": (Decimal("1.10"), b"x")}
    args, kwargs = round_trip(backend, 1, value, flags=frozenset({Color.RED}), **{TAG: "kwarg named like the tag"})
    assert_same(args, (1, value))
    assert kwargs == {"flags": frozenset({Color.RED}), TAG: "kwarg named like the tag"}


def test_nan_round_trips(backend):
    (loaded,), _ = round_trip(backend, float("nan"))
    assert type(loaded) is float and math.isnan(loaded)


def test_bytearray_and_memoryview_load_as_bytes(backend):
    args, _ = round_trip(backend, bytearray(b"ab"), memoryview(b"cd"))
    assert args == (b"ab", b"cd") and all(type(arg) is bytes for arg in args)


def test_zoneinfo_datetime_comes_back_as_the_same_instant_with_a_fixed_offset(backend):
    value = datetime(2024, 7, 1, 12, 0, tzinfo=ZoneInfo("Europe/Paris"))
    (loaded,), _ = round_trip(backend, value)
    assert loaded == value
    assert loaded.utcoffset() == timedelta(hours=2)


def test_plain_json_values_are_stored_as_themselves():
    document = dump_arguments((1, "a", None, True, 1.5, [2], {"k": "v"}), {"x": 3})
    assert document == {"args": [1, "a", None, True, 1.5, [2], {"k": "v"}], "kwargs": {"x": 3}}


def test_tagged_value_format():
    document = dump_arguments((date(2020, 1, 2), Color.RED), {})
    assert document["args"] == [
        {TAG: "date", "v": "2020-01-02"},
        {TAG: "enum", "v": [f"{__name__}:Color", "RED"]},
    ]


def test_json_backend_output_is_compact_and_keeps_unicode():
    assert json_backend("json").dumps({"a": ["é", 1]}) == '{"a":["é",1]}'
    assert json_backend("json") is json_backend("json")


def test_load_ignores_other_keys_and_missing_kwargs():
    assert load_arguments({"job": "x", "args": [1]}) == ((1,), {})


# --- registered types ----------------------------------------------------------------------------------------------


def test_registered_types_round_trip(backend, registered):
    point, money = Point(Decimal("1.5"), [date(2020, 1, 1)]), Money(Decimal("9.99"), "EUR")
    args, kwargs = round_trip(backend, point, [money], m=money)
    assert args == (point, [money]) and kwargs == {"m": money}
    assert type(args[0].x) is Decimal


def test_registered_payload_uses_the_name(registered):
    document = dump_arguments((Money(1, "USD"), Point(1, 2)), {})
    assert document["args"] == [
        {TAG: "test:Money", "v": [1, "USD"]},
        {TAG: f"{__name__}:Point", "v": {"x": 1, "y": 2}},
    ]


def test_subclass_of_a_registered_type_is_refused_not_loaded_as_its_base(registered):
    assert serializers.lookup(Point3).cls is Point
    with pytest.raises(SerializationError) as info:
        dump_arguments((1, [Point3(1, 2)]), {}, job_name="j")
    message = str(info.value)
    assert message.startswith("cannot serialize argument 2 of j (type Point3 at args[1][0])")
    assert "subclass of Point" in message and "register Point3 itself" in message


def test_a_serializer_registered_for_subclasses_serializes_them(backend):
    serializers.register(Point, lambda p: [type(p).__name__, p.x, p.y],
                         lambda d: {"Point": Point, "Point3": Point3}[d[0]](*d[1:]), subclasses=True)
    try:
        args, _ = round_trip(backend, Point3(1, 2), Point(3, 4))
    finally:
        serializers.unregister(Point)
    assert type(args[0]) is Point3 and args == (Point3(1, 2), Point(3, 4))


def test_registering_the_subclass_itself_takes_precedence(backend, registered):
    serializers.register(Point3, lambda p: [p.x, p.y], lambda d: Point3(*d))
    try:
        (loaded,), _ = round_trip(backend, Point3(1, 2))
        assert type(loaded) is Point3
    finally:
        serializers.unregister(Point3)
    assert serializers.lookup(Point3).cls is Point


def test_bare_register_class_decorator_uses_the_default_name():
    serializers.register_class(Money)
    try:
        assert serializers.lookup(Money).name == f"{__name__}:Money"
    finally:
        serializers.unregister(Money)


def test_unregister_forgets_the_type():
    serializers.register(Point, vars, lambda d: Point(**d))
    serializers.unregister(Point)
    assert serializers.lookup(Point3) is None
    with pytest.raises(SerializationError, match="type Point"):
        dump_arguments((Point(1, 2),), {})
    with pytest.raises(KeyError):
        serializers.unregister(Point)


def test_registering_a_builtin_name_or_a_taken_name_is_refused(registered):
    with pytest.raises(ValueError, match="reserved"):
        serializers.register(Unknown, vars, Unknown, name="datetime")
    with pytest.raises(ValueError, match="already registered"):
        serializers.register(Unknown, vars, Unknown, name="test:Money")
    with pytest.raises(ValueError, match="exekutor itself"):
        serializers.register(datetime, str, datetime.fromisoformat)
    assert serializers.lookup(Unknown) is None


def test_a_failing_dump_function_is_reported_with_the_position():
    serializers.register(Unknown, lambda u: 1 / 0, Unknown)
    try:
        with pytest.raises(SerializationError, match=r"argument 1 of j \(type Unknown at args\[0\]\).*ZeroDivision"):
            dump_arguments((Unknown(),), {}, job_name="j")
    finally:
        serializers.unregister(Unknown)


# --- errors --------------------------------------------------------------------------------------------------------


def test_unserializable_argument_names_its_position_and_type():
    with pytest.raises(SerializationError) as info:
        dump_arguments((1, {"user": Unknown()}), {}, job_name="send_welcome")
    assert str(info.value) == (
        "cannot serialize argument 2 of send_welcome (type Unknown at args[1].user): "
        "register a serializer with exekutor.serializers.register(Unknown, dump, load)"
    )


def test_unserializable_keyword_argument_names_it():
    with pytest.raises(SerializationError, match=r"argument 'user' of j \(type Unknown at kwargs.user\[0\]\)"):
        dump_arguments((), {"user": [Unknown()]}, job_name="j")


@pytest.mark.parametrize(
    "value",
    [
        [1, 2, Unknown()],  # plain lists
        (Unknown(),),  # tuples
        {"a": Unknown()},
        Color,  # a class, not a member
        datetime.now,
        type("StrSub", (str,), {})("x"),  # subclasses of built-ins are not silently stored as the base type
    ],
    ids=repr,
)
def test_unserializable_values_are_refused(value):
    with pytest.raises(SerializationError, match="cannot serialize argument 1"):
        dump_arguments((value,), {})


def test_dict_with_non_str_keys_is_refused_naming_the_key_type():
    with pytest.raises(SerializationError, match=r"dict key 1 of type int at args\[0\]\.a\).*must be str"):
        dump_arguments(({"a": {1: "x"}},), {})


def test_local_enum_fails_at_enqueue_not_in_the_worker():
    class Local(enum.Enum):
        A = 1

    with pytest.raises(SerializationError, match="enum member"):
        dump_arguments((Local.A,), {})


def test_cyclic_arguments_are_refused():
    cycle = []
    cycle.append(cycle)
    with pytest.raises(SerializationError, match="nested too deeply or cyclic"):
        dump_arguments((cycle,), {})


@pytest.mark.parametrize(
    "document, message",
    [
        ("not a dict", "malformed job arguments"),
        ({"kwargs": {}}, "malformed job arguments"),
        ({"args": {}}, "malformed job arguments"),
        ({"args": [], "kwargs": [1]}, "'kwargs' is"),
        ({"args": [{TAG: "nope", "v": 1}]}, "unknown tag 'nope'"),
        ({"args": [{TAG: ["list"], "v": 1}]}, "unknown tag"),
        ({"args": [{TAG: "date"}]}, "malformed tagged value"),
        ({"args": [{TAG: "date", "v": "2020-01-01", "x": 1}]}, "malformed tagged value"),
        ({"args": [{TAG: "date", "v": "yesterday"}]}, "bad 'date' value 'yesterday'"),
        ({"args": [{TAG: "date", "v": 5}]}, "expected str"),
        ({"args": [{TAG: "decimal", "v": "1.2.3"}]}, "bad 'decimal' value"),
        ({"args": [{TAG: "bytes", "v": "!!"}]}, "bad 'bytes' value"),
        ({"args": [{TAG: "timedelta", "v": [1, 2]}]}, "bad 'timedelta' value"),
        ({"args": [{TAG: "set", "v": [[1]]}]}, "bad 'set' value"),
        ({"args": [{TAG: "dict", "v": [[1, 2]]}]}, "bad 'dict' value"),
        ({"args": [{TAG: "str", "v": ["a", 1]}]}, "bad 'str' value"),
        ({"args": [{TAG: "enum", "v": [f"{__name__}:Color", "BLUE"]}]}, "has no member 'BLUE'"),
        ({"args": [{TAG: "enum", "v": ["collections:OrderedDict", "x"]}]}, "not an Enum class"),
        ({"args": [{TAG: "enum", "v": ["os:system", "x"]}]}, "not an Enum class"),
        ({"args": [[{TAG: "tuple", "v": [{TAG: "uuid", "v": "zz"}]}]]}, "bad 'uuid' value 'zz'"),
    ],
    ids=repr,
)
def test_malformed_documents_raise_a_one_line_serialization_error(document, message):
    with pytest.raises(SerializationError, match=message) as info:
        load_arguments(document)
    assert "\n" not in str(info.value)


def test_enum_from_a_module_not_imported_is_refused_and_not_imported(tmp_path, monkeypatch):
    (tmp_path / "exekutor_test_payload_enum.py").write_text(
        textwrap.dedent(
            """
            import enum
            class Evil(enum.Enum):
                X = 1
            """
        )
    )
    monkeypatch.syspath_prepend(str(tmp_path))  # importable, so only the rule prevents the import
    document = {"args": [{TAG: "enum", "v": ["exekutor_test_payload_enum:Evil", "X"]}]}
    with pytest.raises(SerializationError, match="never imported"):
        load_arguments(document)
    assert "exekutor_test_payload_enum" not in sys.modules


def test_registered_name_unknown_to_the_loading_process(registered):
    document = dump_arguments((Money(1, "EUR"),), {})
    serializers.unregister(Money)
    try:
        with pytest.raises(SerializationError, match="unknown tag 'test:Money'"):
            load_arguments(document)
    finally:
        serializers.register_class(name="test:Money")(Money)  # the fixture unregisters it


# --- JSON backends -------------------------------------------------------------------------------------------------


class BytesBackend:
    @staticmethod
    def dumps(obj):
        return json_backend("json").dumps(obj).encode()

    @staticmethod
    def loads(text):
        return json_backend("json").loads(text)


@pytest.mark.parametrize("spec", [BytesBackend, f"{__name__}:BytesBackend", f"{__name__}.BytesBackend", "json"])
def test_json_backend_specs(spec):
    backend = json_backend(spec)
    assert backend.dumps({"a": [1]}) == '{"a":[1]}'
    assert backend.loads(b'{"a":[1]}') == {"a": [1]}


def test_orjson_backend_returns_str():
    pytest.importorskip("orjson")
    backend = json_backend("orjson")
    assert backend.dumps({"a": "é"}) == '{"a":"é"}'
    assert backend is json_backend("orjson")


def test_json_backend_writes_what_the_stdlib_encoder_writes():
    # "json" uses orjson's encoder when it is installed: the documents must be the same standard JSON.
    import json as stdlib_json

    document = dump_arguments((float("nan"), "é\x00", [1, 2.5, None, True], {"k": Decimal("1.10")}),
                              {"when": datetime(2024, 1, 1, tzinfo=timezone.utc)})
    encoder = stdlib_json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    assert json_backend("json").dumps(document) == encoder.encode(document)
    assert json_backend("json").loads(encoder.encode(document)) == document


@pytest.mark.parametrize(
    "spec, message",
    [
        ("no_such_module_for_exekutor", "cannot be imported"),
        ("json:no_such_attribute", "cannot be imported"),
        ("math", "has no callable dumps and loads"),
        (42, "has no callable dumps and loads"),
        ("", "cannot be imported"),
    ],
)
def test_bad_json_serializer_spec_is_a_one_line_value_error(spec, message):
    with pytest.raises(ValueError, match=message) as info:
        json_backend(spec)
    assert "\n" not in str(info.value)


def test_values_that_jsonb_would_reject_or_alter_are_tagged():
    # jsonb: no \u0000, numbers become numeric (1e+16 prints as an integer, -0.0 as 0.0); orjson: 64-bit ints only
    values = (1e16, -0.0, float("nan"), 2**64, "a\x00b", {"k\x00": 1})
    document = dump_arguments(values, {})
    assert [value[TAG] for value in document["args"]] == ["float", "float", "float", "int", "str", "dict"]
    assert "\\u0000" not in json_backend("json").dumps(document)


# --- bounds: what PostgreSQL, the JSON encoders and the worker's decoder can take -----------------------------------


def nest(depth, wrap, value="leaf"):
    for _ in range(depth):
        value = wrap(value)
    return value


NESTINGS = {
    "list": lambda v: [v],
    "dict": lambda v: {"k": v},
    "tuple": lambda v: (v,),
    "frozenset": lambda v: frozenset([v]),
    "escaped dict": lambda v: {"k\x00": v, TAG: 1},  # the pair form: 3 JSON levels per level
    "registered": lambda v: Wrapper(v),
}


class Wrapper:
    def __init__(self, inner):
        self.inner = inner

    def __eq__(self, other):
        return type(other) is Wrapper and other.inner == self.inner


@pytest.fixture
def wrapper():
    serializers.register(Wrapper, lambda w: w.inner, Wrapper)
    yield
    serializers.unregister(Wrapper)


@pytest.mark.parametrize("kind", NESTINGS)
def test_nesting_up_to_the_maximum_round_trips_and_one_more_level_is_refused(backend, wrapper, kind):
    """The deepest argument accepted, in its most expensive form (3 JSON levels a level, a leaf that needs 5
    more), is written by orjson (254 levels at most) and read back by the decoders."""
    value = nest(MAX_NESTING, NESTINGS[kind])
    if kind == "escaped dict":
        value = nest(MAX_NESTING - 1, NESTINGS[kind], {"\x00": "\x00"})  # the deepest level: a NUL key and str
    args, kwargs = round_trip(backend, value, k=value)
    assert args == (value,) and kwargs == {"k": value}
    with pytest.raises(SerializationError, match="argument 1 .nested too deeply or cyclic: more than 64 levels"):
        dump_arguments((NESTINGS[kind](value),), {})


@pytest.mark.parametrize("kind", NESTINGS)
@pytest.mark.parametrize("depth", [MAX_NESTING + 1, 200, 256, 300, 330, 5000])
def test_nesting_beyond_the_maximum_is_refused_naming_the_argument(wrapper, kind, depth):
    with pytest.raises(SerializationError) as info:
        dump_arguments((1, nest(depth, NESTINGS[kind])), {}, job_name="j")
    message = str(info.value)
    assert message.startswith("cannot serialize argument 2 of j (nested too deeply or cyclic: more than 64 levels")
    assert len(message) < 600 and "\n" not in message
    with pytest.raises(SerializationError, match="argument 'deep' of j .nested too deeply"):
        dump_arguments((), {"deep": nest(depth, NESTINGS[kind])}, job_name="j")


def test_cyclic_arguments_are_refused_by_the_nesting_limit():
    cycle = {}
    cycle["self"] = cycle
    with pytest.raises(SerializationError, match=r"argument 'c' \(nested too deeply or cyclic: .* at kwargs.c.self"):
        dump_arguments((), {"c": cycle})


def test_ints_up_to_the_digit_limit_round_trip_and_longer_ones_are_refused(backend):
    largest = 10**MAX_INT_DIGITS - 1
    args, _ = round_trip(backend, largest, -largest)
    assert args == (largest, -largest)
    for value in (10**MAX_INT_DIGITS, -(10**MAX_INT_DIGITS), 7**20000):
        with pytest.raises(SerializationError, match=r"argument 2 of j \(int of more than 4300 digits .*at args\[1\]"):
            dump_arguments((1, value), {}, job_name="j")


def test_the_digit_limit_holds_even_where_this_process_allows_longer_ints():
    previous = sys.get_int_max_str_digits()
    sys.set_int_max_str_digits(0)  # unlimited here; a worker with the default could not load it
    try:
        with pytest.raises(SerializationError, match=r"argument 'n' \(int of more than 4300 digits"):
            dump_arguments((), {"n": [10**MAX_INT_DIGITS]})
    finally:
        sys.set_int_max_str_digits(previous)


@pytest.mark.parametrize("args, kwargs, position", [
    (("ok", "lone \ud800 surrogate"), {}, r"argument 2 \(str 'lone \\ud800 surrogate' at args\[1\]"),
    ((["\udfff"],), {}, r"argument 1 \(str '\\udfff' at args\[0\]\[0\]"),
    (({"k\ud83d": 1},), {}, r"argument 1 \(dict key 'k\\ud83d' at args\[0\]"),
    (((1, {"a": "x\x00\udc00"}),), {}, r"argument 1 \(str 'x\\x00\\udc00' at args\[0\]\[1\]\.a"),
    ((), {"name": "\ud800"}, r"argument 'name' \(str '\\ud800' at kwargs.name"),
    ((), {"\ud800": 1}, r"kwargs \(dict key '\\ud800' at kwargs\)"),
], ids=repr)
def test_lone_surrogates_are_refused_naming_the_argument(args, kwargs, position):
    with pytest.raises(SerializationError, match=position + ".*lone surrogate"):
        dump_arguments(args, kwargs)


def test_valid_non_ascii_text_round_trips_and_a_surrogate_beside_it_is_refused(backend):
    text = "é ☃ 😀 \U0010ffff \x00 \ufffd"
    args, kwargs = round_trip(backend, text, {text: text}, **{text: [text]})
    assert args == (text, {text: text}) and kwargs == {text: [text]}
    with pytest.raises(SerializationError, match="argument 2 .*lone surrogate"):
        dump_arguments((text, text + "\udbff"), {})


def test_a_serializer_name_postgresql_cannot_store_is_refused():
    for name in ("bad\x00name", "bad\ud800name"):
        with pytest.raises(ValueError, match="serializer name"):
            serializers.register(Unknown, vars, Unknown, name=name)
    assert serializers.lookup(Unknown) is None


def test_an_enum_defined_in_main_is_refused_at_enqueue(tmp_path):
    """Run as a script, the enum's class lives in __main__: found there by this process, never by a worker."""
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        import enum
        from exekutor.errors import SerializationError
        from exekutor.serialization import dump_arguments

        class Mood(enum.Enum):
            HAPPY = 1

        try:
            dump_arguments((), {"mood": [Mood.HAPPY]}, job_name="j")
        except SerializationError as error:
            print(error)
        else:
            print("accepted")
    """))
    root = str(__import__("pathlib").Path(__file__).resolve().parent.parent)
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60,
                            env={"PYTHONPATH": root, "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    message = result.stdout.strip()
    assert message.startswith("cannot serialize argument 'mood' of j (enum member <Mood.HAPPY: 1> at kwargs.mood[0])")
    assert "defined in __main__" in message
