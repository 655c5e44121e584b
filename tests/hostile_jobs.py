"""Jobs that fail in every way a job can (`--app tests.hostile_jobs`): the outcome path must survive all of them.

`hostile.fail` raises what its spec says, after recording its execution in test_executions (tag, worker pid):
- `kind`: which exception (see RAISERS), including BaseExceptions that are not Exceptions, the job's own
  gevent.Timeout, and an exception whose __str__ raises;
- `text`: the text it carries, as base64 of UTF-8 with lone surrogates allowed (JSON cannot carry those), repeated
  `repeat` times (a megabyte or more), in the message or only in the chained cause (the traceback);
- `delay`: what the Retry backoff answers (a number, "inf" or "nan").
The three job names differ in policy: `hostile.fail` is retried 3 times on anything, `hostile.fail_once` is not
retried, `hostile.discard` discards what it raises.
"""
import base64
import os
import urllib.request

import gevent
import psycopg2

import exekutor
from exekutor.db import default_pool

_delays = {}  # greenlet -> what the backoff answers for the job running on it


def _execute(sql, params=None):
    with default_pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() if cursor.description else None


def record(tag):
    _execute("INSERT INTO test_executions (tag, pid) VALUES (%s, %s)", (tag, os.getpid()))


def decode_text(spec):
    return base64.b64decode(spec.get("text", "")).decode("utf-8", "surrogatepass") * spec.get("repeat", 1)


def encode_text(text):
    return base64.b64encode(text.encode("utf-8", "surrogatepass")).decode("ascii")


class HostileError(Exception):
    pass


class HostileBase(BaseException):
    """Not an Exception: `except Exception` does not catch it."""


class BrokenStr(Exception):
    def __str__(self):
        raise RuntimeError("__str__ is broken")


def _timeout(text):
    with gevent.Timeout(0.01):  # the job's own timeout, the idiomatic way to bound a call
        gevent.sleep(1)


def _raise(cls):
    def raiser(text):
        raise cls(text)
    return raiser


def _throw(error):
    raise error


RAISERS = {
    "value_error": _raise(ValueError),
    "hostile_error": _raise(HostileError),
    "hostile_base": _raise(HostileBase),
    "operational_error": _raise(psycopg2.OperationalError),
    "broken_str": _raise(BrokenStr),
    "gevent_timeout": _timeout,
    "greenlet_exit": _raise(gevent.GreenletExit),
    "system_exit": lambda text: _throw(SystemExit(3)),
    "keyboard_interrupt": lambda text: _throw(KeyboardInterrupt()),
}


def _backoff(attempt):
    delay = _delays.pop(gevent.getcurrent(), 0.05)
    return float(delay)


def _fail(spec):
    record(spec["tag"])
    _delays[gevent.getcurrent()] = spec.get("delay", 0.05)
    text = decode_text(spec)
    raiser = RAISERS[spec.get("kind", "value_error")]
    if spec.get("where") == "traceback":
        try:
            raise HostileError(text)
        except HostileError:
            raiser("plain")  # the text is only in the chained cause, so only in the traceback
    raiser(text)


_ANYTHING = exekutor.Retry(attempts=3, backoff=_backoff, max_wait=float("inf"), on=(BaseException,), jitter=0)


@exekutor.job(name="hostile.fail", retry=_ANYTHING)
def fail(spec):
    _fail(spec)


@exekutor.job(name="hostile.lose_then_fail", retry=_ANYTHING)
def lose_then_fail(tag, losses):
    """Terminates its own connection to the worker's database on its first `losses` runs (each one a release), and
    raises ValueError on every later run."""
    (run,) = _execute("INSERT INTO test_counters VALUES (%s, 1) ON CONFLICT (key) DO UPDATE "
                      "SET value = test_counters.value + 1 RETURNING value", (tag,))
    if run <= losses:
        _execute("SELECT pg_terminate_backend(pg_backend_pid())")
    raise ValueError(f"run {run}")


@exekutor.job(name="hostile.fail_once")
def fail_once(spec):
    _fail(spec)


@exekutor.job(name="hostile.discard", discard_on=(BaseException,))
def discard(spec):
    _fail(spec)


@exekutor.job(name="hostile.canary")
def canary(tag):
    record(tag)


