"""Job arguments to and from the JSON document stored in a PostgreSQL ``jsonb`` column.

Document (``dump_arguments``; other keys, such as the job name, are left alone by ``load_arguments``)::

    {"args": [<value>, ...], "kwargs": {"<name>": <value>, ...}}

JSON scalars, lists and dicts with ``str`` keys are stored as themselves. Every other value is a *tagged value*, a
dict with exactly two keys, ``{"__exekutor__": <tag>, "v": <payload>}``:

==================  =========================================  ================================================
tag                 payload                                    used for
==================  =========================================  ================================================
float               ``repr()``: "nan", "inf", "1e+16", "-0.0"  floats jsonb cannot keep: NaN/±inf; |x| >= 1e16
                                                               (jsonb's numeric prints them as integers); -0.0
int                 decimal string (at most MAX_INT_DIGITS)    ints outside 64 bits (orjson cannot write them)
str                 list of the parts between NULs             strings with ``\\x00`` (jsonb rejects it)
dict                list of ``[key, value]`` pairs             dicts having the tag key, or a key with a NUL
tuple/set/frozenset list of items                              \\
datetime/date/time  ``isoformat()``                            \\
timedelta           ``[days, seconds, microseconds]``          \\
decimal, uuid       ``str()``                                  \\
bytes               base64 string                              bytes, bytearray and memoryview (load as bytes)
enum                ``["module:QualName", "MEMBER_NAME"]``     Enum members (IntEnum, StrEnum... too)
<registered name>   the serializer's ``dump(value)``, encoded  registered types (default name "module:QualName")
==================  =========================================  ================================================

Known losses: jsonb does not keep dict key order; a zoneinfo tz comes back as a fixed-offset ``timezone`` (the
instant is equal); a ``time`` with a zoneinfo tz comes back naive (a zone needs a date to give an offset);
Flag combinations of several members are not serializable. Subclasses of built-in types (other than Enum), and of
registered types unless registered with ``subclasses=True``, are not silently stored as their base type: register
a serializer for them. An Enum class defined in ``__main__`` is refused (a worker has another ``__main__``).

Refused at enqueue, before anything reaches the database: strs and dict keys with a lone surrogate; ints of more
than MAX_INT_DIGITS digits; containers and registered values nested more than MAX_NESTING levels (or cyclic).

Security: an enum is loaded only from a module already in ``sys.modules``; nothing named in a payload is imported.
"""

from __future__ import annotations

import base64
import functools
import importlib
import json
import math
import operator
import re
import reprlib
import sys
from collections.abc import Callable
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any, NamedTuple
from uuid import UUID

from exekutor.errors import SerializationError

__all__ = [
    "TAG",
    "JsonBackend",
    "Serializer",
    "SerializerRegistry",
    "dump_arguments",
    "json_backend",
    "load_arguments",
    "serializers",
]

TAG = "__exekutor__"
_INT64 = 2**63
# How deep an argument may nest containers (list, tuple, set, frozenset, dict) and registered values: the stored
# document must stay within the depth limits of every JSON encoder and decoder on the way (orjson writes at most
# 254 levels, and a tuple or an escaped dict takes 2 or 3), and load in the worker far from the recursion limit.
MAX_NESTING = 64
# Python's default limit on int <-> decimal str conversion (sys.int_info.default_max_str_digits): a worker with
# the default cannot load a longer int, whatever the enqueuing process allows.
MAX_INT_DIGITS = 4300
_SURROGATE = re.compile("[\ud800-\udfff]")


def text_problem(text: str) -> str | None:
    """Why PostgreSQL cannot store this str as text or in jsonb (a NUL, a lone surrogate), else None."""
    if "\x00" in text:
        return "contains a NUL character (\\x00)"
    if not text.isascii() and _SURROGATE.search(text):
        return "contains a lone surrogate (not valid Unicode, cannot be encoded as UTF-8)"
    return None


