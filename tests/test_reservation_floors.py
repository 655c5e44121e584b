"""Reservation floors (exekutor/worker/floors.py) against real workers and a real PostgreSQL: hostile cases in which
a floor could strand a ready job (never run, or only at the next poll) or let one run twice.

Where the point is that a job starts promptly *without* a poll, the worker polls once a minute and the test waits far
less than that: only a notification lowering the floor can start the job in time. Where the point is that the poll's
check below the floors finds a job no notification announced, the worker polls every second. `tests.floors.report`
(tests/floors_app.py) shows what the provider inside the worker process knows: its floors, the ready jobs its check
found below them, and the errors its components reported.
"""
import datetime as dt
import json
import os
import signal
import threading
import time

import psycopg2
import pytest

import exekutor
from exekutor import operations
from tests import floors_app, jobs_app
from tests.conftest import query, scalar, wait_for

LONG_POLL = 60  # seconds: no poll happens during a test
SHORT_POLL = 1
PROMPTLY = 2.5  # seconds from the event that made a job ready to its start, without a poll (generous: a busy box)
APPS = ("tests.jobs_app", "tests.floors_app")
FAST = {"EXEKUTOR_HEARTBEAT_INTERVAL": "1", "EXEKUTOR_WORKER_TIMEOUT": "4"}


@pytest.fixture
def fdb(executions):
    """`executions` with the report table; dropped afterwards."""
    query(executions, floors_app.REPORTS_DDL)
    yield executions
    query(executions, "DROP TABLE IF EXISTS test_floor_reports")


def start(start_worker, db, identifier, poll, threads=5, env=None, extra=()):
    """A worker of the test's apps, with its listener LISTENing (so that notifications reach it from now on)."""
    worker = start_worker("--identifier", identifier, "--threads", threads, "--poll-interval", poll, *extra,
                          env=env, apps=APPS)
    worker.identifier = identifier
    wait_for(lambda: listener_pid(db, identifier), 20, message=f"the listener of {identifier}")
    return worker


def listener_pid(db, identifier):
    rows = query(db, "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s "
                     "AND query LIKE 'LISTEN%%'", (f"exekutor {identifier} listener",))
    return rows[0][0] if rows else None


def report(db, tag, queue=None):
    """What the provider of the worker that runs it knows, after the reservation that reserved this job."""
    handle = floors_app.report.set(queue=queue).perform_later(tag) if queue else floors_app.report.perform_later(tag)
    wait_for(lambda: handle.fetch()["status"] == "completed", 20, message=f"report {tag}")
    return scalar(db, "SELECT state FROM test_floor_reports WHERE tag = %s", (tag,))


def lowest_floor(state):
    """The lowest floor (epoch seconds; None for -inf) of a report's ranges."""
    floors = [at for _, _, at in state["ranges"]]
    return None if None in floors else min(floors)


def epoch(value):
    return value.timestamp()


def job_row(db, job_id):
    return query(db, "SELECT status, attempts, releases, started_at, scheduled_at FROM exekutor_jobs WHERE id = %s",
                 (job_id,))[0]


def db_now(db):
    return scalar(db, "SELECT clock_timestamp()")


def run_and_wait(db, count, prefix, **kwargs):
    """Enqueue `count` record jobs and wait for all of them: the worker's reservations (and floors) pass them."""
    handles = exekutor.enqueue_many([jobs_app.record.job(f"{prefix}-{i}", **kwargs) for i in range(count)])
    ids = [h.id for h in handles]
    wait_for(lambda: scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) AND status = 'c'",
                            (ids,)) == count, 30, message=f"{count} {prefix} jobs")
    return ids


def executions_of(db, tag):
    return query(db, "SELECT pid, started_at FROM test_executions WHERE tag = %s ORDER BY started_at", (tag,))


def an_hour_ago():
    return dt.datetime.now(dt.timezone.utc) - dt.timedelta(hours=1)


# --- a. a job whose transaction began long before it committed --------------------------------------------------


