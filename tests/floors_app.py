"""Jobs for the reservation-floor tests (`--app tests.jobs_app --app tests.floors_app`).

`tests.floors.report` writes what the worker's provider knows into test_floor_reports: its floors, how many ready
jobs its poll's check found below them, how often they were reset, and the errors its components reported (an
on_fatal_error hook counts them), so a test can see inside a real worker process without a debugger.
"""
import json
import math
import os

import gevent

import exekutor
from exekutor import hooks
from tests.jobs_app import _execute

REPORTS_DDL = """
CREATE TABLE IF NOT EXISTS test_floor_reports (
    tag text NOT NULL, pid integer NOT NULL, state jsonb NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())
"""

_worker = []
_errors = []


@hooks.after_startup
def _remember(worker):
    _worker[:] = [worker]


@hooks.on_fatal_error
def _count(error):
    _errors.append(f"{type(error).__name__}: {str(error).strip()[:300]}")


def state():
    worker = _worker[0]
    provider = worker.provider
    return {
        "below_floors": provider.below_floors,
        "resets": provider.floors.resets,
        "statements": provider.statements,
        "provider_errors": provider.consecutive_errors,
        "errors": list(_errors),
        "malformed": worker.listener.malformed if worker.listener is not None else None,
        "listening": bool(worker.listener is not None and worker.listener.connected),
        # -inf as None (JSON has no infinity)
        "ranges": [[low, high, None if math.isinf(at) else at] for low, high, at in provider.floors.ranges()],
    }


@exekutor.job(name="tests.floors.report")
def report(tag):
    _execute("INSERT INTO test_floor_reports (tag, pid, state) VALUES (%s, %s, %s)",
             (tag, os.getpid(), json.dumps(state())))


@exekutor.job(name="tests.floors.fail_once")
def fail_once(tag):
    """Records its run; the first run of a tag fails (no retry policy: the job ends failed)."""
    _execute("INSERT INTO test_executions (tag, pid) VALUES (%s, %s)", (tag, os.getpid()))
    (count,) = _execute("INSERT INTO test_counters VALUES (%s, 1) ON CONFLICT (key) DO UPDATE "
                        "SET value = test_counters.value + 1 RETURNING value", (tag,))
    if count == 1:
        raise RuntimeError(f"{tag}: failing the first run on purpose")


@exekutor.job(name="tests.floors.retry_now", retry=exekutor.Retry(attempts=3, backoff="fixed", wait=0))
def retry_now(tag, failures=2, sleep=0.0):
    """Records its run; fails `failures` times (after `sleep` seconds), each retried at once (scheduled at the
    completion's now())."""
    _execute("INSERT INTO test_executions (tag, pid) VALUES (%s, %s)", (tag, os.getpid()))
    if sleep:
        gevent.sleep(sleep)
    (count,) = _execute("INSERT INTO test_counters VALUES (%s, 1) ON CONFLICT (key) DO UPDATE "
                        "SET value = test_counters.value + 1 RETURNING value", (tag,))
    if count <= failures:
        raise IOError(f"{tag}: failure {count} of {failures}")
