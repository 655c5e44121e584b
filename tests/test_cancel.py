"""Cancel and retry with real workers: a cancel reaches a running job (sleeping, blocked in PostgreSQL, behind a
listener that is off) and is never lost; a retried job runs once more with a fresh retry budget."""
import signal
import time

import pytest

import exekutor
from exekutor import operations
from tests import jobs_app
from tests.conftest import query, scalar, wait_for
from tests.tcpproxy import TCPProxy
from tests.test_cli import run_cli
from tests.test_worker import listening

pytestmark = pytest.mark.timeout(90)


def status_of(request):
    return request.fetch()["status"]


def cancelled_record(request):
    errors = request.errors()
    assert errors and errors[-1]["type"] == "exekutor.errors.JobCancelled", errors
    return errors[-1]


def wait_running(conn, request, tag=None):
    wait_for(lambda: status_of(request) == "executing", 20, message="the job to start")
    if tag is not None:
        wait_for(lambda: scalar(conn, "SELECT count(*) FROM test_executions WHERE tag ~ '^[0-9]+$'"), 20,
                 message="the job to record its backend")


def test_cancel_interrupts_a_sleeping_job_at_once_and_the_worker_goes_on(start_worker, executions):
    worker = start_worker("--threads", "4", "--poll-interval", "30")
    wait_for(lambda: listening(executions), 10, message="listener")
    request = jobs_app.sleep.perform_later(60, tag="finished")
    wait_running(executions, request)
    assert request.cancel() is True
    wait_for(lambda: status_of(request) == "cancelled", 5, message="the cancelled job to end")
    row = request.fetch()
    assert (row["finished_at"] - row["cancel_requested_at"]).total_seconds() < 1.5
    record = cancelled_record(request)
    assert "while it ran" in record["message"] and "gevent.sleep" in (record["traceback"] or "")
    assert not query(executions, "SELECT 1 FROM test_executions WHERE tag = 'finished'")
    after = jobs_app.record.perform_later("after")
    wait_for(lambda: status_of(after) == "completed", 10, message="the worker to keep serving")
    assert request.cancel() is False  # it finished: it keeps its outcome
    assert "cancelled by an operator" in worker.output()


def test_cancel_stops_a_statement_on_a_pool_connection(start_worker, executions):
    start_worker("--threads", "4", "--poll-interval", "30")
    wait_for(lambda: listening(executions), 10, message="listener")
    request = jobs_app.pg_sleep.perform_later(60, tag="finished")
    wait_running(executions, request, tag=True)
    backend = int(scalar(executions, "SELECT tag FROM test_executions WHERE tag ~ '^[0-9]+$'"))
    assert query(executions, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND query LIKE 'SELECT pg_sleep%%'",
                 (backend,))
    result = run_cli("jobs", "cancel", request.id)
    assert result.returncode == 0 and "interrupting 1" in result.stdout, result.stderr
    wait_for(lambda: not query(executions, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                               (backend,)), 2, message="the statement to be cancelled")
    wait_for(lambda: status_of(request) == "cancelled", 5, message="the cancelled job to end")
    cancelled_record(request)


def test_a_cancel_reaches_a_worker_without_listener_within_the_poll_interval(start_worker, executions):
    start_worker("--threads", "4", "--poll-interval", "1", env={"EXEKUTOR_ENABLE_LISTENER": "false"})
    request = jobs_app.sleep.perform_later(60)
    wait_running(executions, request)
    assert not listening(executions)
    exekutor.JobRequest(request.id).cancel()
    wait_for(lambda: status_of(request) == "cancelled", 5, message="the cancel to be found by the poll")
    cancelled_record(request)


def test_a_job_that_swallows_the_cancel_still_ends_cancelled(start_worker, executions):
    start_worker("--threads", "2", "--poll-interval", "30")
    wait_for(lambda: listening(executions), 10, message="listener")
    request = jobs_app.stubborn.perform_later(30)
    wait_running(executions, request)
    request.cancel()
    wait_for(lambda: status_of(request) == "cancelled", 10, message="the job to end")
    cancelled_record(request)


def test_a_cancel_for_a_stopped_worker_is_honoured_when_its_jobs_are_released(start_worker, executions):
    """The worker cannot hear the cancel (it is stopped with SIGSTOP) and dies; its job is released to pending by
    the deletion of its row, which a cancelled job survives as cancelled
    (discarded), not pending: it never runs again."""
    doomed = start_worker("--threads", "2", "--poll-interval", "30")
    request = jobs_app.record.perform_later("once", sleep=60)
    wait_running(executions, request)
    doomed_id = doomed.worker_id(executions)
    doomed.signal(signal.SIGSTOP)
    try:
        assert request.cancel() is True
        doomed.signal(signal.SIGKILL)
        doomed.wait(10)
    finally:
        doomed.signal(signal.SIGCONT)
    survivor = start_worker("--threads", "2", "--poll-interval", "1")
    query(executions, "DELETE FROM exekutor_workers WHERE id = %s", (doomed_id,))  # what orphan rescue does
    assert status_of(request) == "cancelled"
    cancelled_record(request)
    probe = jobs_app.record.perform_later("probe")
    wait_for(lambda: status_of(probe) == "completed", 10, message="the survivor to run jobs")
    assert scalar(executions, "SELECT count(*) FROM test_executions WHERE tag = 'once'") == 1
    assert survivor.proc.poll() is None