# --- registry of user serializers ---------------------------------------------------------------------------------


class Serializer(NamedTuple):
    cls: type
    name: str
    dump: Callable[[Any], Any]
    load: Callable[[Any], Any]
    subclasses: bool = False  # whether instances of subclasses may use it (its load rebuilds their own type)


class SerializerRegistry:
    """User serializers, by class (exact, then along the MRO) for dumping and by name for loading."""

    def __init__(self):
        self._by_class: dict[type, Serializer] = {}
        self._by_name: dict[str, Serializer] = {}
        self._resolved: dict[type, Serializer | None] = {}  # MRO lookups; cleared whenever registrations change

    def register(self, cls: type, dump: Callable[[Any], Any], load: Callable[[Any], Any], name: str | None = None,
                 subclasses: bool = False):
        """Store ``cls`` values as ``dump(value)`` (itself serialized) and rebuild them with ``load(data)``.

        Instances of a subclass of ``cls`` are refused unless the subclass is registered itself, or ``subclasses``
        is true: say so only when ``dump`` records the subclass and ``load`` rebuilds it (else they would come
        back as ``cls``)."""
        if not isinstance(cls, type):
            raise TypeError(f"serializers.register needs a class, not {_short(cls)}")
        if cls in _ENCODERS:
            raise ValueError(f"{cls.__qualname__} is serialized by exekutor itself and cannot be registered")
        if not (callable(dump) and callable(load)):
            raise TypeError(f"serializers.register({cls.__qualname__}, dump, load): dump and load must be callable")
        name = _class_path(cls) if name is None else name
        self._check_name(cls, name)
        self.unregister(cls, missing_ok=True)  # registering a class again replaces its serializer
        self._by_class[cls] = self._by_name[name] = Serializer(cls, name, dump, load, bool(subclasses))
        return cls

    def register_class(self, name: str | type | None = None, subclasses: bool = False):
        """Class decorator for classes with ``__exekutor_dump__(self)`` and classmethod ``__exekutor_load__``."""
        if isinstance(name, type):  # used bare, as @serializers.register_class
            return self.register_class()(name)

        def decorate(cls):
            if not (hasattr(cls, "__exekutor_dump__") and hasattr(cls, "__exekutor_load__")):
                raise TypeError(f"{cls.__qualname__} needs __exekutor_dump__ and __exekutor_load__ methods")
            # methodcaller, so that a subclass's own __exekutor_dump__ is used for its instances
            return self.register(cls, operator.methodcaller("__exekutor_dump__"), cls.__exekutor_load__, name,
                                 subclasses)

        return decorate

    def unregister(self, cls: type, missing_ok: bool = False) -> None:
        entry = self._by_class.pop(cls, None)
        if entry is None and not missing_ok:
            raise KeyError(f"{_class_path(cls)} has no registered serializer")
        if entry is not None:
            del self._by_name[entry.name]
        self._resolved.clear()

    def lookup(self, cls: type) -> Serializer | None:
        """The serializer of ``cls`` or of its nearest registered base class."""
        try:
            return self._resolved[cls]
        except KeyError:
            found = next((self._by_class[base] for base in cls.__mro__ if base in self._by_class), None)
            self._resolved[cls] = found
            return found

    def named(self, name: str) -> Serializer | None:
        return self._by_name.get(name)

    def _check_name(self, cls, name):
        if not isinstance(name, str) or not name:
            raise ValueError(f"serializer name for {cls.__qualname__} must be a non-empty str, not {_short(name)}")
        if name in _DECODERS:
            raise ValueError(f"serializer name {name!r} is reserved for a built-in type")
        problem = text_problem(name)
        if problem:
            raise ValueError(f"serializer name {name!r} {problem}")
        other = self._by_name.get(name)
        if other is not None and other.cls is not cls:
            raise ValueError(f"serializer name {name!r} is already registered for {_class_path(other.cls)}")


serializers = SerializerRegistry()


# --- encoding ------------------------------------------------------------------------------------------------------