@pytest.mark.timeout(120)
def test_a_job_enqueued_in_a_long_transaction_starts_at_its_commit(start_worker, fdb, database_url):
    start(start_worker, fdb, "floors-a", LONG_POLL)
    held = psycopg2.connect(database_url)  # not autocommit: the enqueue is in its transaction
    try:
        old = exekutor.enqueue_many([jobs_app.record.job("old"),
                                     jobs_app.record.set(priority=5, wait_until=an_hour_ago()).job("older")],
                                    connection=held)
        scheduled = [row[0] for row in query(held, "SELECT scheduled_at FROM exekutor_jobs WHERE id = ANY(%s::uuid[])",
                                             ([h.id for h in old],))]
        # Newer jobs, in several statements: every reservation since walked past the times of the held ones.
        for batch in range(4):
            run_and_wait(fdb, 15, f"newer-{batch}")
        state = report(fdb, "before-commit")
        assert lowest_floor(state) is not None and lowest_floor(state) > max(epoch(t) for t in scheduled), state
        assert scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE id = ANY(%s::uuid[])", ([h.id for h in old],)) == 0
        held.commit()
        committed = db_now(fdb)
    finally:
        held.close()
    for handle in old:
        wait_for(lambda handle=handle: job_row(fdb, handle.id)[0] == "c", 30, message="the held jobs to run")
        started = job_row(fdb, handle.id)[3]
        assert (started - committed).total_seconds() < PROMPTLY, (started, committed)
    assert report(fdb, "after")["below_floors"] == 0  # the notification did it, not a poll (none happened)


# --- b. priorities: a higher one after many lower ones, old times in the middle of a backlog ------------------


@pytest.mark.timeout(120)
def test_higher_priorities_and_old_times_cut_into_a_backlog_in_priority_order(start_worker, fdb):
    start(start_worker, fdb, "floors-b", LONG_POLL, threads=2)
    backlog = exekutor.enqueue_many([jobs_app.record.set(priority=50).job(f"backlog-{i}", sleep=0.02)
                                     for i in range(300)])
    backlog_ids = [h.id for h in backlog]
    # Full walks are under way: priorities below 50 rose to their now(), 50 to the last candidate's time.
    wait_for(lambda: scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE status = 'c'") >= 30, 30,
             message="the backlog to be under way")
    long_ago = an_hour_ago()
    urgent, old_high, old_same, old_low = (h.id for h in exekutor.enqueue_many([
        jobs_app.record.set(priority=1).job("urgent"),
        jobs_app.record.set(priority=10, wait_until=long_ago).job("old-high"),
        jobs_app.record.set(priority=50, wait_until=long_ago).job("old-same"),
        jobs_app.record.set(priority=60, wait_until=long_ago).job("old-low"),
    ]))
    committed = db_now(fdb)
    waiting = scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) AND status = 'p'",
                     (backlog_ids,))
    assert waiting > 50, "the backlog drained before the test could cut into it"
    wait_for(lambda: scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE status <> 'c'") == 0, 60,
             message="every job to complete")
    starts = dict(query(fdb, "SELECT id::text, started_at FROM exekutor_jobs"))
    for job_id in (urgent, old_high, old_same):
        assert (starts[job_id] - committed).total_seconds() < PROMPTLY, (job_id, starts[job_id], committed)
    assert starts[urgent] <= starts[old_high] <= starts[old_same]
    later = sum(1 for job_id in backlog_ids if starts[job_id] > starts[old_same])
    assert later >= waiting - 4, (later, waiting)  # the old job of the same priority went before what waited
    assert starts[old_low] >= max(starts[job_id] for job_id in backlog_ids)
    assert scalar(fdb, "SELECT max(attempts) FROM exekutor_jobs") == 1
    assert scalar(fdb, "SELECT count(*) FROM test_executions") == 304


# --- c. rows another reservation held locked, then rolled back (no notification) ------------------------------


