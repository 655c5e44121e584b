"""The executor's greenlet pool, in this process: it grows to max_threads and shrinks back to min_threads."""
import datetime as dt
import time

import gevent
import pytest

from exekutor.worker.executor import Executor
from tests import jobs_app


class _Worker:
    """What the executor asks of its worker: to be told when a job starts, and which database is its own."""

    database_server = None
    ownership_uncertain = False
    stopping = False

    def __init__(self):
        self.started = []

    def job_started(self, info):
        self.started.append(info["id"])


def _info(job_id, seconds):
    moment = dt.datetime.now(dt.timezone.utc)
    return {"id": job_id, "queue": "default", "priority": 1, "options": {}, "attempts": 1, "releases": 0,
            "enqueued_at": moment, "scheduled_at": moment, "waited": 0.0,
            "payload": {"job": jobs_app.sleep.definition.name, "args": [seconds], "kwargs": {}}}


@pytest.mark.timeout(30)
def test_pool_grows_to_the_maximum_and_idle_greenlets_above_the_minimum_are_reclaimed():
    outcomes = []
    executor = Executor(_Worker(), min_threads=2, max_threads=10, idletime=0.3,
                        on_outcome=lambda outcome, info: outcomes.append(outcome), on_free=lambda: None)
    executor.start()
    gevent.sleep(0)
    assert executor.size() == 2
    for i in range(10):
        executor.submit(_info(f"job-{i}", 0.2))
    assert executor.free() == 0
    gevent.sleep(0.05)
    assert executor.size() == 10 and executor.busy() == 10
    deadline = time.monotonic() + 10
    while len(outcomes) < 10:
        assert time.monotonic() < deadline
        gevent.sleep(0.02)
    assert {o.status for o in outcomes} == {"c"}
    assert executor.free() == 10
    # All eight greenlets above the minimum time out together; exactly the minimum stays.
    deadline = time.monotonic() + 10
    while executor.size() > 2:
        assert time.monotonic() < deadline, executor.size()
        gevent.sleep(0.05)
    gevent.sleep(0.5)
    assert executor.size() == 2
    executor.stop()


def _wait_outcomes(outcomes, count, timeout=10):
    deadline = time.monotonic() + timeout
    while len(outcomes) < count:
        assert time.monotonic() < deadline, f"{len(outcomes)} of {count} outcomes"
        gevent.sleep(0.01)


def _learned_executor(outcomes, seconds, threads=2):
    """An executor that has run one wave of `seconds` jobs (so it knows their kind's runtime)."""
    executor = Executor(_Worker(), min_threads=threads, max_threads=threads, idletime=10,
                        on_outcome=lambda outcome, info: outcomes.append(outcome), on_free=lambda: None)
    executor.start()
    for i in range(threads):
        executor.submit(_info(f"learn-{i}", seconds))
    _wait_outcomes(outcomes, threads)
    return executor


@pytest.mark.timeout(30)
def test_greenlets_count_as_free_shortly_before_a_known_short_job_ends():
    outcomes = []
    executor = _learned_executor(outcomes, 0.3)
    for i in range(2):
        executor.submit(_info(f"job-{i}", 0.3))
    gevent.sleep(0.01)
    started = time.monotonic()
    assert executor.free() == 0 and executor.free(ahead=0.05) == 0
    end = executor.next_expected_end(time.monotonic())
    assert end is not None and 0.2 < end - started < 0.31
    gevent.sleep(max(0.0, end - 0.04 - time.monotonic()))
    assert executor.free() == 0 and executor.free(ahead=0.05) == 2
    # Reserved ahead: the jobs wait in the queue and start as soon as the greenlets free up.
    for i in range(2):
        executor.submit(_info(f"ahead-{i}", 0.01))
    assert executor.free(ahead=0.05) == 0
    _wait_outcomes(outcomes, 6)
    assert [o.status for o in outcomes] == ["c"] * 6
    executor.stop()


