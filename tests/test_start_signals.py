"""A signal during a worker's start-up: real `exekutor-gevent start` processes get SIGTERM or SIGINT while they
start, and end cleanly every time: no row left in exekutor_workers, no job left executing, status 0 once the
worker was being built, and a log that says it stopped."""
import signal
import time

import psycopg2
import pytest

import exekutor
from exekutor.cli import EXIT_INTERRUPTED
from exekutor.db.migrations import VERSIONS_TABLE
from tests import jobs_app
from tests.conftest import query, scalar, wait_for

# A job the worker may reserve before the signal; with wait_for_termination 0 a stop releases it to pending.
NO_WAITING = {"EXEKUTOR_WAIT_FOR_TERMINATION": "0"}


def assert_ended_cleanly(worker, db, signum, started_building=True):
    """Before the start command runs, the signal's default action (or click's "interrupted" for SIGINT) is clean
    too: nothing exists yet."""
    status = worker.wait(30)
    output = worker.output()
    assert status == 0 if started_building else status in (0, -signum, EXIT_INTERRUPTED), output
    assert scalar(db, "SELECT count(*) FROM exekutor_workers") == 0, output
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e'") == 0, output
    if status == 0:
        assert " stopped" in output, output


def activity(db, condition):
    """Backends of this test's database (other test runs share the server) that match `condition`."""
    return query(db, f"SELECT 1 FROM pg_stat_activity WHERE datname = current_database() AND {condition}")


def waiting_for_lock(db, statement):
    return activity(db, f"wait_event_type = 'Lock' AND query LIKE '%%{statement}%%'")


@pytest.mark.timeout(90)
def test_sigterm_while_the_start_checks_the_schema_leaves_no_row(start_worker, db, database_url):
    # The schema check waits on a lock the test holds: the signal comes before the worker registered, and the
    # start goes on once the lock is gone. It must not register a row after the stop, nor reserve jobs.
    exekutor.enqueue_many([jobs_app.sleep.job(30)])
    blocker = psycopg2.connect(database_url)
    try:
        with blocker.cursor() as cursor:
            cursor.execute(f"LOCK TABLE {VERSIONS_TABLE} IN ACCESS EXCLUSIVE MODE")
        worker = start_worker("--poll-interval", "1", wait=False, env=NO_WAITING)
        wait_for(lambda: waiting_for_lock(db, f"SELECT version FROM {VERSIONS_TABLE}"), 30,
                 message="the schema check")
        worker.signal(signal.SIGTERM)
        wait_for(lambda: "stopping (signal again to kill)" in worker.output(), 10, message="the signal's stop")
    finally:
        blocker.close()  # the schema check goes on
    assert_ended_cleanly(worker, db, signal.SIGTERM)
    assert "stopped during start-up" in worker.output()
    assert " started on " not in worker.output()


@pytest.mark.timeout(90)
def test_sigterm_while_registering_leaves_no_row(start_worker, db, database_url):
    blocker = psycopg2.connect(database_url)
    try:
        with blocker.cursor() as cursor:
            cursor.execute("LOCK TABLE exekutor_workers IN SHARE MODE")  # INSERTs wait, reads do not
        worker = start_worker(wait=False, env=NO_WAITING)
        wait_for(lambda: waiting_for_lock(db, "INSERT INTO exekutor_workers"), 30, message="the registration")
        worker.signal(signal.SIGINT)
        wait_for(lambda: "stopping (signal again to kill)" in worker.output(), 10, message="the signal's stop")
    finally:
        blocker.close()
    assert_ended_cleanly(worker, db, signal.SIGINT)
    assert "stopped during start-up" in worker.output()


@pytest.mark.timeout(240)
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_at_any_moment_of_start_up_ends_the_worker_cleanly(start_worker, db, signum):
    exekutor.enqueue_many([jobs_app.sleep.job(30)])
    # While the interpreter imports and exekutor prepares: SIGTERM only, as a KeyboardInterrupt in an import
    # before exekutor's code runs can be swallowed by a library's bare `except:` (Python's lot, not exekutor's).
    for delay in [0.0, 0.1, 0.2, 0.3, 0.4]:
        worker = start_worker("--poll-interval", "1", wait=False, env=NO_WAITING)
        time.sleep(delay)  # the moment of the signal, not a wait for a condition
        worker.signal(signal.SIGTERM)
        assert_ended_cleanly(worker, db, signal.SIGTERM, started_building=False)
    # From the worker's first connection to a running worker takes a few tens of milliseconds on a quiet machine.
    pool_connections = "application_name LIKE 'exekutor %% worker'"
    for delay in [i * 0.003 for i in range(12)]:
        # The server ends a backend a little after its client exited: the last worker's must not count.
        wait_for(lambda: not activity(db, pool_connections), 10, message="the last worker's backends to end")
        worker = start_worker("--poll-interval", "1", wait=False, env=NO_WAITING)
        wait_for(lambda: activity(db, pool_connections), 30, interval=0.002, message="the worker's first connection")
        time.sleep(delay)
        worker.signal(signum)
        assert_ended_cleanly(worker, db, signum)