@pytest.mark.timeout(120)
def test_rows_locked_by_a_reservation_that_rolled_back_run_after_the_next_poll(start_worker, fdb, database_url):
    old = exekutor.enqueue_many([jobs_app.record.job(f"locked-{i}") for i in range(5)])
    old_ids = [h.id for h in old]
    locker = psycopg2.connect(database_url)
    try:
        # What a reservation of another worker does to its candidates, from before this worker starts.
        locked = query(locker, "SELECT id::text FROM exekutor_jobs WHERE status = 'p' "
                               "ORDER BY priority, scheduled_at, enqueued_at LIMIT 5 FOR UPDATE")
        assert sorted(r[0] for r in locked) == sorted(old_ids)
        start(start_worker, fdb, "floors-c", SHORT_POLL)
        for batch in range(3):
            run_and_wait(fdb, 10, f"newer-{batch}")  # SKIP LOCKED passes the locked rows, the floors rise past them
        oldest = epoch(scalar(fdb, "SELECT max(scheduled_at) FROM exekutor_jobs WHERE id = ANY(%s::uuid[])",
                              (old_ids,)))
        # The check at each poll finds the locked rows below the floors too (it reads, it does not lock) and lowers
        # them for a walk that passes them again: a report may catch that moment, the next one not.
        reports = iter(range(100))
        state = wait_for(lambda: (lambda s: s if (lowest_floor(s) or 0) > oldest else None)(
            report(fdb, f"before-rollback-{next(reports)}")), 30, message="the floors to rise past the locked rows")
        assert scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) AND status = 'p'",
                      (old_ids,)) == 5
        locker.rollback()  # the reservation "failed": its rows are pending again, and nothing tells the workers
        rolled_back = db_now(fdb)
    finally:
        locker.close()
    wait_for(lambda: scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) AND status = 'c'",
                            (old_ids,)) == 5, 30, message="the jobs that were locked to run")
    started = scalar(fdb, "SELECT max(started_at) FROM exekutor_jobs WHERE id = ANY(%s::uuid[])", (old_ids,))
    # The next poll (1 s, jittered ±5 %) checks below the floors; a second poll's worth of margin for a busy box.
    assert (started - rolled_back).total_seconds() < 2 * SHORT_POLL + PROMPTLY, (started, rolled_back)
    after = report(fdb, "after-rollback")
    assert after["below_floors"] > state["below_floors"], (state, after)
    assert after["provider_errors"] == 0 and not after["errors"], after
    assert scalar(fdb, "SELECT count(*) FROM test_executions WHERE tag LIKE 'locked-%%'") == 5


@pytest.mark.timeout(120)
def test_locked_rows_of_several_priorities_are_all_found_by_the_first_check_after_the_rollback(start_worker, fdb,
                                                                                               database_url):
    poll = 2
    old = exekutor.enqueue_many([jobs_app.record.set(priority=p).job(f"locked-p{p}") for p in (3, 5, 7, 9)])
    old_ids = [h.id for h in old]
    locker = psycopg2.connect(database_url)
    try:
        query(locker, "SELECT 1 FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) FOR UPDATE", (old_ids,))
        start(start_worker, fdb, "floors-c2", poll)
        run_and_wait(fdb, 10, "newer")  # priority 16383: the locked ones' priorities stay in one range, [1, 16382]
        locker.rollback()
    finally:
        locker.close()
    wait_for(lambda: scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) AND status = 'c'",
                            (old_ids,)) == 4, 60, message="the jobs that were locked to run")
    spread = scalar(fdb, "SELECT extract(epoch FROM max(started_at) - min(started_at)) FROM exekutor_jobs "
                         "WHERE id = ANY(%s::uuid[])", (old_ids,))
    assert spread < poll / 2, f"the four started over {spread:.1f}s: one poll ({poll}s) after another"


# --- d. the listener's connection killed while jobs are enqueued ----------------------------------------------


class Enqueuer:
    """Record jobs from a thread of the test, in small batches, each its own transaction; with `old_every`, every
    so many batches are scheduled an hour ago (below every floor: only their notification can announce them)."""

    def __init__(self, url, prefix, batches, size, pause=0.05, old_every=None, sleep=0.0):
        self.url, self.prefix, self.batches, self.size, self.pause = url, prefix, batches, size, pause
        self.old_every, self.sleep = old_every, sleep
        self.tags, self.error = [], None
        self.thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.thread.join(60)

    def _run(self):
        conn = psycopg2.connect(self.url)
        try:
            for batch in range(self.batches):
                tags = [f"{self.prefix}-{batch}-{i}" for i in range(self.size)]
                old = self.old_every and batch % self.old_every == 0
                job = jobs_app.record.set(wait_until=an_hour_ago()) if old else jobs_app.record
                exekutor.enqueue_many([job.job(tag, sleep=self.sleep) for tag in tags], connection=conn)
                conn.commit()
                self.tags += tags
                time.sleep(self.pause)
        except Exception as error:  # noqa: BLE001 - reported by the test
            self.error = error
        finally:
            conn.close()


