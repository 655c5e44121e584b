"""Upgrading a database from every earlier schema version while it holds jobs in flight.

For each version V before the latest (discovered from available_migrations(), so a new migration is covered as soon
as it exists), a database of its own is migrated to V only, with migrate()'s own bookkeeping. It then gets rows
written with the columns of 0001 alone (valid at every V; the later migrations add columns with defaults): jobs
pending in several queues and priorities, a job scheduled a few seconds ahead, a job executing on a worker that died
before the upgrade (its heartbeat an hour old), a failed job with its error record and a completed job. Then the
current migrate() takes it to the latest version and a real worker of the current code runs on it, and every job
must end as it should: each pending and the scheduled job completed at attempt 1 (the scheduled one not before its
time), the dead worker's job rescued (a WorkerLost record for attempt 1) and completed at attempt 2, the failed job
left failed until an operator's retry runs it, the completed job untouched; each job ran at most once (the jobs
record their executions) and none is lost.
"""
import json
import os
import uuid

import psycopg2
import psycopg2.extensions
import pytest

from exekutor import operations
from exekutor.db import migrations
from tests import jobs_app
from tests.conftest import query, scalar, wait_for

MIGRATIONS = migrations.available_migrations()
EARLIER = [version for version, _, _ in MIGRATIONS[:-1]]

WORKER_TIMEOUT = 4  # seconds: the dead worker's heartbeat is an hour old
WORKER_ENV = {"EXEKUTOR_HEARTBEAT_INTERVAL": "1", "EXEKUTOR_WORKER_TIMEOUT": str(WORKER_TIMEOUT)}
# Far enough ahead that the worker is up (and polling every 0.5 s) before the job is due.
SCHEDULED_IN = 8
PENDING = [("default", 16383), ("default", 1), ("mailers", 100), ("reports", 32767), ("reports", 5)]
# Columns of 0001's exekutor_jobs: what the rows written at version V are compared on.
V1_COLUMNS = ("id", "queue", "priority", "enqueued_at", "scheduled_at", "payload", "options", "status", "attempts",
              "worker_id", "started_at", "finished_at", "runtime")
WORKER_LOST = "exekutor.errors.WorkerLost"