@exekutor.job(name="hostile.swallow", execution_timeout=0.5)
def swallow(tag, seconds=2.0):
    """Swallows the execution_timeout's interruption with a bare except, then returns as if nothing happened."""
    record(tag)
    try:
        gevent.sleep(seconds)
    except:  # noqa: E722 - the point of the job
        pass


@exekutor.job(name="hostile.http_get", retry=exekutor.Retry(attempts=2, backoff="fixed", wait=0.05))
def http_get(url):
    record(url)
    urllib.request.urlopen(url, timeout=10)


@exekutor.job(name="hostile.sql", retry=exekutor.Retry(attempts=2, backoff="fixed", wait=0.05))
def sql(tag, statement, url=None):
    """Runs `statement` on a pool connection (or on a connection to `url`), recording the execution first."""
    record(tag)
    if url is None:
        _execute(statement)
        return
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(statement)
    finally:
        conn.close()


@exekutor.job(name="hostile.slow_statement", execution_timeout=1)
def slow_statement(statement):
    """Runs a statement longer than its execution_timeout on exekutor's pool; records its server pid first."""
    with default_pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("INSERT INTO test_executions (tag, pid) SELECT 'backend', pg_backend_pid()")
        cursor.execute(statement)


class PickyJson:
    """A json_serializer that refuses documents holding a marker, as a serializer may refuse what it cannot encode."""

    MARKER = "refuse-this-record"

    @staticmethod
    def dumps(value):
        import json

        text = json.dumps(value)
        if PickyJson.MARKER in text:
            raise TypeError("this serializer refuses that document")
        return text

    @staticmethod
    def loads(text):
        import json

        return json.loads(text)


@exekutor.job(name="hostile.block_once")
def block_once(tag, seconds):
    """Blocks the whole event loop (the original time.sleep, as CPU work or a blocking C call would) on its first
    run; a later run of the same tag returns at once."""
    from gevent import monkey

    (count,) = _execute("INSERT INTO test_counters VALUES (%s, 1) ON CONFLICT (key) DO UPDATE "
                        "SET value = test_counters.value + 1 RETURNING value", (tag,))
    if count == 1:
        monkey.get_original("time", "sleep")(seconds)


@exekutor.job(name="hostile.long")
def long(tag, seconds):
    """Records its start, sleeps cooperatively, records its end on the same execution row (a run that is stopped
    midway keeps an open end)."""
    (started,) = _execute("INSERT INTO test_executions (tag, pid) VALUES (%s, %s) RETURNING started_at",
                          (tag, os.getpid()))
    gevent.sleep(seconds)
    _execute("UPDATE test_executions SET finished_at = clock_timestamp() WHERE tag = %s AND started_at = %s",
             (tag, started))


def _blocking_sleep(seconds):
    from gevent import monkey

    monkey.get_original("time", "sleep")(seconds)


def _run_recorded(tag, body):
    """Record a run's start, run body(), record its end on the same execution row."""
    (started,) = _execute("INSERT INTO test_executions (tag, pid) VALUES (%s, %s) RETURNING started_at",
                          (tag, os.getpid()))
    body()
    _execute("UPDATE test_executions SET finished_at = clock_timestamp() WHERE tag = %s AND started_at = %s",
             (tag, started))


@exekutor.job(name="hostile.block")
def block(tag, seconds):
    """Blocks the whole event loop on every run (the original time.sleep, as a blocking C call would)."""
    _run_recorded(tag, lambda: _blocking_sleep(seconds))


@exekutor.job(name="hostile.block_stubborn")
def block_stubborn(tag, seconds):
    """Blocks the event loop for `seconds` whatever interrupts it: it catches everything and blocks on."""
    import time

    def body():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            try:
                _blocking_sleep(max(0.0, deadline - time.monotonic()))
            except BaseException:  # noqa: BLE001 - the point of this job
                pass

    _run_recorded(tag, body)


@exekutor.job(name="hostile.spin")
def spin(tag, seconds):
    """CPU work in Python that never yields, for `seconds`."""
    import time

    def body():
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            sum(range(1000))

    _run_recorded(tag, body)


@exekutor.job(name="hostile.offloaded")
def offloaded(tag, seconds):
    """The rule of thumb of docs/reliability.md: the blocking call runs in gevent's thread pool, not on the loop."""
    import gevent as _gevent

    _run_recorded(tag, lambda: _gevent.get_hub().threadpool.apply(_blocking_sleep, (seconds,)))