class _Unserializable(Exception):
    """Internal: raised where encoding fails; each container adds its position as it propagates up."""

    def __init__(self, value, what, hint):
        super().__init__(what)
        self.child, self.what, self.hint = value, what, hint
        self.key = None  # position in the outermost container reached so far
        self.segments: list[str] = []  # path, innermost first

    def climb(self, container, key, segment):
        self.child, self.key = container, key
        self.segments.append(segment)


def _encode(value, depth):
    """`depth`: how many containers (and registered values) enclose `value`."""
    # Built-ins are dispatched on the exact type: one dict lookup, no isinstance chain.
    encoder = _ENCODERS.get(type(value))
    if encoder is None:
        return _encode_other(value, depth)
    return encoder(value, depth)


def _encode_other(value, depth):
    cls = type(value)
    entry = serializers.lookup(cls)
    if entry is not None:
        if entry.cls is not cls and not entry.subclasses:
            name, base = cls.__qualname__, entry.cls.__qualname__
            raise _Unserializable(
                value, f"type {name}", f"it is a subclass of {base}, whose serializer would load it as a {base}: "
                f"register {name} itself, or register {base} with subclasses=True if its load rebuilds subclasses"
            )
        return _encode_registered(value, entry, depth)
    if isinstance(value, Enum):
        return _encode_enum(value)
    name = cls.__qualname__
    raise _Unserializable(
        value, f"type {name}", f"register a serializer with exekutor.serializers.register({name}, dump, load)"
    )


def _too_deep(value):
    return _Unserializable(
        value, f"nested too deeply or cyclic: more than {MAX_NESTING} levels",
        f"arguments may nest containers and registered values at most {MAX_NESTING} levels deep"
    )


def _encode_items(value, depth):
    """A list, tuple, set or frozenset as a JSON list."""
    if depth >= MAX_NESTING:
        raise _too_deep(value)
    depth += 1
    try:
        return [_encode(item, depth) for item in value]
    except _Unserializable as exc:
        # Found again only on failure, so that the normal path keeps no index.
        index = next((i for i, item in enumerate(value) if item is exc.child), None)
        exc.climb(value, index, f"[{index}]")
        raise


def _encode_dict(value, depth):
    if depth >= MAX_NESTING:
        raise _too_deep(value)
    depth += 1
    try:
        if _needs_escape(value):
            return {TAG: "dict", "v": [[_encode_str(key), _encode(item, depth)] for key, item in value.items()]}
        return {key: _encode(item, depth) for key, item in value.items()}
    except _Unserializable as exc:
        key = next((k for k, item in value.items() if item is exc.child), None)
        if key is None:  # the dict itself failed (a bad key): its parent records the position
            raise
        exc.climb(value, key, f".{key}" if key.isidentifier() else f"[{key!r}]")
        raise


def _needs_escape(value):
    """Whether a dict must use the pair form (it has the tag key, or a NUL in a key); rejects non-str keys and
    keys with a lone surrogate."""
    nul = False
    for key in value:
        if type(key) is not str:
            what = f"dict key {_short(key)} of type {type(key).__qualname__}"
            raise _Unserializable(value, what, "dict keys must be str")
        nul = nul or "\x00" in key
        if not key.isascii() and _SURROGATE.search(key):
            raise _Unserializable(value, f"dict key {_short(key)}", _SURROGATE_HINT)
    return nul or TAG in value


_SURROGATE_HINT = "it contains a lone surrogate: strings must be valid Unicode (encodable as UTF-8)"


def _encode_str(value, depth=0):
    # isascii() is O(1) in CPython: only non-ASCII strings pay for the surrogate search.
    if not value.isascii() and _SURROGATE.search(value):
        raise _Unserializable(value, f"str {_short(value)}", _SURROGATE_HINT)
    if "\x00" in value:  # jsonb rejects \u0000
        return {TAG: "str", "v": value.split("\x00")}
    return value


