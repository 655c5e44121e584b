"""queue_timeout counts from when a job became due (its scheduled_at), on the database's clock.

Real worker processes against a real PostgreSQL; one worker's clock is moved with libfaketime.
"""
import datetime as dt

import pytest

import exekutor
from tests import hostile_jobs, jobs_app
from tests.conftest import query, scalar, wait_for
from tests.test_ownership import faketime_env

APPS = ("tests.hostile_jobs", "tests.jobs_app")


def final_status(db, handle, timeout=30):
    def status():
        value = scalar(db, "SELECT status FROM exekutor_jobs WHERE id = %s", (handle.id,))
        return value if value in ("c", "f", "d") else None
    return wait_for(status, timeout, message=f"job {handle.id} to end")


def error_types(db, handle):
    return [row[0] for row in query(db, "SELECT error->>'type' FROM exekutor_job_errors WHERE job_id = %s "
                                        "ORDER BY attempt", (handle.id,))]


@pytest.mark.timeout(90)
def test_a_worker_whose_clock_is_ahead_runs_fresh_jobs_and_discards_stale_ones(start_worker, executions):
    start_worker("--threads", "5", env=faketime_env("+30s"), apps=APPS)
    fresh = exekutor.enqueue_many([jobs_app.noop.set(queue_timeout=10).job() for _ in range(5)])
    stale = jobs_app.noop.set(queue_timeout=10, wait_until=dt.datetime.now(dt.timezone.utc)
                              - dt.timedelta(seconds=20)).perform_later()
    assert [final_status(executions, handle) for handle in fresh] == ["c"] * 5, error_types(executions, fresh[0])
    assert final_status(executions, stale) == "d"
    assert error_types(executions, stale) == ["exekutor.errors.QueueTimeoutError"]


@pytest.mark.timeout(60)
def test_a_delayed_job_waits_its_delay_before_its_queue_timeout_counts(start_worker, executions):
    start_worker("--threads", "5", apps=APPS)
    handle = jobs_app.noop.set(wait=3, queue_timeout=1).perform_later()
    assert final_status(executions, handle) == "c", error_types(executions, handle)


@pytest.mark.timeout(60)
def test_a_retry_later_than_the_queue_timeout_runs(start_worker, executions):
    start_worker("--threads", "5", apps=APPS)
    # Retry(attempts=3) on anything, each retry 2 s later: past a queue_timeout of 1 s counted from the enqueue.
    handle = hostile_jobs.fail.set(queue_timeout=1).perform_later({"tag": "late", "kind": "value_error", "delay": 2})
    assert final_status(executions, handle) == "f"
    assert error_types(executions, handle) == ["ValueError"] * 3