def assert_each_ran_once(db, tags):
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status <> 'c'") == 0
    runs = dict(query(db, "SELECT tag, count(*) FROM test_executions GROUP BY tag"))
    assert set(runs) == set(tags), (len(runs), len(tags))
    assert all(count == 1 for count in runs.values()), {tag: n for tag, n in runs.items() if n != 1}
    assert scalar(db, "SELECT max(attempts) FROM exekutor_jobs") == 1


@pytest.mark.timeout(120)
def test_killing_the_listener_connection_while_jobs_are_enqueued_loses_no_job(start_worker, fdb, database_url):
    """Each kill loses the notifications sent until the listener LISTENs again: of the jobs scheduled an hour ago
    (below every floor) committed meanwhile, and of a job whose transaction began before the worker's last walks,
    committed right after the kill. The reset at the reconnection finds them, not a poll (a minute away)."""
    start(start_worker, fdb, "floors-d", LONG_POLL, threads=10)
    kills = 0
    with Enqueuer(database_url, "d", batches=60, size=10, old_every=3) as enqueuer:
        while enqueuer.thread.is_alive() and kills < 4:
            held = psycopg2.connect(database_url)
            try:
                exekutor.enqueue_many([jobs_app.record.job(f"gap-{kills}")], connection=held)
                time.sleep(0.4)
                pid = listener_pid(fdb, "floors-d")
                if pid is None:
                    continue
                scalar(fdb, "SELECT pg_terminate_backend(%s)", (pid,))
                held.commit()  # before the listener is back (it reconnects after a backoff of 0.1 s at least)
            finally:
                held.close()
            kills += 1
            wait_for(lambda old=pid: listener_pid(fdb, "floors-d") not in (None, old), 20,
                     message="the listener to reconnect")
    assert enqueuer.error is None, enqueuer.error
    assert kills >= 2
    tags = enqueuer.tags + [f"gap-{i}" for i in range(kills)]
    wait_for(lambda: scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE status = 'c'") == len(tags), 30,
             message=f"all {len(tags)} jobs to run (well before the poll, a minute away)")
    assert_each_ran_once(fdb, tags)
    state = report(fdb, "after")
    assert state["resets"] >= kills + 1 and state["listening"], state  # one reset per (re)connection


# --- e. a worker killed with SIGKILL in the middle of reservations ---------------------------------------------


@pytest.mark.timeout(150)
def test_a_worker_killed_in_the_middle_of_reservations_loses_and_doubles_no_job(start_worker, fdb, database_url):
    doomed = start(start_worker, fdb, "floors-e1", LONG_POLL, threads=10, env=FAST)
    survivor = start(start_worker, fdb, "floors-e2", LONG_POLL, threads=10, env=FAST)
    with Enqueuer(database_url, "e", batches=80, size=15, pause=0.02, sleep=0.05) as enqueuer:
        wait_for(lambda: scalar(fdb, "SELECT count(*) FROM test_executions WHERE pid = %s", (doomed.pid,)) >= 100, 30,
                 message="the doomed worker to be busy")
        os.kill(doomed.pid, signal.SIGKILL)
        doomed.wait(10)
        killed = time.monotonic()
    assert enqueuer.error is None, enqueuer.error
    total = len(enqueuer.tags)
    # Its jobs are rescued after worker_timeout (4 s) by the survivor, whose rescue notifies: no poll needed.
    wait_for(lambda: scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE status = 'c'") == total, 40,
             message=f"all {total} jobs to complete")
    assert time.monotonic() - killed < 30
    rows = query(fdb, "SELECT payload->'args'->>0, attempts, releases FROM exekutor_jobs")
    assert len(rows) == total and all(attempts == 1 + releases for _, attempts, releases in rows), \
        [r for r in rows if r[1] != 1 + r[2]][:5]
    rescued = {tag for tag, _, releases in rows if releases}
    assert rescued, "the doomed worker ran nothing when it was killed: the test proved nothing"
    runs = query(fdb, "SELECT tag, pid FROM test_executions")
    by_tag = {}
    for tag, pid in runs:
        by_tag.setdefault(tag, []).append(pid)
    assert set(by_tag) == set(enqueuer.tags)
    for tag, pids in by_tag.items():
        # Each job's runs: one, or (rescued) a run by the dead worker and then one by the survivor.
        assert pids.count(survivor.pid) <= 1, (tag, pids)
        if len(pids) > 1:
            assert tag in rescued and sorted(pids) == sorted([doomed.pid, survivor.pid]), (tag, pids)
    assert all(survivor.pid in by_tag[tag] for tag in rescued)