def _encode_float(value, depth):
    # NaN fails the comparison too; zero takes the slow check because jsonb turns -0.0 into 0.0.
    if -1e16 < value < 1e16 and (value or math.copysign(1.0, value) > 0):
        return value
    return {TAG: "float", "v": repr(value)}


def _encode_int(value, depth):
    if -_INT64 <= value < _INT64:
        return value
    try:
        text = str(value)
    except ValueError:  # over this process's sys.get_int_max_str_digits()
        text = None
    if text is None or len(text) - (value < 0) > MAX_INT_DIGITS:
        raise _Unserializable(
            value, f"int of more than {MAX_INT_DIGITS} digits ({value.bit_length()} bits)",
            f"Python loads ints of at most {MAX_INT_DIGITS} digits from text: pass it as something else (bytes, "
            "a str in hex)"
        )
    return {TAG: "int", "v": text}


def _encode_registered(value, entry, depth):
    if depth >= MAX_NESTING:
        raise _too_deep(value)
    try:
        data = entry.dump(value)
    except Exception as exc:
        hint = f"its serializer {entry.name!r} raised {_one_line(exc)}"
        raise _Unserializable(value, f"type {type(value).__qualname__}", hint) from exc
    try:
        return {TAG: entry.name, "v": _encode(data, depth + 1)}
    except _Unserializable as exc:
        exc.climb(value, None, f"<{entry.name}>")
        raise


def _encode_enum(member):
    cls = type(member)
    path = _class_path(cls)
    # Checked now so that an enum the worker could never load fails the enqueue, not the job.
    if cls.__module__ == "__main__":
        hint = ("its class is defined in __main__ (the script that was run), which a worker does not have: define "
                "it in an importable module that the worker imports")
        raise _Unserializable(member, f"enum member {_short(member)}", hint)
    if _find_enum(path) is not cls or cls.__members__.get(member.name) is not member:
        hint = "only single members of module-level Enum classes can be serialized; register a serializer"
        raise _Unserializable(member, f"enum member {_short(member)}", hint)
    problem = text_problem(path + member.name)
    if problem:
        raise _Unserializable(member, f"enum member {_short(member)}", f"its class path or name {problem}")
    return {TAG: "enum", "v": [path, member.name]}


def _tagging(tag, convert):
    return lambda value, depth: {TAG: tag, "v": convert(value)}


def _tagging_items(tag):
    return lambda value, depth: {TAG: tag, "v": _encode_items(value, depth)}


def _identity(value, depth):
    return value


def _b64(value):
    return base64.b64encode(value).decode("ascii")


_ENCODERS: dict[type, Callable[[Any], Any]] = {
    type(None): _identity,
    bool: _identity,
    int: _encode_int,
    float: _encode_float,
    str: _encode_str,
    list: _encode_items,
    dict: _encode_dict,
    tuple: _tagging_items("tuple"),
    set: _tagging_items("set"),
    frozenset: _tagging_items("frozenset"),
    datetime: _tagging("datetime", datetime.isoformat),
    date: _tagging("date", date.isoformat),
    time: _tagging("time", time.isoformat),
    timedelta: _tagging("timedelta", lambda value: [value.days, value.seconds, value.microseconds]),
    Decimal: _tagging("decimal", str),
    UUID: _tagging("uuid", str),
    bytes: _tagging("bytes", _b64),
    bytearray: _tagging("bytes", _b64),
    memoryview: _tagging("bytes", _b64),
}


def dump_arguments(args, kwargs, job_name: str | None = None) -> dict:
    """``{"args": [...], "kwargs": {...}}`` of JSON-compatible values; SerializationError names a bad argument."""
    return {
        "args": _dump_part(_encode_items, args, "args", job_name),
        "kwargs": _dump_part(_encode_dict, kwargs, "kwargs", job_name),
    }