def test_a_job_queued_in_the_worker_is_dropped_without_running(start_worker, executions):
    start_worker("--threads", "1", "--poll-interval", "30")
    wait_for(lambda: listening(executions), 10, message="listener")
    blocker = jobs_app.sleep.perform_later(3)
    wait_running(executions, blocker)
    waiting = jobs_app.record.perform_later("never")
    # One greenlet: the second job is pending (not reserved) or reserved and waiting; both end cancelled.
    waiting.cancel()
    wait_for(lambda: status_of(waiting) == "cancelled", 10, message="the waiting job to end")
    wait_for(lambda: status_of(blocker) == "completed", 15, message="the blocker to finish")
    assert not query(executions, "SELECT 1 FROM test_executions WHERE tag = 'never'")


def test_retry_of_1000_failed_jobs_runs_each_once_more(start_worker, executions):
    query(executions, """
        INSERT INTO exekutor_jobs (payload, status, attempts, finished_at)
        SELECT jsonb_build_object('job', 'tests.record', 'args', jsonb_build_array('job-' || i), 'kwargs', '{}'::jsonb),
               'f', 1, now()
        FROM generate_series(1, 1000) AS i""")
    start_worker("--threads", "50", "--poll-interval", "30")
    wait_for(lambda: listening(executions), 10, message="listener")
    result = run_cli("jobs", "retry", "--status", "failed", "--yes")
    assert result.returncode == 0 and "retried 1000 job(s)" in result.stdout, result.stderr
    wait_for(lambda: scalar(executions, "SELECT count(*) FROM exekutor_jobs WHERE status = 'c'") == 1000, 60,
             message="the retried jobs to complete")
    assert scalar(executions, "SELECT count(*) FROM test_executions") == 1000
    assert scalar(executions, "SELECT count(DISTINCT tag) FROM test_executions") == 1000
    assert scalar(executions, "SELECT min(attempts) FROM exekutor_jobs") == 2


def test_a_retried_job_gets_a_fresh_retry_budget(start_worker, executions):
    # tests.flaky retries up to 5 attempts: failing 7 times, it fails for good at attempt 5; retried by an
    # operator it has 5 more, so attempts 6 and 7 fail and 8 completes.
    start_worker("--threads", "2", "--poll-interval", "1")
    request = jobs_app.flaky.perform_later("budget", 7)
    wait_for(lambda: status_of(request) == "failed", 30, message="the job to use up its retries")
    assert request.fetch()["attempts"] == 5
    assert request.retry() is True
    wait_for(lambda: status_of(request) == "completed", 30, message="the retried job to complete")
    assert request.fetch()["attempts"] == 8
    assert [error["attempt"] for error in request.errors()] == [1, 2, 3, 4, 5, 6, 7]


def test_cancel_by_filter_reaches_every_executing_job(start_worker, executions):
    start_worker("--threads", "20", "--poll-interval", "30")
    wait_for(lambda: listening(executions), 10, message="listener")
    requests = [jobs_app.sleep.perform_later(60) for _ in range(12)]
    wait_for(lambda: operations.count_jobs(executions, operations.JobFilter(status="executing")) == 12, 20,
             message="all jobs to start")
    result = run_cli("jobs", "cancel", "--status", "executing", "--yes")
    assert result.returncode == 0, result.stderr
    wait_for(lambda: all(status_of(request) == "cancelled" for request in requests), 10,
             message="every job to be interrupted")


def test_a_cancel_that_comes_while_the_reservation_answers_reaches_the_job_at_once(start_worker, executions,
                                                                                 database_url):
    # The race: the job is reserved (committed), its cancel is announced to the worker, and only then does the
    # worker read its reservation's answer. A proxy holds every answer of the server but the listener's, so the
    # announcement arrives while the job is not in the executor yet; the poll is a minute away.
    with TCPProxy.for_url(database_url) as proxy:
        worker = start_worker("--threads", "2", "--poll-interval", "60", url=proxy.url(database_url))
        wait_for(lambda: listening(executions), 10, message="listener")
        listener_port = scalar(executions, "SELECT client_port FROM pg_stat_activity WHERE datname = "
                                           "current_database() AND application_name LIKE 'exekutor %%listener'")
        # The worker is idle first: a job goes through (its start-up poll no longer waits for an answer).
        warm_up = jobs_app.noop.perform_later()
        wait_for(lambda: status_of(warm_up) == "completed", 20, message="a first job to complete")
        proxy.hold_replies(except_port=listener_port)
        request = jobs_app.sleep.perform_later(60)
        wait_running(executions, request)  # reserved: the answer waits in the proxy
        before = proxy.delivered(listener_port)
        assert request.cancel() is True
        wait_for(lambda: proxy.delivered(listener_port) > before, 10, message="the announcement to reach the worker")
        time.sleep(0.2)  # the idle worker reads it meanwhile (the test would pass, never wrongly fail, without it)
        proxy.resume()
        resumed = time.monotonic()
        wait_for(lambda: status_of(request) == "cancelled", 10, message="the cancelled job to end")
        assert time.monotonic() - resumed < 2
        cancelled_record(request)
        worker.stop()  # while the proxy still forwards
