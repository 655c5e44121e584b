"""Jobs the worker tests run in real worker processes (`--app tests.jobs_app`).

Jobs record what they did in tables of the test's own (test_executions, test_counters), so tests can
reconcile executions against the jobs table.
"""
import os

import gevent

import exekutor
from exekutor.db import default_pool

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS test_executions (
    tag text NOT NULL, pid integer NOT NULL, started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz)
"""
COUNTERS_DDL = "CREATE TABLE IF NOT EXISTS test_counters (key text PRIMARY KEY, value integer NOT NULL)"


def _execute(sql, params=None):
    with default_pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchone() if cursor.description else None


@exekutor.job(name="tests.noop")
def noop(*args, **kwargs):
    return None


@exekutor.job(name="tests.record")
def record(tag, sleep=0.0):
    """Record one execution (and optionally sleep cooperatively in the middle of it)."""
    _execute("INSERT INTO test_executions (tag, pid) VALUES (%s, %s)", (tag, os.getpid()))
    if sleep:
        gevent.sleep(sleep)
        _execute("UPDATE test_executions SET finished_at = clock_timestamp() WHERE tag = %s AND pid = %s",
                 (tag, os.getpid()))


@exekutor.job(name="tests.sleep")
def sleep(seconds, tag=None):
    gevent.sleep(seconds)
    if tag is not None:
        _execute("INSERT INTO test_executions (tag, pid, finished_at) VALUES (%s, %s, clock_timestamp())",
                 (tag, os.getpid()))


@exekutor.job(name="tests.pg_sleep")
def pg_sleep(seconds, tag=None):
    """Record the backend pid of the connection it uses (as a tag), then sleep in PostgreSQL on it."""
    with default_pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("INSERT INTO test_executions (tag, pid) SELECT pg_backend_pid()::text, %s", (os.getpid(),))
        cursor.execute("SELECT pg_sleep(%s)", (seconds,))
        if tag is not None:
            cursor.execute("INSERT INTO test_executions (tag, pid) VALUES (%s, %s)", (tag, os.getpid()))


@exekutor.job(name="tests.flaky", retry=exekutor.Retry(attempts=5, backoff="fixed", wait=0.1))
def flaky(key, failures):
    """Fails `failures` times, then succeeds."""
    (count,) = _execute("INSERT INTO test_counters VALUES (%s, 1) ON CONFLICT (key) DO UPDATE "
                        "SET value = test_counters.value + 1 RETURNING value", (key,))
    if count <= failures:
        raise IOError(f"flaky failure {count} of {failures}")


@exekutor.job(name="tests.always_fails", retry=exekutor.Retry(attempts=3, backoff="fixed", wait=0.1))
def always_fails():
    raise RuntimeError("this job always fails")


@exekutor.job(name="tests.discards", discard_on=(KeyError,))
def discards(kind):
    if kind == "discard_on":
        raise KeyError("missing")
    raise exekutor.DiscardJob("not worth doing")


@exekutor.job(name="tests.stubborn")
def stubborn(seconds):
    """Swallows any interruption with a bare except, and returns as if nothing happened."""
    try:
        gevent.sleep(seconds)
    except:  # noqa: E722 - the point of the job
        pass


@exekutor.job(name="tests.unique_record", unique=True)
def unique_record(tag, sleep=0.0):
    """tests.record, unique by its arguments (held until it finishes)."""
    record(tag, sleep)


@exekutor.job(name="tests.unique_until_started", unique=lambda tag, **kwargs: tag, unique_until="started")
def unique_until_started(tag, sleep=0.0):
    """tests.record, unique by its tag only while it waits."""
    record(tag, sleep)