# --- f. jobs made ready again with old scheduled times -------------------------------------------------------


@pytest.mark.timeout(120)
def test_a_failed_job_retried_at_an_old_time_starts_at_once(start_worker, fdb):
    start(start_worker, fdb, "floors-f1", LONG_POLL)
    failing = floors_app.fail_once.perform_later("retried")
    wait_for(lambda: job_row(fdb, failing.id)[0] == "f", 20, message="the job to fail")
    run_and_wait(fdb, 20, "newer")
    retried_at = db_now(fdb)
    assert operations.retry(fdb, [failing.id], at=an_hour_ago()).retried == [failing.id]
    wait_for(lambda: job_row(fdb, failing.id)[0] == "c", 20, message="the retried job to run")
    second = executions_of(fdb, "retried")[1][1]
    assert (second - retried_at).total_seconds() < PROMPTLY, (second, retried_at)


@pytest.mark.timeout(120)
def test_jobs_retried_at_once_among_concurrent_reservations_all_run_promptly(start_worker, fdb):
    start(start_worker, fdb, "floors-f2", LONG_POLL, threads=10)
    retried = exekutor.enqueue_many([floors_app.retry_now.job(f"retry-{i}") for i in range(20)])
    run_and_wait(fdb, 200, "around")
    wait_for(lambda: scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE status = 'c'") == 220, 20,
             message="every job, each retried one after its third run (well before the poll, a minute away)")
    for handle in retried:
        status, attempts, releases, _, _ = job_row(fdb, handle.id)
        assert (status, attempts, releases) == ("c", 3, 0)
    assert scalar(fdb, "SELECT count(*) FROM test_executions WHERE tag LIKE 'retry-%%'") == 60


def waiting_on_a_lock(db, fragment):
    """Whether a backend of this database waits for a lock in a statement containing `fragment`."""
    return scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                      "AND wait_event_type = 'Lock' AND query LIKE %s", (f"%{fragment}%",))


@pytest.mark.timeout(120)
def test_a_job_retried_at_the_time_of_a_completion_that_committed_after_a_walk_starts_at_once(start_worker, fdb,
                                                                                           database_url):
    """The completion statement that sends a failed job back (Retry wait 0: scheduled at its now()) commits after a
    reservation whose now() is later and whose snapshot did not see it: that reservation raised the floors past the
    retried job, and only the completion's notification can announce it."""
    start(start_worker, fdb, "floors-f2b", LONG_POLL)
    retried = floors_app.retry_now.perform_later("retry-late", failures=1, sleep=0.3)
    wait_for(lambda: executions_of(fdb, "retry-late"), 20, message="the first run")
    locker = psycopg2.connect(database_url)
    try:
        query(locker, "SELECT 1 FROM exekutor_jobs WHERE id = %s FOR UPDATE", (retried.id,))
        wait_for(lambda: waiting_on_a_lock(fdb, "requeued AS"), 20, message="the completion to wait for the row")
        newer = exekutor.enqueue_many([jobs_app.record.job(f"newer-{i}") for i in range(5)])
        wait_for(lambda: scalar(fdb, "SELECT count(*) FROM test_executions WHERE tag LIKE 'newer-%%'") == 5, 20,
                 message="newer jobs to run while the completion waits")
        locker.rollback()
        released = db_now(fdb)
    finally:
        locker.close()
    wait_for(lambda: len(executions_of(fdb, "retry-late")) == 2, 20,
             message="the retried run (a poll is a minute away)")
    second = executions_of(fdb, "retry-late")[1][1]
    assert (second - released).total_seconds() < PROMPTLY, (second, released)
    wait_for(lambda: job_row(fdb, retried.id)[0] == "c" and all(job_row(fdb, h.id)[0] == "c" for h in newer), 20,
             message="every job to complete")


