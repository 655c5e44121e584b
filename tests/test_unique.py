"""Unique jobs: the database's unique index decides, under concurrency, in batches, in transactions, and when a
job holding a key is retried, released or cancelled."""
import json
import os
import subprocess
import sys
import threading
import time

import psycopg2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import exekutor
from exekutor import operations
from exekutor.db import migrations
from exekutor.enqueue import KEY_HOLDERS
from tests import jobs_app, unique_app
from tests.conftest import ROOT, query, scalar, wait_for

pytestmark = pytest.mark.timeout(120)

_RACER = """
import json, sys, time
import exekutor
from tests import jobs_app
start = float(sys.argv[1])
while time.time() < start:
    time.sleep(0.001)
ids = {jobs_app.noop.set(unique_key="the-one").perform_later(i).id for i in range(1000)}
print(json.dumps(sorted(ids)))
"""


def rows_with_key(conn, key):
    return scalar(conn, "SELECT count(*) FROM exekutor_jobs WHERE unique_key = %s", (key,))


def test_eight_processes_racing_on_one_key_insert_one_row(db, database_url):
    start = time.time() + 3
    environ = dict(os.environ, EXEKUTOR_DATABASE_URL=database_url, PYTHONPATH=ROOT)
    racers = [subprocess.Popen([sys.executable, "-c", _RACER, str(start)], cwd=ROOT, env=environ,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(8)]
    try:
        outputs = [racer.communicate(timeout=90) for racer in racers]
    finally:
        for racer in racers:
            if racer.poll() is None:
                racer.kill()
                racer.wait(10)
    assert all(racer.returncode == 0 for racer in racers), [err for _, err in outputs]
    ids = {job_id for out, _ in outputs for job_id in json.loads(out)}
    assert rows_with_key(db, "the-one") == 1 == scalar(db, "SELECT count(*) FROM exekutor_jobs")
    assert ids == {scalar(db, "SELECT id::text FROM exekutor_jobs")}  # every caller got the one job's handle


def test_enqueue_many_with_duplicates_inside_and_across_batches(db):
    first = [jobs_app.unique_record.job("a"), jobs_app.unique_record.job("b"), jobs_app.unique_record.job("a"),
             jobs_app.noop.job(), jobs_app.noop.job()]
    exekutor.enqueue_many(first)
    assert [request.duplicate for request in first] == [False, False, True, False, False]
    assert first[2].id == first[0].id
    second = [jobs_app.unique_record.job("b"), jobs_app.unique_record.job("c"), jobs_app.unique_record.job("c")]
    exekutor.enqueue_many(second)
    assert [request.duplicate for request in second] == [True, False, True]
    assert second[0].id == first[1].id and second[2].id == second[1].id
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs") == 5  # a, b, c and the two non-unique ones
    # Different arguments are different keys; a different job with the same arguments too.
    assert not jobs_app.unique_record.perform_later("a", sleep=0.1).duplicate


def test_a_rolled_back_enqueue_leaves_the_key_free(db, database_url):
    conn = psycopg2.connect(database_url)
    try:
        inside = jobs_app.unique_record.set(connection=conn).perform_later("tx")
        assert not inside.duplicate
        conn.rollback()
    finally:
        conn.close()
    after = jobs_app.unique_record.perform_later("tx")
    assert not after.duplicate and after.id != inside.id
    assert rows_with_key(db, after.unique_key) == 1


def test_unique_until_started_lets_a_new_job_in_once_the_first_runs(start_worker, executions):
    start_worker("--threads", "1", "--poll-interval", "1")  # one greenlet: the second job waits while the first runs
    first = jobs_app.unique_until_started.perform_later("k", sleep=3)
    wait_for(lambda: first.fetch()["status"] == "executing", 20, message="the first job to start")
    second = jobs_app.unique_until_started.perform_later("k", sleep=0)
    third = jobs_app.unique_until_started.perform_later("k", sleep=0)
    assert not second.duplicate and third.duplicate and third.id == second.id
    wait_for(lambda: first.fetch()["status"] == "completed" and second.fetch()["status"] == "completed", 20,
             message="both jobs to complete")


def test_unique_until_finished_holds_the_key_while_the_job_runs(start_worker, executions):
    start_worker("--threads", "2", "--poll-interval", "1")
    first = jobs_app.unique_record.perform_later("run", sleep=2)
    wait_for(lambda: first.fetch()["status"] == "executing", 20, message="the job to start")
    assert jobs_app.unique_record.perform_later("run", sleep=2).duplicate
    wait_for(lambda: first.fetch()["status"] == "completed", 20, message="the job to complete")
    assert not jobs_app.unique_record.perform_later("run", sleep=2).duplicate  # finished: the key is free


def test_a_started_job_sent_back_to_pending_never_takes_its_key_back(db):
    """unique_until="started": A gave its key up when it started. Its retry (or its worker's death) sends it back
    to pending without the key, whether B took the key meanwhile or not: B keeps it; with no B it stays free."""
    a = jobs_app.unique_until_started.perform_later("shared")
    query(db, "UPDATE exekutor_jobs SET status = 'e', attempts = 1 WHERE id = %s", (a.id,))
    b = jobs_app.unique_until_started.perform_later("shared")
    assert not b.duplicate
    query(db, "UPDATE exekutor_jobs SET status = 'p', worker_id = NULL WHERE id = %s", (a.id,))  # a retry outcome
    keys = dict(query(db, "SELECT id::text, unique_key FROM exekutor_jobs"))
    assert keys == {a.id: None, b.id: b.unique_key}
    alone = jobs_app.unique_until_started.perform_later("alone")
    query(db, "UPDATE exekutor_jobs SET status = 'e', attempts = 1 WHERE id = %s", (alone.id,))
    query(db, "UPDATE exekutor_jobs SET status = 'p', worker_id = NULL WHERE id = %s", (alone.id,))
    assert not jobs_app.unique_until_started.perform_later("alone").duplicate
    # unique_until="finished": nobody can take the key while A runs, so A keeps it when sent back.
    c = jobs_app.unique_record.perform_later("kept")
    query(db, "UPDATE exekutor_jobs SET status = 'e', attempts = 1 WHERE id = %s", (c.id,))
    query(db, "UPDATE exekutor_jobs SET status = 'p' WHERE id = %s", (c.id,))
    assert scalar(db, "SELECT unique_key FROM exekutor_jobs WHERE id = %s", (c.id,)) == c.unique_key


def test_an_operator_retry_of_a_failed_unique_job_never_fails_on_its_key(db):
    failed = jobs_app.unique_record.perform_later("again")
    query(db, "UPDATE exekutor_jobs SET status = 'f', attempts = 1, finished_at = now() WHERE id = %s", (failed.id,))
    fresh = jobs_app.unique_record.perform_later("again")
    assert not fresh.duplicate  # a failed job holds no key
    assert exekutor.JobRequest(failed.id).retry() is True  # and its retry does not break the fresh one's
    assert scalar(db, "SELECT unique_key FROM exekutor_jobs WHERE id = %s", (failed.id,)) is None
    assert rows_with_key(db, fresh.unique_key) == 1


def test_a_cancelled_unique_job_frees_its_key(db):
    request = jobs_app.unique_record.perform_later("cancel me")
    assert request.cancel()
    assert not jobs_app.unique_record.perform_later("cancel me").duplicate
    shown = operations.get_job(db, request.id)
    assert shown["status"] == "cancelled" and shown["unique_key"] == request.unique_key


def test_bad_unique_options_fail_the_enqueue_and_insert_nothing(db):
    for make in (lambda: jobs_app.noop.set(unique_key="").job(),
                 lambda: jobs_app.noop.set(unique_key="x" * 1001).job(),
                 lambda: jobs_app.noop.set(unique_key="nul\x00").job(),
                 lambda: jobs_app.noop.set(unique_until="later").job(),
                 lambda: exekutor.job(name="tests.bad_unique", unique="yes")(lambda: None)):
        with pytest.raises(ValueError):
            make()

    @exekutor.job(name="tests.unique_not_str", unique=lambda x: x)
    def not_str(x):
        pass

    with pytest.raises(TypeError, match="expected a str"):
        not_str.perform_later(5)
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs") == 0
    exekutor.registry.remove("tests.unique_not_str")


@given(key=st.text(min_size=1, max_size=60))
def test_any_key_text_is_refused_or_enforced(database_url, key):
    try:
        first = jobs_app.noop.set(unique_key=key).perform_later()
    except ValueError:
        return
    second = jobs_app.noop.set(unique_key=key).perform_later()
    assert second.duplicate and second.id == first.id
    with psycopg2.connect(database_url) as conn:
        conn.autocommit = True
        assert rows_with_key(conn, key) == 1
        query(conn, "DELETE FROM exekutor_jobs WHERE unique_key = %s", (key,))


def executed(conn):
    return {row[0] for row in query(conn, "SELECT tag FROM test_executions")}


def test_a_retry_never_waits_for_an_uncommitted_insert_of_its_key(start_worker, executions, database_url):
    """unique_until="started": while A runs, an application's transaction inserts a job with A's key and stays open.
    A's run fails and asks for a retry: the completion must not wait on that transaction (the worker's other jobs
    complete meanwhile), A keeps its real error record, and runs again without the key; the other job, once
    committed, holds the key and runs too."""
    start_worker("--threads", "4", "--poll-interval", "1", apps=("tests.jobs_app", "tests.unique_app"))
    first = unique_app.gated_flaky.set(unique_key="contested", unique_until="started").perform_later("first")
    wait_for(lambda: first.fetch()["status"] == "executing", 20, message="the first job to start")
    application = psycopg2.connect(database_url)
    try:
        second = jobs_app.record.set(unique_key="contested", unique_until="started",
                                     connection=application).perform_later("second")
        assert not second.duplicate  # the first gave up the key when it started
        query(executions, "INSERT INTO test_counters VALUES ('gate:first', 1)")  # its run fails now
        bystanders = [jobs_app.record.perform_later(f"bystander {i}") for i in range(5)]
        wait_for(lambda: first.fetch()["status"] == "completed", 15, message="the first job's retry to complete")
        wait_for(lambda: all(job.fetch()["status"] == "completed" for job in bystanders), 15,
                 message="the other jobs to complete")
        assert [(e["attempt"], e["message"]) for e in first.errors()] == [(1, "flaky failure 1 of 1")]
        assert application.get_transaction_status() == psycopg2.extensions.TRANSACTION_STATUS_INTRANS
        application.commit()
    finally:
        application.close()
    wait_for(lambda: second.fetch()["status"] == "completed", 20, message="the second job to complete")
    assert {"first", "second"} <= executed(executions)
    assert query(executions, KEY_HOLDERS, (["contested"],)) == []  # both done
    assert scalar(executions, "SELECT unique_key FROM exekutor_jobs WHERE id = %s", (first.id,)) is None


@pytest.mark.parametrize("in_transaction", [False, True], ids=["autocommit", "in the caller's transaction"])
def test_an_operator_retry_does_not_wait_for_an_uncommitted_insert_of_its_key(db, database_url, in_transaction):
    """A failed job's key is free; an application's transaction inserts a job with it and stays open. An operator's
    retry of the failed job does not wait for that transaction: the job goes back to pending without its key."""
    failed = jobs_app.unique_record.perform_later("busy")
    query(db, "UPDATE exekutor_jobs SET status = 'f', attempts = 1, finished_at = now() WHERE id = %s", (failed.id,))
    application = psycopg2.connect(database_url)
    operator = psycopg2.connect(database_url)
    operator.autocommit = not in_transaction
    # Were the retry to wait, the application's commit would end the wait (with a unique violation) after 10 s.
    timer = threading.Timer(10, application.commit)
    try:
        fresh = jobs_app.unique_record.set(connection=application).perform_later("busy")
        query(operator, "SET lock_timeout = '42s'")
        timer.start()
        started = time.monotonic()
        assert exekutor.JobRequest(failed.id).retry(connection=operator) is True
        assert time.monotonic() - started < 5
        assert scalar(operator, "SHOW lock_timeout") == "42s"  # the caller's own setting, still in force
        operator.commit()
    finally:
        timer.cancel()
        timer.join()
        application.commit()
        application.close()
        operator.close()
    assert failed.fetch()["status"] == "pending"
    assert query(db, KEY_HOLDERS, ([fresh.unique_key],)) == [(fresh.unique_key, fresh.id)]


def test_cancelling_a_running_unique_job_frees_its_key_at_once(start_worker, executions):
    start_worker("--threads", "2", "--poll-interval", "1")
    first = jobs_app.unique_record.perform_later("cancelled", sleep=2)
    wait_for(lambda: first.fetch()["status"] == "executing", 20, message="the job to start")
    assert first.cancel()
    again = jobs_app.unique_record.perform_later("cancelled", sleep=2)  # before the worker interrupted the first
    assert not again.duplicate and again.id != first.id
    wait_for(lambda: again.fetch()["status"] == "completed", 20, message="the new job to complete")
    assert operations.get_job(executions, first.id)["status"] == "cancelled"
    assert scalar(executions, "SELECT count(*) FROM test_executions WHERE tag = 'cancelled'") == 2


def test_migrating_from_0007_keeps_the_holders_and_frees_the_keys_given_up(db, database_url):
    """A database at 0007 with jobs in it migrates; a running job being cancelled gives up its key, the others keep
    theirs."""
    name = "exekutor_unique_from_0007"
    with db.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    url = psycopg2.extensions.make_dsn(database_url, dbname=name)
    conn = psycopg2.connect(url)
    try:
        conn.autocommit = True
        query(conn, migrations._CREATE_VERSIONS_TABLE)
        for version, migration, sql in migrations.available_migrations():
            if version < 8:
                query(conn, sql)
                query(conn, "INSERT INTO exekutor_schema_migrations VALUES (%s, %s)", (version, migration))
        rows = {"waiting": ("p", 0, "s", None), "started": ("e", 1, "s", None), "retried": ("p", 1, "s", None),
                "running": ("e", 1, "f", None), "cancelling": ("e", 1, "f", "now()")}
        for key, (status, attempts, until, cancel) in rows.items():
            query(conn, "INSERT INTO exekutor_jobs (payload, status, attempts, unique_until, unique_key, "
                        f"cancel_requested_at) VALUES ('{{}}', %s, %s, %s, %s, {cancel or 'NULL'})",
                  (status, attempts, until, key))
        assert 8 in migrations.migrate(url)
        assert {row[0] for row in query(conn, KEY_HOLDERS, (list(rows),))} == {"waiting", "retried", "running"}
        assert scalar(conn, "SELECT count(*) FROM exekutor_jobs WHERE unique_key IS NULL") == 1  # "cancelling"
    finally:
        conn.close()
        with db.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