@pytest.fixture(params=EARLIER, ids=lambda version: f"from_{version:04d}")
def old_database(request, database_url, monkeypatch):
    """(version, url, autocommit connection) of a new database migrated up to `version` only; dropped at the end."""
    version = request.param
    name = f"exekutor_upgrade_from_{version}_{os.getpid()}"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    query(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    query(admin, f'CREATE DATABASE "{name}"')
    url = psycopg2.extensions.make_dsn(database_url, dbname=name)
    conn = None
    try:
        # migrate() itself, seeing only the migrations up to `version`: each in its own transaction with its row in
        # the versions table, exactly as an installation of that version applied them.
        with monkeypatch.context() as patch:
            patch.setattr(migrations, "available_migrations", lambda: [m for m in MIGRATIONS if m[0] <= version])
            assert migrations.migrate(url) == [v for v in EARLIER if v <= version]
        conn = psycopg2.connect(url)
        conn.autocommit = True
        yield version, url, conn
    finally:
        if conn is not None:
            conn.close()
        query(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


def insert_job(conn, tag, queue="default", priority=16383, **columns):
    """A tests.record job, written with 0001's columns only; `columns` are SQL expressions. Returns its id."""
    job_id = str(uuid.uuid4())
    # The payload as enqueue writes it (0001: {"job": registered name, "args": [...], "kwargs": {...}}).
    payload = json.dumps({"job": "tests.record", "args": [tag], "kwargs": {}})
    names = ", ".join(columns)
    values = "".join(f", {expression}" for expression in columns.values())
    query(conn, f"INSERT INTO exekutor_jobs (id, queue, priority, payload{', ' if columns else ''}{names}) "
                f"VALUES (%s, %s, %s, %s{values})", (job_id, queue, priority, payload))
    return job_id


def snapshot(conn, job_id):
    """The job's 0001 columns, as the database has them."""
    row = scalar(conn, "SELECT to_jsonb(j) FROM exekutor_jobs j WHERE id = %s", (job_id,))
    return {column: row[column] for column in V1_COLUMNS}


def errors_of(conn, job_id):
    return query(conn, "SELECT attempt, error FROM exekutor_job_errors WHERE job_id = %s ORDER BY created_at, id",
                 (job_id,))


def job(conn, job_id):
    columns = ("status", "attempts", "releases", "started_at >= scheduled_at")
    return dict(zip(("status", "attempts", "releases", "on_time"),
                    query(conn, f"SELECT {', '.join(columns)} FROM exekutor_jobs WHERE id = %s", (job_id,))[0]))


def write_jobs_in_flight(conn):
    """The jobs of a database at the moment of its upgrade; returns their ids by role."""
    query(conn, jobs_app.EXECUTIONS_DDL)
    dead_worker = scalar(conn, "INSERT INTO exekutor_workers (hostname, pid, status, queues, started_at, "
                               "last_heartbeat_at) VALUES ('died-before-the-upgrade', 999999, 'r', NULL, "
                               "now() - interval '2 hours', now() - interval '1 hour') RETURNING id::text")
    jobs = {"pending": [insert_job(conn, f"pending-{i}", queue, priority) for i, (queue, priority) in
                        enumerate(PENDING)]}
    jobs["scheduled"] = insert_job(conn, "scheduled", "mailers", 50,
                                   scheduled_at=f"now() + interval '{SCHEDULED_IN} seconds'")
    jobs["executing"] = insert_job(conn, "executing", "reports", 10, status="'e'", attempts="1",
                                   worker_id=f"'{dead_worker}'", enqueued_at="now() - interval '61 minutes'",
                                   scheduled_at="now() - interval '61 minutes'",
                                   started_at="now() - interval '1 hour'")
    jobs["failed"] = insert_job(conn, "failed", status="'f'", attempts="1",
                                enqueued_at="now() - interval '3 hours'", scheduled_at="now() - interval '3 hours'",
                                started_at="now() - interval '3 hours'",
                                finished_at="now() - interval '3 hours' + interval '2 seconds'", runtime="2.0")
    query(conn, "INSERT INTO exekutor_job_errors (job_id, created_at, attempt, error) "
                "VALUES (%s, now() - interval '3 hours' + interval '2 seconds', 1, %s)",
          (jobs["failed"], json.dumps({"type": "RuntimeError", "message": "failed before the upgrade",
                                       "traceback": "Traceback (most recent call last):\nRuntimeError: failed "
                                                    "before the upgrade\n"})))
    jobs["completed"] = insert_job(conn, "completed", "mailers", 100, status="'c'", attempts="1",
                                   enqueued_at="now() - interval '2 hours'", scheduled_at="now() - interval '2 hours'",
                                   started_at="now() - interval '2 hours'",
                                   finished_at="now() - interval '2 hours' + interval '0.5 seconds'", runtime="0.5")
    return dead_worker, jobs


@pytest.mark.timeout(120)
def test_upgrade_with_jobs_in_flight_ends_every_job_as_it_should(old_database, start_worker):
    version, url, conn = old_database
    dead_worker, jobs = write_jobs_in_flight(conn)
    everything = [*jobs["pending"], jobs["scheduled"], jobs["executing"], jobs["failed"], jobs["completed"]]
    before = {job_id: snapshot(conn, job_id) for job_id in everything}
    failed_errors = errors_of(conn, jobs["failed"])

    applied = migrations.migrate(url)
    assert applied == [v for v, _, _ in MIGRATIONS if v > version]
    assert query(conn, "SELECT version, name FROM exekutor_schema_migrations ORDER BY version") == \
        [(v, name) for v, name, _ in MIGRATIONS]
    assert migrations.pending_migrations(conn) == []
    # The upgrade itself changed no job.
    assert {job_id: snapshot(conn, job_id) for job_id in everything} == before
    assert errors_of(conn, jobs["failed"]) == failed_errors

    worker = start_worker("--poll-interval", "0.5", "--threads", "5", url=url, env=WORKER_ENV)
    # The worker runs before the scheduled job is due: "not before its time" below is a real check.
    assert scalar(conn, "SELECT status = 'p' AND scheduled_at > now() FROM exekutor_jobs WHERE id = %s",
                  (jobs["scheduled"],)), "the worker took too long to start"

    runnable = [*jobs["pending"], jobs["scheduled"], jobs["executing"]]

    def ran():
        if worker.proc.poll() is not None:
            raise AssertionError(f"worker exited with {worker.proc.returncode}:\n{worker.output()}")
        return scalar(conn, "SELECT count(*) FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) AND status = 'c'",
                      (runnable,)) == len(runnable)

    try:
        wait_for(ran, 60, message="the jobs to run", interval=0.2)
    except AssertionError as error:
        rows = query(conn, "SELECT payload->'args'->>0, status, attempts FROM exekutor_jobs ORDER BY 1")
        raise AssertionError(f"{error}; upgraded from {version}, jobs: {rows}\n{worker.output()}") from None

    for job_id in jobs["pending"]:
        assert job(conn, job_id) == {"status": "c", "attempts": 1, "releases": 0, "on_time": True}
    assert job(conn, jobs["scheduled"]) == {"status": "c", "attempts": 1, "releases": 0, "on_time": True}
    # Rescued from the dead worker (its row gone, the attempt it ran recorded as lost), then run once more.
    assert job(conn, jobs["executing"]) == {"status": "c", "attempts": 2, "releases": 1, "on_time": True}
    lost = errors_of(conn, jobs["executing"])
    assert [(attempt, error["type"]) for attempt, error in lost] == [(1, WORKER_LOST)], lost
    assert scalar(conn, "SELECT count(*) FROM exekutor_workers WHERE id = %s", (dead_worker,)) == 0
    # The failed job stays failed, its record as it was; the completed one is untouched.
    assert snapshot(conn, jobs["failed"]) == before[jobs["failed"]]
    assert errors_of(conn, jobs["failed"]) == failed_errors
    assert snapshot(conn, jobs["completed"]) == before[jobs["completed"]]
    assert errors_of(conn, jobs["completed"]) == []

    # An operator's retry runs the failed job, once more.
    assert operations.retry(conn, [jobs["failed"]]).retried == [jobs["failed"]]
    wait_for(lambda: job(conn, jobs["failed"])["status"] == "c", 30, message="the retried job to complete",
             interval=0.2)
    assert job(conn, jobs["failed"]) == {"status": "c", "attempts": 2, "releases": 0, "on_time": True}
    assert errors_of(conn, jobs["failed"]) == failed_errors

    # Nothing lost, nothing run twice, nothing else recorded.
    assert query(conn, "SELECT status, count(*) FROM exekutor_jobs GROUP BY status") == [("c", len(everything))]
    ran_tags = dict(query(conn, "SELECT tag, count(*) FROM test_executions GROUP BY tag"))
    assert ran_tags == {**{f"pending-{i}": 1 for i in range(len(PENDING))}, "scheduled": 1, "executing": 1,
                        "failed": 1}
    assert scalar(conn, "SELECT count(*) FROM exekutor_job_errors") == 2
    assert snapshot(conn, jobs["completed"]) == before[jobs["completed"]]
    worker.stop()
    assert "Traceback" not in worker.output(), worker.output()