def _dump_part(encode, values, part, job_name):
    try:
        return encode(values, -1)  # the args list and kwargs dict enclose the arguments but are not a level
    except _Unserializable as exc:
        raise SerializationError(_describe(exc, part, _of_job(job_name))) from exc.__cause__
    except RecursionError:
        raise SerializationError(f"cannot serialize the {part}{_of_job(job_name)}: nested too deeply or "
                                 "cyclic") from None


def _of_job(job_name):
    return f" of {job_name}" if job_name else ""


def _describe(exc, part, of_job):
    segments = exc.segments[::-1]
    if len(segments) > 12:  # a value nested too deeply
        segments[6:-3] = ["…"]
    path = part + "".join(segments)
    if exc.key is None:  # the args tuple or kwargs dict itself
        return f"cannot serialize the {part}{of_job} ({exc.what} at {path}): {exc.hint}"
    position = exc.key + 1 if part == "args" else repr(exc.key)
    return f"cannot serialize argument {position}{of_job} ({exc.what} at {path}): {exc.hint}"


# --- decoding ------------------------------------------------------------------------------------------------------


def _decode(value):
    # Backends give plain dicts and lists; everything else is a JSON scalar and is returned as is.
    cls = type(value)
    if cls is dict:
        return _decode_tagged(value) if TAG in value else {key: _decode(item) for key, item in value.items()}
    if cls is list:
        return [_decode(item) for item in value]
    return value


def _decode_tagged(value):
    tag = value[TAG]
    expected, load = _decoder(tag)
    if len(value) != 2 or "v" not in value:
        raise SerializationError(f"malformed tagged value {_short(value)}: expected exactly the keys {TAG!r} and 'v'")
    payload = value["v"]
    if not isinstance(payload, expected):
        raise SerializationError(f"bad {tag!r} value {_short(payload)}: expected {expected.__name__}")
    try:
        return load(payload)
    except SerializationError:
        raise
    except Exception as exc:
        raise SerializationError(f"bad {tag!r} value {_short(payload)}: {_one_line(exc)}") from exc


def _decoder(tag):
    """(expected payload type, load function) of a built-in or registered tag."""
    if type(tag) is str:
        decoder = _DECODERS.get(tag)
        if decoder is not None:
            return decoder
        entry = serializers.named(tag)
        if entry is not None:
            return object, lambda payload: entry.load(_decode(payload))
    raise SerializationError(f"unknown tag {_short(tag)} in job arguments: no serializer of that name is registered")


def _load_pairs(pairs):
    result = {}
    for key, item in pairs:
        key = _decode(key)
        if type(key) is not str:
            raise TypeError(f"dict key {_short(key)} is not a str")
        result[key] = _decode(item)
    return result


def _load_timedelta(parts):
    if len(parts) != 3 or any(type(part) is not int for part in parts):
        raise ValueError("expected [days, seconds, microseconds] as ints")
    return timedelta(*parts)


def _load_enum(parts):
    path, name = parts
    cls = _find_enum(path)
    if cls is None:
        raise SerializationError(
            f"enum {_short(path)} is not an Enum class of a module imported by this process"
            " (modules named in job arguments are never imported)"
        )
    try:
        return cls[name]
    except KeyError:
        raise SerializationError(f"enum {path} has no member {_short(name)}") from None


def _find_enum(path):
    """The Enum class at "module:QualName", looked up only in already imported modules, else None."""
    if type(path) is not str:
        return None
    module_name, _, qualname = path.partition(":")
    obj = sys.modules.get(module_name)
    for part in qualname.split("."):
        # vars() rather than getattr: no module __getattr__ hook, which could import, runs for a payload
        obj = vars(obj).get(part) if obj is not None and hasattr(obj, "__dict__") else None
    return obj if isinstance(obj, type) and issubclass(obj, Enum) else None


