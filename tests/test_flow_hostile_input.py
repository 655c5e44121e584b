"""Hostile input for the flow-control options (issue 26, "Checked by"): whatever users give as `concurrency`,
`concurrency_key`, `rate_limit`, `rate_key` (at definition, with .set(), from their key callables at enqueue) or
as a queue's limits in config (the `queues:` mapping, JSON in EXEKUTOR_QUEUES), it is either a valid limit or a
one-line error that names the option, raised at definition, enqueue or config time, and nothing is inserted.

Found here and fixed: a key callable returning a value whose repr is long (a 5,000-element list: a 15,000-character
message), spans lines, raises, or is an int past Python's 4,300 digits (then Python's own ValueError about
set_int_max_str_digits replaced ours), and the same for `concurrency=10**5000` and a rate_limit of 5,000 digits;
queue names of the mapping form were not checked (NUL, lone surrogates got through config to the worker's start).
Unicode decimal digits are read as the number they are ('١٠/s' is 10/s), as durations in config are.
"""
import json
import os
import subprocess
import sys

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

import exekutor
from exekutor import config
from exekutor.errors import ConfigError
from exekutor.flow import MAX_LIMIT, RateLimit, check_rate_limit
from tests import flow_app
from tests.conftest import ROOT, scalar

pytestmark = pytest.mark.timeout(300)


class MultiLineRepr:
    def __repr__(self):
        return "first line\nsecond line\r\n" * 100


class RaisingRepr:
    def __repr__(self):
        raise RuntimeError("repr refused")


NOT_STR = st.one_of(st.none(), st.integers(), st.floats(), st.binary(max_size=20), st.booleans(),
                    st.lists(st.integers(), max_size=6000), st.just(10**5000), st.builds(MultiLineRepr),
                    st.builds(RaisingRepr), st.dictionaries(st.text(max_size=3), st.integers(), max_size=3))
BAD_KEY_TEXT = st.one_of(
    st.tuples(st.text(max_size=20), st.text(max_size=20)).map(lambda t: t[0] + "\x00" + t[1]),
    st.tuples(st.text(max_size=20), st.integers(0xD800, 0xDFFF)).map(lambda t: t[0] + chr(t[1])),
    st.integers(1000, 20_000).map(lambda n: "k" * n),
)
BAD_CONCURRENCY = st.one_of(st.booleans(), st.floats(), st.integers(max_value=0), st.integers(min_value=MAX_LIMIT + 1),
                            st.just(10**5000), st.text(max_size=10), st.decimals(allow_nan=True), st.fractions(),
                            st.builds(MultiLineRepr))
RATE_TEXT = st.one_of(
    st.text(max_size=30),
    st.from_regex(r"\s*[0-9\u0660-\u0669\uff10-\uff19]{1,8}\s*/\s*(s|m|h|sec|min|hour|S|M|H|x)\s*", fullmatch=True),
    st.integers(0, 10**7).map(lambda n: f"{n}/s"),
)


def assert_one_line(error, *names):
    message = str(error)
    assert "\n" not in message and "\r" not in message, message[:500]
    assert len(message) <= 400, message[:500]
    assert any(name in message for name in names), message


def nothing_inserted(db):
    return scalar(db, "SELECT count(*) FROM exekutor_jobs") == 0


# --- key callables -------------------------------------------------------------------------------------------


@given(bad=st.one_of(NOT_STR, BAD_KEY_TEXT), what=st.sampled_from(["concurrency_key", "rate_key"]))
@example(bad="\x00", what="concurrency_key")
@example(bad="\udcff", what="rate_key")
@example(bad="k" * 10_000, what="concurrency_key")
@example(bad=10**5000, what="rate_key")
def test_property_a_key_callable_returning_a_bad_key_fails_the_enqueue_in_one_line(db, bad, what):
    limit = {"concurrency": 2} if what == "concurrency_key" else {"rate_limit": "5/s"}
    job = flow_app.prop.set(**limit, **{what: lambda *args, **kwargs: bad})
    with pytest.raises((ValueError, TypeError)) as info:
        job.perform_later("t")
    assert_one_line(info.value, what)
    # In a batch: the request is refused when it is built, before anything of the batch is inserted.
    with pytest.raises((ValueError, TypeError)):
        exekutor.enqueue_many([flow_app.free.job("fine"), job.job("t")])
    assert nothing_inserted(db)


@given(bad=st.one_of(BAD_KEY_TEXT, NOT_STR.filter(lambda v: v is not None and not callable(v))),
       what=st.sampled_from(["concurrency_key", "rate_key"]))
def test_property_a_bad_key_given_as_an_option_fails_at_definition_and_set_in_one_line(bad, what):
    limit = {"concurrency": 2} if what == "concurrency_key" else {"rate_limit": "5/s"}
    with pytest.raises(ValueError) as info:
        flow_app.prop.set(**limit, **{what: bad})
    assert_one_line(info.value, what)
    with pytest.raises(ValueError) as info:
        exekutor.job(name="flow.hostile_definition", **limit, **{what: bad})(lambda: None)
    assert_one_line(info.value, what)


# --- concurrency and rate_limit -------------------------------------------------------------------------------


