"""The worker, end to end: real worker processes against a real PostgreSQL."""
import os
import signal
import time

import psycopg2
import pytest

import exekutor
from tests import jobs_app
from tests.conftest import query, scalar, wait_for

FAST = {"EXEKUTOR_HEARTBEAT_INTERVAL": "1", "EXEKUTOR_WORKER_TIMEOUT": "4"}


def listening(db):
    return scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND "
                      "application_name LIKE 'exekutor %%listener' AND query LIKE 'LISTEN%%'")


def statuses(db):
    return dict(query(db, "SELECT status, count(*) FROM exekutor_jobs GROUP BY status"))


def all_finished(db, total):
    def check():
        counts = statuses(db)
        return sum(counts.get(s, 0) for s in "cfd") == total and counts
    return check


@pytest.mark.timeout(90)
def test_200_sleeping_jobs_run_concurrently_on_a_bounded_number_of_connections(start_worker, db):
    worker = start_worker("--threads", "200", "--poll-interval", "1", "--identifier", "big")
    exekutor.enqueue_many([jobs_app.sleep.job(0.5) for _ in range(200)])
    peak_sample = []
    deadline = time.monotonic() + 60
    while scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'c'") < 200:
        assert time.monotonic() < deadline, f"jobs did not finish: {statuses(db)}"
        connections = query(db, "SELECT pid, application_name, state, left(query, 40) FROM pg_stat_activity "
                                "WHERE datname = current_database() AND application_name LIKE 'exekutor big %%'")
        if len(connections) > len(peak_sample):
            peak_sample = connections
        time.sleep(0.05)
    started, finished = query(db, "SELECT min(started_at), max(finished_at) FROM exekutor_jobs")[0]
    # Serially 100 s; concurrently about 0.5 s plus overhead.
    assert (finished - started).total_seconds() < 10
    # The pool of 3, the listener, and the heartbeat's on the liveness thread.
    assert 1 <= len(peak_sample) <= 5, (peak_sample, worker.output())
    assert scalar(db, "SELECT max(attempts) FROM exekutor_jobs") == 1
    worker.stop()


@pytest.mark.timeout(60)
def test_listener_starts_a_job_within_a_second_when_polling_is_slow(start_worker, db):
    start_worker("--poll-interval", "60")
    # Give the listener a moment to LISTEN after the worker row appears.
    wait_for(lambda: listening(db), 10, message="listener")
    delays = []
    for _ in range(3):
        handle = jobs_app.noop.perform_later()
        wait_for(lambda handle=handle: handle.fetch()["status"] == "completed", 10, message="job to complete")
        row = handle.fetch()
        delays.append((row["started_at"] - row["enqueued_at"]).total_seconds())
    assert max(delays) < 1.0, delays


@pytest.mark.timeout(120)
def test_two_workers_execute_each_of_2000_jobs_exactly_once(start_worker, executions):
    first = start_worker("--threads", "20", "--poll-interval", "2")
    second = start_worker("--threads", "20", "--poll-interval", "2")
    exekutor.enqueue_many([jobs_app.record.job(f"job-{i}") for i in range(2000)])
    wait_for(all_finished(executions, 2000), 90, message="2000 jobs to finish")
    assert statuses(executions) == {"c": 2000}
    assert scalar(executions, "SELECT count(*) FROM test_executions") == 2000
    assert scalar(executions, "SELECT count(DISTINCT tag) FROM test_executions") == 2000
    pids = dict(query(executions, "SELECT pid, count(*) FROM test_executions GROUP BY pid"))
    assert set(pids) == {first.pid, second.pid}


@pytest.mark.timeout(120)
def test_jobs_of_a_killed_worker_run_again_on_a_survivor(start_worker, executions):
    doomed = start_worker("--threads", "10", "--poll-interval", "1", env=FAST)
    doomed_id = doomed.worker_id(executions)
    jobs = exekutor.enqueue_many([jobs_app.record.job(f"job-{i}", sleep=2) for i in range(10)])
    wait_for(lambda: scalar(executions, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s",
                            (doomed_id,)) == 10, 30, message="the doomed worker to run all jobs")
    survivor = start_worker("--threads", "10", "--poll-interval", "1", env=FAST)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(10)
    killed_at = time.monotonic()
    wait_for(all_finished(executions, 10), 60, message="the survivor to rerun the orphaned jobs")
    assert statuses(executions) == {"c": 10}
    # Rescued after worker_timeout (4 s) plus a heartbeat, not after a manual cleanup.
    assert time.monotonic() - killed_at < 30
    finished_by = query(executions, "SELECT DISTINCT pid FROM test_executions WHERE finished_at IS NOT NULL")
    assert finished_by == [(survivor.pid,)]
    assert scalar(executions, "SELECT count(DISTINCT tag) FROM test_executions WHERE pid = %s",
                  (survivor.pid,)) == len(jobs)
    assert scalar(executions, "SELECT count(*) FROM exekutor_workers WHERE id = %s", (doomed_id,)) == 0


