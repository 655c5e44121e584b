"""exekutor.Cleanup against the real database: what it deletes, and what it never deletes."""
import datetime as dt
import json

import pytest

import exekutor
from exekutor import cleanup
from tests.conftest import query, scalar

NOOP = json.dumps({"job": "tests.noop", "args": [], "kwargs": {}})


def insert_worker(db, heartbeat_age="0 seconds", identifier=None, hostname="test-host", pid=1):
    """A worker row whose last heartbeat was `heartbeat_age` (a PostgreSQL interval) ago; returns its id."""
    return scalar(db, "INSERT INTO exekutor_workers (hostname, pid, identifier, status, last_heartbeat_at, queues, "
                      "min_threads, max_threads) VALUES (%s, %s, %s, 'r', now() - %s::interval, NULL, 1, 10) "
                      "RETURNING id::text", (hostname, pid, identifier, heartbeat_age))


def insert_job(db, status="p", queue="default", scheduled_ago="0 seconds", finished_ago=None, worker_id=None):
    """A job row scheduled `scheduled_ago` and (if given) finished `finished_ago` (intervals); returns its id."""
    return scalar(db, "INSERT INTO exekutor_jobs (queue, payload, status, scheduled_at, finished_at, worker_id) "
                      "VALUES (%s, %s, %s, now() - %s::interval, now() - %s::interval, %s) RETURNING id::text",
                  (queue, NOOP, status, scheduled_ago, finished_ago, worker_id))


def statuses_left(db):
    return {row[0]: row[1] for row in query(db, "SELECT id::text, status FROM exekutor_jobs")}


def test_cutoff_accepts_hours_durations_timedeltas_and_datetimes():
    now = dt.datetime(2030, 1, 10, 12, tzinfo=dt.timezone.utc)
    assert cleanup.cutoff(4, now) == now - dt.timedelta(hours=4)
    assert cleanup.cutoff("4", now) == now - dt.timedelta(hours=4)  # a bare number is in hours
    assert cleanup.cutoff("90m", now) == now - dt.timedelta(minutes=90)
    assert cleanup.cutoff("2d", now) == now - dt.timedelta(days=2)
    assert cleanup.cutoff(dt.timedelta(minutes=5), now) == now - dt.timedelta(minutes=5)
    assert cleanup.cutoff(dt.datetime(2030, 1, 1), now) == dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    for bad in ("soon", -1, "-2h", None, [1]):
        with pytest.raises((ValueError, TypeError)):
            cleanup.cutoff(bad, now)


def test_job_statuses_take_names_letters_and_lists_but_never_unfinished_ones():
    assert cleanup.job_statuses() == ["c", "d", "f"]
    assert cleanup.job_statuses("failed") == ["f"]
    assert cleanup.job_statuses(["completed", "d"]) == ["c", "d"]
    assert cleanup.job_statuses("Completed, failed") == ["c", "f"]
    for bad in ("pending", "executing", "p", "e", ["failed", "pending"]):
        with pytest.raises(ValueError, match="never deletes"):
            cleanup.job_statuses(bad)
    with pytest.raises(ValueError, match="unknown job status 'done'"):
        cleanup.job_statuses("done")


def test_cleanup_jobs_deletes_old_finished_jobs_only(db):
    old = {status: insert_job(db, status, scheduled_ago="3 days", finished_ago="3 days") for status in "cfd"}
    pending = insert_job(db, "p", scheduled_ago="3 days")
    executing = insert_job(db, "e", scheduled_ago="3 days", worker_id=insert_worker(db))
    recent = insert_job(db, "c", scheduled_ago="1 hour", finished_ago="1 hour")
    # Waited in the queue for days but finished a minute ago: not old.
    late_finish = insert_job(db, "f", scheduled_ago="3 days", finished_ago="1 minute")
    db.cursor().execute("INSERT INTO exekutor_job_errors (job_id, error) VALUES (%s, '{}')", (old["f"],))

    assert exekutor.Cleanup().cleanup_jobs() == 3  # default: older than 48 hours
    assert statuses_left(db) == {pending: "p", executing: "e", recent: "c", late_finish: "f"}
    assert scalar(db, "SELECT count(*) FROM exekutor_job_errors") == 0  # deleted with their job

    # Even a cut-off of "now" leaves pending and executing jobs alone.
    assert exekutor.Cleanup().cleanup_jobs(before=0) == 2
    assert statuses_left(db) == {pending: "p", executing: "e"}


def test_cleanup_jobs_by_status_and_datetime(db):
    jobs = {status: insert_job(db, status, scheduled_ago="10 hours", finished_ago="10 hours") for status in "cfd"}
    before = dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=5)
    assert exekutor.Cleanup().cleanup_jobs(before=before, status="failed") == 1
    assert set(statuses_left(db)) == {jobs["c"], jobs["d"]}
    assert exekutor.Cleanup().cleanup_jobs(before="11h") == 0
    assert exekutor.Cleanup().cleanup_jobs(before=dt.timedelta(hours=9), status=["completed", "discarded"]) == 2


def test_cleanup_jobs_deletes_in_batches(db, monkeypatch):
    for _ in range(5):
        insert_job(db, "c", scheduled_ago="3 days", finished_ago="3 days")
    monkeypatch.setattr(cleanup, "BATCH_SIZE", 2)
    assert exekutor.Cleanup().cleanup_jobs() == 5
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs") == 0


def test_cleanup_workers_deletes_silent_workers_and_releases_their_jobs(db):
    dead = insert_worker(db, "5 hours", identifier="dead", pid=4242)
    alive = insert_worker(db, "10 seconds")
    orphan = insert_job(db, "e", worker_id=dead)
    running = insert_job(db, "e", worker_id=alive)

    deleted = exekutor.Cleanup().cleanup_workers()  # default: 4 hours
    assert [(w["id"], w["identifier"], w["pid"]) for w in deleted] == [(dead, "dead", 4242)]
    assert [row[0] for row in query(db, "SELECT id::text FROM exekutor_workers")] == [alive]
    assert statuses_left(db) == {orphan: "p", running: "e"}
    assert exekutor.Cleanup().cleanup_workers(timeout="1h") == []


def test_cleanup_workers_refuses_a_timeout_that_could_catch_live_workers(db):
    worker = insert_worker(db, "10 minutes")
    exekutor.config.worker_timeout = 3600
    with pytest.raises(ValueError, match="shorter than worker_timeout"):
        exekutor.Cleanup().cleanup_workers(timeout="5m")
    assert scalar(db, "SELECT count(*) FROM exekutor_workers") == 1
    exekutor.configure(worker_timeout=60, heartbeat_interval=10)
    assert [w["id"] for w in exekutor.Cleanup().cleanup_workers(timeout="5m")] == [worker]