@pytest.mark.timeout(120)
def test_a_job_released_by_its_workers_stop_starts_at_once_on_another(start_worker, fdb):
    no_wait = {"EXEKUTOR_WAIT_FOR_TERMINATION": "0"}
    stopping = start(start_worker, fdb, "floors-f3a", LONG_POLL, threads=1, env=no_wait)
    long_job = jobs_app.record.set(wait_until=an_hour_ago()).perform_later("released", sleep=60)
    wait_for(lambda: executions_of(fdb, "released"), 20, message="the long job to start")
    other = start(start_worker, fdb, "floors-f3b", LONG_POLL, threads=5, env=no_wait)
    run_and_wait(fdb, 30, "newer")  # the busy worker takes none of them: the other's floors rise
    assert scalar(fdb, "SELECT count(*) FROM test_executions WHERE pid = %s", (other.pid,)) == 30
    stopping.stop()  # wait_for_termination 0: the job is interrupted and released with the worker's row
    stopped = db_now(fdb)
    wait_for(lambda: len(executions_of(fdb, "released")) == 2, 20, message="the released job to start again")
    pid, started = executions_of(fdb, "released")[1]
    assert pid == other.pid
    assert (started - stopped).total_seconds() < PROMPTLY, (started, stopped)
    assert job_row(fdb, long_job.id)[2] == 1  # one release


@pytest.mark.timeout(120)
def test_jobs_a_pause_held_back_start_at_once_when_it_is_resumed(start_worker, fdb):
    start(start_worker, fdb, "floors-f4", LONG_POLL)
    exekutor.pause_queue("floors-paused")
    held = exekutor.enqueue_many([jobs_app.record.set(queue="floors-paused", wait_until=an_hour_ago()).job(f"p-{i}")
                                  for i in range(5)])
    ids = [h.id for h in held]
    wait_for(lambda: scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) "
                                 "AND blocked_on IS NOT NULL", (ids,)) == 5, 20, message="the pause to hold them back")
    run_and_wait(fdb, 20, "newer")
    resumed = db_now(fdb)
    assert exekutor.resume_queue("floors-paused")
    wait_for(lambda: scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) AND status = 'c'",
                            (ids,)) == 5, 20, message="the resumed jobs to run")
    started = scalar(fdb, "SELECT max(started_at) FROM exekutor_jobs WHERE id = ANY(%s::uuid[])", (ids,))
    assert (started - resumed).total_seconds() < PROMPTLY, (started, resumed)


@pytest.mark.timeout(120)
def test_limited_jobs_with_old_times_go_one_after_another_without_a_poll(start_worker, fdb):
    start(start_worker, fdb, "floors-f5", LONG_POLL)
    limited_job = jobs_app.record.set(concurrency=1, concurrency_key="floors-k", wait_until=an_hour_ago())
    limited = exekutor.enqueue_many([limited_job.job(f"k-{i}", sleep=0.2) for i in range(5)])
    run_and_wait(fdb, 20, "newer")
    ids = [h.id for h in limited]
    wait_for(lambda: scalar(fdb, "SELECT count(*) FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) AND status = 'c'",
                            (ids,)) == 5, 20, message="the limited jobs to run, one at a time")
    runs = query(fdb, "SELECT started_at, finished_at FROM test_executions WHERE tag LIKE 'k-%%' ORDER BY started_at")
    assert len(runs) == 5
    assert all(runs[i][1] <= runs[i + 1][0] for i in range(4)), runs  # one at a time


# --- h. a reservation in flight (held up by a limit's lock, as another reservation or a resume can) -------------