@pytest.mark.timeout(60)
def test_execution_timeout_interrupts_a_query_and_never_reuses_its_connection(start_worker, executions):
    start_worker("--threads", "5", "--poll-interval", "1")
    slow = jobs_app.pg_sleep.set(execution_timeout=1).perform_later(10, tag="slow")
    wait_for(lambda: slow.fetch()["status"] == "discarded", 10, message="the slow job to be discarded")
    row = slow.fetch()
    assert (row["finished_at"] - row["started_at"]).total_seconds() < 3
    error = scalar(executions, "SELECT error FROM exekutor_job_errors WHERE job_id = %s", (slow.id,))
    assert error["type"] == "exekutor.errors.JobTimeoutError"
    assert "execution_timeout of 1s" in error["message"]
    backend = int(scalar(executions, "SELECT tag FROM test_executions WHERE tag <> 'slow' LIMIT 1"))
    # The interrupted connection was cancelled and closed, not handed to the next job.
    wait_for(lambda: not query(executions, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (backend,)), 10,
             message="the interrupted backend to go away")
    after = jobs_app.pg_sleep.perform_later(0, tag="after")
    wait_for(lambda: after.fetch()["status"] == "completed", 10, message="the worker to keep serving")
    backends = [int(r[0]) for r in query(executions, "SELECT tag FROM test_executions WHERE tag ~ '^[0-9]+$'")]
    assert len(backends) == 2 and backends[0] != backends[1]


@pytest.mark.timeout(60)
def test_expired_queue_timeout_job_is_never_started(start_worker, executions):
    stale = jobs_app.record.set(queue_timeout=60).perform_later("stale")
    fresh = jobs_app.record.set(queue_timeout=60).perform_later("fresh")
    with executions.cursor() as cursor:
        cursor.execute("UPDATE exekutor_jobs SET scheduled_at = now() - interval '2 minutes' WHERE id = %s",
                       (stale.id,))
    start_worker("--poll-interval", "1")
    wait_for(all_finished(executions, 2), 20, message="both jobs to finish")
    assert stale.fetch()["status"] == "discarded"
    assert fresh.fetch()["status"] == "completed"
    assert [r[0] for r in query(executions, "SELECT tag FROM test_executions")] == ["fresh"]
    error = scalar(executions, "SELECT error FROM exekutor_job_errors WHERE job_id = %s", (stale.id,))
    assert error["type"] == "exekutor.errors.QueueTimeoutError"


@pytest.mark.timeout(60)
def test_retries_keep_the_row_count_attempts_and_record_every_error(start_worker, executions):
    flaky = jobs_app.flaky.perform_later("k", 2)
    doomed = jobs_app.always_fails.perform_later()
    start_worker("--poll-interval", "1")
    wait_for(all_finished(executions, 2), 30, message="retries to settle")
    assert (flaky.fetch()["status"], flaky.fetch()["attempts"]) == ("completed", 3)
    assert (doomed.fetch()["status"], doomed.fetch()["attempts"]) == ("failed", 3)
    errors = query(executions, "SELECT job_id::text, attempt, error FROM exekutor_job_errors ORDER BY created_at")
    assert [(a, e["type"]) for j, a, e in errors if j == flaky.id] == [(1, "OSError"), (2, "OSError")]
    assert [a for j, a, e in errors if j == doomed.id] == [1, 2, 3]
    assert all("Traceback (most recent call last)" in e["traceback"] for _, _, e in errors)
    assert scalar(executions, "SELECT count(*) FROM exekutor_jobs") == 2


@pytest.mark.timeout(60)
def test_discards_and_unknown_jobs_are_recorded_and_never_called(start_worker, executions):
    discarded = jobs_app.discards.perform_later("raise")
    discarded_on = jobs_app.discards.perform_later("discard_on")
    with executions.cursor() as cursor:
        cursor.execute("INSERT INTO exekutor_jobs (payload) VALUES "
                       "('{\"job\": \"os:system\", \"args\": [\"touch /tmp/exekutor-pwned\"], \"kwargs\": {}}'), "
                       "('{\"job\": \"tests.record\", \"args\": {\"not\": \"a list\"}}'), ('[1, 2]')")
    ok = jobs_app.record.perform_later("ok")
    start_worker("--poll-interval", "1")
    wait_for(all_finished(executions, 6), 20, message="all jobs to finish")
    assert discarded.fetch()["status"] == "discarded" and discarded_on.fetch()["status"] == "discarded"
    assert ok.fetch()["status"] == "completed"
    failed = query(executions, "SELECT e.error->>'type', e.error->>'message' FROM exekutor_jobs j "
                               "JOIN exekutor_job_errors e ON e.job_id = j.id WHERE j.status = 'f'")
    assert len(failed) == 3
    assert any(t == "exekutor.errors.UnknownJobError" and "'os:system'" in m for t, m in failed)
    assert any(t == "exekutor.errors.SerializationError" for t, _ in failed)
    assert not os.path.exists("/tmp/exekutor-pwned")