@given(bad=BAD_CONCURRENCY)
@example(bad=True)
@example(bad=2.0)
@example(bad=-1)
@example(bad=10**100)
def test_property_a_bad_concurrency_fails_at_definition_and_set_in_one_line(bad):
    with pytest.raises(ValueError) as info:
        flow_app.free.set(concurrency=bad)
    assert_one_line(info.value, "concurrency")
    with pytest.raises(ValueError) as info:
        exekutor.job(name="flow.hostile_definition", concurrency=bad)(lambda: None)
    assert_one_line(info.value, "concurrency")


@given(text=RATE_TEXT)
@example(text="garbage")
@example(text="0/s")
@example(text="10001/s")
@example(text="9" * 5000 + "/s")
@example(text=" 10 / S ")
@example(text="\u0661\u0660/s")
@example(text="10/s\x00")
@example(text="\udcff/s")
@example(text="²/s")
def test_property_a_rate_limit_is_a_valid_limit_or_a_one_line_error(text):
    try:
        rate = check_rate_limit(text)
    except ValueError as error:
        assert_one_line(error, "rate_limit")
        with pytest.raises(ValueError):
            flow_app.free.set(rate_limit=text)
        with pytest.raises(ValueError):
            exekutor.job(name="flow.hostile_definition", rate_limit=text)(lambda: None)
        return
    assert isinstance(rate, RateLimit) and 1 <= rate.count <= MAX_LIMIT and rate.period in (1, 60, 3600)
    digits = "".join(c for c in text.split("/")[0] if c.isdecimal())
    assert rate.count == int(digits), (text, rate)
    assert check_rate_limit(str(rate)) == rate


@pytest.mark.parametrize("text, expected", [(" 10 / S ", (10, 1)), ("\u0661\u0660/s", (10, 1)),
                                            ("0010/Minute", (10, 60)), ("10000/h", (10000, 3600))])
def test_rate_limits_as_people_write_them(text, expected):
    assert check_rate_limit(text) == expected


@given(bad=NOT_STR.filter(lambda v: v is not None))
def test_property_a_rate_limit_that_is_not_text_fails_in_one_line(bad):
    with pytest.raises(ValueError) as info:
        flow_app.free.set(rate_limit=bad)
    assert_one_line(info.value, "rate_limit")


# --- queue limits in config -----------------------------------------------------------------------------------

QUEUE_NAME = st.one_of(st.sampled_from(["imports", "mail"]), st.text(max_size=70))
SETTING = st.one_of(
    st.fixed_dictionaries({}, optional={"concurrency": st.one_of(BAD_CONCURRENCY.filter(
        lambda v: not isinstance(v, MultiLineRepr)).map(lambda v: v if isinstance(v, (bool, int, float, str)) else
                                                       str(v)), st.integers(1, 5)),
                                        "rate_limit": st.one_of(RATE_TEXT, st.integers(), st.none())}),
    st.dictionaries(st.text(max_size=12), st.integers(), max_size=2),
    st.integers(), st.text(max_size=10), st.lists(st.integers(), max_size=3), st.none())


def _json(mapping):
    try:
        return json.dumps(mapping)
    except ValueError:  # an int past Python's digit limit
        return None


@given(mapping=st.dictionaries(QUEUE_NAME, SETTING, min_size=1, max_size=3))
@example(mapping={"a\x00b": {}})
@example(mapping={"q\ud800": {"concurrency": 1}})
@example(mapping={"q": {"concurrency": True}})
@example(mapping={"q": {"concurrency": 1e400}})
@example(mapping={"q": {"rate_limit": "0/s"}})
@example(mapping={"q": {"rate_limit": "9" * 5000 + "/s"}})
@example(mapping={"q": {"bogus": 1}})
@example(mapping={"q": 5})
def test_property_queue_limits_in_config_are_valid_or_a_one_line_config_error(mapping):
    text = _json(mapping)
    for load in (lambda: config.load(environ={"EXEKUTOR_QUEUES": text}) if text is not None else None,
                 lambda: config.configure(queues=mapping)):
        config.reset()
        try:
            load()
        except ConfigError as error:
            assert_one_line(error, "queues")
            continue
        queues = config.get("queues")
        if not isinstance(queues, dict):
            continue  # a list of names (an env value that is not JSON), or none
        for name, settings in queues.items():
            assert exekutor.definitions.check_queue(name) == name
            assert settings["concurrency"] is None or 1 <= settings["concurrency"] <= MAX_LIMIT
            assert settings["rate_limit"] is None or isinstance(settings["rate_limit"], RateLimit)
    config.reset()


@pytest.mark.parametrize("queues", ['{"a\\u0000b": {"concurrency": 2}}', '{"imports": {"rate_limit": "0/s"}}',
                                    '{"imports": {"concurrency": true}}', '{"imports": {"concurrency": 2'])
def test_a_worker_with_bad_queue_limits_does_not_start_and_writes_nothing(db, database_url, queues):
    env = dict(os.environ, EXEKUTOR_DATABASE_URL=database_url, EXEKUTOR_QUEUES=queues)
    result = subprocess.run([sys.executable, "-m", "exekutor", "start", "--app", "tests.flow_app"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if "EXEKUTOR_QUEUES" in line]
    assert len(errors) == 1 and "queues" in errors[0], result.stderr
    assert scalar(db, "SELECT count(*) FROM exekutor_queues") == 0
    assert scalar(db, "SELECT count(*) FROM exekutor_workers") == 0
