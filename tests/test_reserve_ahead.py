"""Reserving ahead (docs/reliability.md, "Reserving ahead"), in real worker processes: a wave of short jobs is
reserved before it ends, long jobs never are, a kind that suddenly runs long strands at most one wave, a stopping
worker starts none of what it reserved ahead, and no job runs twice."""
import signal
import time

import pytest

from tests import jobs_app
from tests.conftest import query, scalar, wait_for
from tests.health_support import metric, metric_values, worker_starter

THREADS = 4


@pytest.fixture
def health_worker(start_worker):
    return worker_starter(start_worker)


def _enqueue(tags, seconds):
    for tag in tags:
        jobs_app.record.perform_later(tag, sleep=seconds)


def _all_finished(db, total):
    return lambda: scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'c'") == total


def _owned(db, worker_id):
    return scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s", (worker_id,))


def _each_ran_once(db, tags):
    runs = dict(query(db, "SELECT tag, count(*) FROM test_executions GROUP BY tag"))
    assert {tag: runs.get(tag, 0) for tag in tags} == {tag: 1 for tag in tags}
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE attempts <> 1") == 0


def _sample_owned_until_done(db, worker_id, total, timeout):
    """The most jobs the worker owned at once, sampled until every job completed."""
    most, deadline = 0, time.monotonic() + timeout
    while not _all_finished(db, total)():
        most = max(most, _owned(db, worker_id))
        assert time.monotonic() < deadline, "the jobs did not finish in time"
        time.sleep(0.005)
    return most


@pytest.mark.timeout(90)
def test_waves_of_short_jobs_are_reserved_before_they_end_and_each_runs_once(health_worker, executions):
    worker = health_worker("--threads", THREADS)
    tags = [f"short-{n}" for n in range(12 * THREADS)]
    _enqueue(tags, 0.1)
    wait_for(_all_finished(executions, len(tags)), 60, message="the short jobs to finish")
    assert metric(metric_values(worker.port), "exekutor_jobs_reserved_ahead_total") > 0
    _each_ran_once(executions, tags)


@pytest.mark.timeout(90)
def test_jobs_longer_than_a_second_are_never_reserved_ahead(health_worker, executions):
    worker = health_worker("--threads", 2)
    tags = [f"long-{n}" for n in range(6)]
    _enqueue(tags, 1.2)
    most = _sample_owned_until_done(executions, worker.worker_id(executions), len(tags), 60)
    assert most <= 2
    assert metric(metric_values(worker.port), "exekutor_jobs_reserved_ahead_total") == 0
    _each_ran_once(executions, tags)


@pytest.mark.timeout(120)
def test_a_kind_that_suddenly_runs_long_strands_at_most_one_wave(health_worker, executions):
    """Learned at 50 ms, then 2 s each: the jobs reserved ahead for the first slow wave wait for a greenlet; a job
    already late is not counted again, so the worker never owns more than twice its greenlets."""
    worker = health_worker("--threads", THREADS)
    fast = [f"fast-{n}" for n in range(4 * THREADS)]
    _enqueue(fast, 0.05)
    wait_for(_all_finished(executions, len(fast)), 60, message="the fast jobs to finish")
    slow = [f"slow-{n}" for n in range(3 * THREADS)]
    _enqueue(slow, 2.0)
    most = _sample_owned_until_done(executions, worker.worker_id(executions), len(fast) + len(slow), 90)
    assert most <= 2 * THREADS
    _each_ran_once(executions, fast + slow)


@pytest.mark.timeout(120)
def test_a_stopping_worker_starts_none_of_what_it_reserved_ahead(start_worker, executions):
    first = start_worker("--threads", 2)
    worker_id = first.worker_id(executions)
    tags = [f"wave-{n}" for n in range(40)]
    _enqueue(tags, 0.3)

    def reserved_ahead():
        return _owned(executions, worker_id) > 2 or None

    # Between waves, for a few milliseconds, the worker owns more jobs than it runs: stop it then.
    deadline = time.monotonic() + 60
    while not reserved_ahead():
        assert time.monotonic() < deadline, "no job was ever reserved ahead"
        time.sleep(0.001)
    stopped_at = scalar(executions, "SELECT clock_timestamp()")
    first.signal(signal.SIGTERM)
    assert first.wait(30) == 0
    started_after_stop = scalar(executions, "SELECT count(*) FROM test_executions WHERE started_at > %s + "
                                            "interval '50 milliseconds'", (stopped_at,))
    assert started_after_stop == 0
    assert scalar(executions, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e'") == 0  # back to pending
    start_worker("--threads", 8)
    wait_for(_all_finished(executions, len(tags)), 60, message="the second worker to finish the jobs")
    runs = dict(query(executions, "SELECT tag, count(*) FROM test_executions GROUP BY tag"))
    assert set(runs) == set(tags) and set(runs.values()) == {1}