@pytest.mark.timeout(120)
def test_worker_recovers_when_all_its_connections_are_terminated(start_worker, executions, database_url):
    worker = start_worker("--threads", "10", "--poll-interval", "1", env=FAST)
    total = 300
    exekutor.enqueue_many([jobs_app.record.job(f"job-{i}", sleep=0.05) for i in range(total)])
    terminator = psycopg2.connect(database_url)
    terminator.autocommit = True
    try:
        for _ in range(3):
            wait_for(lambda: scalar(executions, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e'"), 30,
                     message="jobs to be running")
            query(terminator, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                              "AND backend_type = 'client backend' AND pid NOT IN (SELECT pid FROM pg_stat_activity "
                              "WHERE application_name = '' AND query LIKE 'SELECT count%%')")
            time.sleep(0.3)
    finally:
        terminator.close()
    wait_for(all_finished(executions, total), 90, message="every job to reach an outcome")
    assert statuses(executions) == {"c": total}
    assert worker.proc.poll() is None
    assert scalar(executions, "SELECT count(DISTINCT tag) FROM test_executions") == total


@pytest.mark.timeout(60)
def test_graceful_stop_lets_running_jobs_finish(start_worker, executions):
    worker = start_worker("--threads", "5", "--poll-interval", "1", env={"EXEKUTOR_WAIT_FOR_TERMINATION": "30"})
    jobs = exekutor.enqueue_many([jobs_app.record.job(f"job-{i}", sleep=2) for i in range(5)])
    wait_for(lambda: scalar(executions, "SELECT count(*) FROM test_executions") == 5, 20, message="jobs to start")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert statuses(executions) == {"c": len(jobs)}
    assert scalar(executions, "SELECT count(*) FROM test_executions WHERE finished_at IS NULL") == 0
    assert scalar(executions, "SELECT count(*) FROM exekutor_workers") == 0


@pytest.mark.timeout(60)
def test_second_signal_kills_and_returns_running_jobs_to_pending(start_worker, executions):
    worker = start_worker("--threads", "5", "--poll-interval", "1", env={"EXEKUTOR_WAIT_FOR_TERMINATION": "true"})
    exekutor.enqueue_many([jobs_app.record.job(f"job-{i}", sleep=30) for i in range(3)])
    wait_for(lambda: scalar(executions, "SELECT count(*) FROM test_executions") == 3, 20, message="jobs to start")
    worker.signal(signal.SIGTERM)
    wait_for(lambda: scalar(executions, "SELECT status FROM exekutor_workers") == "s", 10, message="stopping")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    assert statuses(executions) == {"p": 3}
    assert scalar(executions, "SELECT count(*) FROM exekutor_jobs WHERE worker_id IS NOT NULL") == 0
    assert scalar(executions, "SELECT count(*) FROM exekutor_workers") == 0


@pytest.mark.timeout(60)
def test_wait_for_termination_zero_kills_jobs_at_once(start_worker, executions):
    worker = start_worker("--threads", "5", "--poll-interval", "1", env={"EXEKUTOR_WAIT_FOR_TERMINATION": "0"})
    exekutor.enqueue_many([jobs_app.record.job(f"job-{i}", sleep=30) for i in range(2)])
    wait_for(lambda: scalar(executions, "SELECT count(*) FROM test_executions") == 2, 20, message="jobs to start")
    stopped_at = time.monotonic()
    worker.signal(signal.SIGTERM)
    assert worker.wait(20) == 0
    assert time.monotonic() - stopped_at < 15
    assert statuses(executions) == {"p": 2}


@pytest.mark.timeout(60)
def test_future_jobs_start_when_due_without_a_poll(start_worker, db):
    start_worker("--poll-interval", "60")
    wait_for(lambda: listening(db), 10, message="listener")
    handle = jobs_app.noop.set(wait=2).perform_later()
    wait_for(lambda: handle.fetch()["status"] == "completed", 20, message="the scheduled job to run")
    row = handle.fetch()
    lateness = (row["started_at"] - row["scheduled_at"]).total_seconds()
    assert 0 <= lateness < 1.5