@pytest.mark.timeout(30)
def test_a_job_late_beyond_the_horizon_or_of_a_long_kind_is_not_expected_to_end():
    outcomes = []
    executor = _learned_executor(outcomes, 0.05, threads=1)
    executor.submit(_info("overruns", 0.6))  # its kind ran 50 ms: expected at 50 ms, still running at 200 ms
    gevent.sleep(0.2)
    assert executor.free(ahead=0.05) == 0 and executor.next_expected_end(time.monotonic()) is None
    _wait_outcomes(outcomes, 2)
    executor.stop()
    long_outcomes = []
    executor = _learned_executor(long_outcomes, 1.05, threads=1)  # a kind of over a second: never predicted
    executor.submit(_info("long", 1.05))
    gevent.sleep(0.01)
    assert executor.next_expected_end(0.0) is None
    gevent.sleep(1.0)
    assert executor.free(ahead=0.05) == 0
    executor.stop()


@pytest.mark.timeout(30)
def test_a_stopping_worker_starts_no_job_that_waits_in_its_queue():
    outcomes = []
    worker = _Worker()
    executor = Executor(worker, min_threads=1, max_threads=1, idletime=10,
                        on_outcome=lambda outcome, info: outcomes.append(outcome), on_free=lambda: None)
    executor.start()
    executor.submit(_info("running", 0.2))
    executor.submit(_info("queued-1", 0.01))
    executor.submit(_info("queued-2", 0.01))
    gevent.sleep(0.05)
    worker.stopping = True
    assert executor.drop_queued() == 2
    executor.submit(_info("in-flight", 0.01))  # a reservation that was in flight when the stop came
    assert executor.busy() == 1 and set(executor.held) == {"running"}
    _wait_outcomes(outcomes, 1)
    gevent.sleep(0.1)
    assert worker.started == ["running"] and [o.job_id for o in outcomes] == ["running"]
    assert executor.busy() == 0 and executor.held == {}
    executor.stop()


@pytest.mark.timeout(30)
def test_jobs_waiting_for_a_greenlet_are_not_started_once_a_component_lost_the_database():
    """A job reserved ahead would try its own connection while the database is down, and a failed connect is the
    job's failure: a component that lost the database makes the worker keep them for the reconciliation instead."""
    import psycopg2

    from exekutor import metrics
    from exekutor.worker.component import Component
    from exekutor.worker.worker import Worker

    outcomes = []
    worker = _Worker()
    worker.metrics = metrics.DISABLED
    worker.stopped_or_killed = lambda: False
    executor = Executor(worker, min_threads=1, max_threads=1, idletime=10,
                        on_outcome=lambda outcome, info: outcomes.append(outcome), on_free=lambda: None)
    worker.executor = executor
    worker.id = "stand-in"
    worker.database_unreachable = lambda: Worker.database_unreachable(worker)
    executor.start()
    executor.submit(_info("running", 0.2))
    executor.submit(_info("reserved-ahead", 0.01))
    gevent.sleep(0.05)

    class LosesTheDatabase(Component):
        name = "provider"
        runs = 0

        def run(self):
            self.runs += 1
            if self.runs == 1:
                raise psycopg2.OperationalError("server closed the connection unexpectedly")

    LosesTheDatabase(worker).start().join(5)
    _wait_outcomes(outcomes, 1)
    gevent.sleep(0.1)
    assert worker.started == ["running"] and set(executor.held) == set() and executor.busy() == 0
    executor.stop()


@pytest.mark.timeout(30)
def test_a_job_released_for_a_lost_connection_keeps_the_queued_jobs_from_starting():
    """A running job's broken connection is often the first sign of an outage: its release, written before its
    greenlet takes the next job, drops what waits in the queue (the reconciliation releases it later)."""
    from exekutor import metrics
    from exekutor.execution import RELEASE, Outcome
    from exekutor.worker.worker import Worker

    worker = _Worker()
    worker.id = "stand-in"
    worker.metrics = metrics.DISABLED
    worker.completer = type("Completer", (), {"add": lambda self, outcome: None})()
    executor = Executor(worker, min_threads=1, max_threads=1, idletime=10,
                        on_outcome=lambda outcome, info: None, on_free=lambda: None)
    worker.executor = executor
    worker.database_unreachable = lambda: Worker.database_unreachable(worker)
    executor.start()
    executor.submit(_info("running", 0.2))
    executor.submit(_info("reserved-ahead", 0.01))
    gevent.sleep(0.05)
    info = executor.held["running"]
    Worker._job_finished(worker, Outcome("running", RELEASE, 0.05), info)
    assert set(executor.held) == {"running"} and executor.busy() == 1
    executor.stop()