@pytest.fixture
def limit_lock(fdb, database_url):
    """lock(key): hold the lock of a concurrency limit's row (created if missing) until the returned connection's
    rollback; a reservation of a job with that limit waits for it in the middle of its statement."""
    conns = []

    def lock(key):
        query(fdb, "INSERT INTO exekutor_limits (key, max) VALUES (%s, 5) ON CONFLICT (key) DO NOTHING", (key,))
        conn = psycopg2.connect(database_url)
        conns.append(conn)
        query(conn, "SELECT 1 FROM exekutor_limits WHERE key = %s FOR UPDATE", (key,))
        return conn

    yield lock
    for conn in conns:
        conn.close()


@pytest.mark.timeout(120)
def test_a_job_announced_while_a_reservation_is_in_flight_starts_when_it_ends(start_worker, fdb, database_url,
                                                                              limit_lock):
    """The job commits after the walk's snapshot and its notification arrives before the walk's raise: the lowering
    must be applied again after the raise (ReservationFloors.begin/end)."""
    start(start_worker, fdb, "floors-h1", LONG_POLL)
    blocker = limit_lock("concurrency job tests.record:floors-h1")  # the job name, then its key
    held = psycopg2.connect(database_url)
    try:
        announced = exekutor.enqueue_many([jobs_app.record.job("announced")], connection=held)[0]
        limited = jobs_app.record.set(concurrency=5, concurrency_key="floors-h1").perform_later("limited")
        wait_for(lambda: waiting_on_a_lock(fdb, "candidates"), 20, message="the reservation to wait for the limit")
        held.commit()  # after the walk's snapshot, before its now() rises into the floors
        # The listener hands the notification over while the reservation waits (nothing to wait for: a moment).
        time.sleep(0.5)
        blocker.rollback()
        released = db_now(fdb)
    finally:
        held.close()
    for handle in (limited, announced):
        wait_for(lambda handle=handle: job_row(fdb, handle.id)[0] == "c", 20, message="both jobs to run")
    assert (job_row(fdb, announced.id)[3] - released).total_seconds() < PROMPTLY


@pytest.mark.parametrize("appearing", ["a queue limit", "a pause, then a resume"])
@pytest.mark.timeout(120)
def test_a_candidate_skipped_because_a_limit_appeared_meanwhile_is_not_stranded(start_worker, fdb, database_url,
                                                                                 limit_lock, appearing):
    from exekutor.queue_control import publish_queue_limits

    start(start_worker, fdb, "floors-h2", LONG_POLL)
    blocker = limit_lock("concurrency job tests.record:floors-h2")
    skipped = jobs_app.record.set(queue="floors-h2", concurrency=5, concurrency_key="floors-h2").perform_later("skip")
    wait_for(lambda: waiting_on_a_lock(fdb, "candidates"), 20, message="the reservation to wait for the limit")
    if appearing == "a queue limit":
        with fdb.cursor() as cursor:
            publish_queue_limits(cursor, {"floors-h2": {"concurrency": 10}})  # what a worker starting with it does
    else:
        exekutor.pause_queue("floors-h2")
    blocker.rollback()
    wait_for(lambda: not waiting_on_a_lock(fdb, "candidates"), 20, message="the reservation to end")
    run_and_wait(fdb, 5, "newer")
    if appearing != "a queue limit":
        assert job_row(fdb, skipped.id)[0] == "p"
        exekutor.resume_queue("floors-h2")
    ready = db_now(fdb)
    wait_for(lambda: job_row(fdb, skipped.id)[0] == "c", 8, message="the skipped job to run (a poll is a minute away)")
    assert (job_row(fdb, skipped.id)[3] - ready).total_seconds() < PROMPTLY


# --- g. forged notifications -----------------------------------------------------------------------------------