_DECODERS: dict[str, tuple[type, Callable[[Any], Any]]] = {
    "float": (str, float),
    "int": (str, int),
    "str": (list, "\x00".join),
    "dict": (list, _load_pairs),
    "tuple": (list, lambda items: tuple(_decode(items))),
    "set": (list, lambda items: set(_decode(items))),
    "frozenset": (list, lambda items: frozenset(_decode(items))),
    "datetime": (str, datetime.fromisoformat),
    "date": (str, date.fromisoformat),
    "time": (str, time.fromisoformat),
    "timedelta": (list, _load_timedelta),
    "decimal": (str, Decimal),
    "uuid": (str, UUID),
    "bytes": (str, functools.partial(base64.b64decode, validate=True)),
    "enum": (list, _load_enum),
}


def load_arguments(data) -> tuple[tuple, dict]:
    """``(args, kwargs)`` from a document made by ``dump_arguments``; SerializationError if it is malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("args"), list):
        raise SerializationError(f"malformed job arguments {_short(data)}: expected a dict with an 'args' list")
    try:
        args = tuple(_decode(data["args"]))
        kwargs = _decode(data.get("kwargs", {}))
    except RecursionError:
        raise SerializationError("malformed job arguments: nested too deeply") from None
    if not isinstance(kwargs, dict):
        raise SerializationError(f"malformed job arguments: 'kwargs' is {_short(kwargs)}, not a dict")
    return args, kwargs


# --- JSON backends -------------------------------------------------------------------------------------------------


class JsonBackend(NamedTuple):
    name: str
    dumps: Callable[[Any], str]
    loads: Callable[[str | bytes], Any]


def json_backend(spec) -> JsonBackend:
    """The backend for a ``json_serializer`` value: "json", "orjson", "pkg.mod:obj", or an object with dumps/loads."""
    if isinstance(spec, str):
        return _named_backend(spec)
    return _wrap_backend(spec, _short(spec))


@functools.cache
def _named_backend(spec: str) -> JsonBackend:
    if spec == "json":
        # Standard JSON. orjson's C encoder writes the same documents for what exekutor stores (str keys,
        # no NaN: arguments are tagged first) several times faster, so it is used when installed.
        try:
            import orjson
        except ImportError:
            # One encoder made once: json.dumps with options would build a new encoder on every call.
            encoder = json.JSONEncoder(ensure_ascii=False, allow_nan=False, separators=(",", ":"))
            return JsonBackend("json", encoder.encode, json.loads)
        return _wrap_backend(orjson, "json")
    try:
        target = _import_object(spec)
    except Exception as exc:
        raise ValueError(f"json_serializer {spec!r} cannot be imported: {_one_line(exc)}") from exc
    return _wrap_backend(target, spec)


def _import_object(path):
    """A module or an attribute, from "pkg.mod", "pkg.mod:obj" or "pkg.mod.obj"."""
    module_name, _, attr = path.partition(":")
    if not attr:
        try:
            return importlib.import_module(path)
        except ModuleNotFoundError as exc:
            if exc.name != path or "." not in path:
                raise
        module_name, _, attr = path.rpartition(".")
    return functools.reduce(getattr, attr.split("."), importlib.import_module(module_name))


def _wrap_backend(target, name):
    dumps, loads = getattr(target, "dumps", None), getattr(target, "loads", None)
    if not (callable(dumps) and callable(loads)):
        raise ValueError(f"json_serializer {name} has no callable dumps and loads")

    def dumps_str(obj):
        text = dumps(obj)
        return text.decode() if isinstance(text, (bytes, bytearray)) else text  # orjson gives bytes

    return JsonBackend(str(name), dumps_str, loads)


# --- helpers -------------------------------------------------------------------------------------------------------

_reprs = reprlib.Repr()
_reprs.maxstring = _reprs.maxother = 60


def _short(value):
    return _one_line(_reprs.repr(value))


def _one_line(text):
    if isinstance(text, BaseException):
        text = f"{type(text).__name__}: {text}"
    return " ".join(str(text).split())


def _class_path(cls):
    return f"{cls.__module__}:{cls.__qualname__}"