CHANNEL = "exekutor::job_enqueued"
FORGED_VALID = [
    {"q": "default", "p": 1, "P": 32767, "t": 0, "T": 0},  # 1970: the next walk starts from the index's start
    {"q": "default", "p": 1, "P": 32767, "t": -2.0e11, "T": 4.0e11},  # 4368 BC .. 14645 AD: still PostgreSQL times
    {"q": "default", "p": 1, "P": 32767, "t": 4.0e11, "T": 4.0e11},  # far future: a timer, lowers nothing
    {"q": "default", "p": 20000, "P": 30000, "t": 0, "T": 0},  # priorities the worker does not take
    {"q": "default", "p": 1, "P": 1, "t": time.time() - 86400},
    {"q": "default", "p": 7, "t": time.time() - 3600},  # schema 0001's form: no P, no T
    {"q": "not-a-queue-of-anyone", "p": 1, "P": 100, "t": 0, "T": 0},
]
FORGED_MALFORMED = [
    "not json", "", "null", "[]", "42", '"text"', '{"q": 1, "p": 1, "t": 0}', '{"q": "default"}',
    '{"q": "default", "p": 1.5, "t": 0}', '{"q": "default", "p": true, "t": 0}', '{"q": "default", "p": 0, "t": 0}',
    '{"q": "default", "p": 40000, "t": 0}', '{"q": "default", "p": 9, "P": 3, "t": 0}',
    '{"q": "default", "p": 1, "t": NaN}', '{"q": "default", "p": 1, "t": Infinity}',
    '{"q": "default", "p": 1, "t": -Infinity}', '{"q": "default", "p": 1, "t": 5, "T": 4}',
    '{"q": "default", "p": 1, "t": "0"}', '{"q": "default", "p": 1, "t": 1e999}', "[" * 3000 + "]" * 3000,
    # Finite, but outside what a PostgreSQL timestamp holds (4714 BC .. 294276 AD): no job's time.
    '{"q": "default", "p": 32767, "P": 32767, "t": 1e300, "T": 1e300}', '{"q": "default", "p": 1, "t": -1e12}',
]


def notify(db, payloads):
    with db.cursor() as cursor:
        for payload in payloads:
            cursor.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))


def assert_jobs_start_promptly(db, tag):
    """A job enqueued now and one scheduled an hour ago, enqueued in a transaction that began before a walk of
    the worker: both start at once."""
    conn = psycopg2.connect(db.dsn)
    try:
        held = exekutor.enqueue_many([jobs_app.record.set(wait_until=an_hour_ago(), priority=3).job(f"{tag}-held")],
                                     connection=conn)[0]
        fresh = jobs_app.record.set(priority=50).perform_later(f"{tag}-fresh")
        wait_for(lambda: job_row(db, fresh.id)[0] == "c", 20, message=f"{tag}: a job to run")
        conn.commit()
        committed = db_now(db)
    finally:
        conn.close()
    wait_for(lambda: job_row(db, held.id)[0] == "c", 20, message=f"{tag}: the held job to run")
    assert (job_row(db, held.id)[3] - committed).total_seconds() < PROMPTLY


@pytest.mark.timeout(120)
def test_forged_notifications_stop_nothing_and_strand_no_job(start_worker, fdb):
    start(start_worker, fdb, "floors-g", LONG_POLL, extra=("--priority", "1:16383"))
    assert_jobs_start_promptly(fdb, "before")
    for round_ in range(3):
        notify(fdb, [json.dumps(payload) for payload in FORGED_VALID] + FORGED_MALFORMED)
        assert_jobs_start_promptly(fdb, f"round-{round_}")
    state = report(fdb, "after")
    assert state["provider_errors"] == 0 and not state["errors"], state
    assert state["malformed"] == 3 * len(FORGED_MALFORMED), state
    assert state["listening"], state


@pytest.mark.timeout(120)
def test_a_forged_notification_before_4714_bc_does_not_fail_a_reservation(start_worker, fdb):
    start(start_worker, fdb, "floors-g2", LONG_POLL)
    run_and_wait(fdb, 10, "newer")  # the floors rise
    flood_until = time.monotonic() + 3
    handle = None
    while time.monotonic() < flood_until:
        notify(fdb, [json.dumps({"q": "default", "p": 1, "P": 32767, "t": -1e12, "T": 0})])
        if handle is None:
            handle = jobs_app.record.perform_later("during-the-flood")
        time.sleep(0.05)
    wait_for(lambda: job_row(fdb, handle.id)[0] == "c", 30, message="the job enqueued during the flood")
    delay = scalar(fdb, "SELECT extract(epoch FROM started_at - enqueued_at) FROM exekutor_jobs WHERE id = %s",
                   (handle.id,))
    state = report(fdb, "after")
    assert state["provider_errors"] == 0 and not state["errors"], (f"job started {delay:.2f}s after its enqueue",
                                                                   len(state["errors"]), state["errors"][:1])
    assert delay < PROMPTLY
