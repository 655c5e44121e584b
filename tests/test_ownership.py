"""Ownership and time: no job runs twice while its worker lives, no job waits for a poll it should not.

Real worker processes against a real PostgreSQL; a worker's clock is moved with libfaketime (Debian's faketime,
which .ci/run installs) for that process alone, running the real worker code.
"""
import glob
import json
import signal
import time

import psycopg2
import pytest

import exekutor
from tests import hostile_jobs, jobs_app
from tests.conftest import query, scalar, wait_for
from tests.health_support import free_port, get, metric, metric_values
from tests.tcpproxy import TCPProxy

APPS = ("tests.hostile_jobs", "tests.jobs_app")
FAST = {"EXEKUTOR_HEARTBEAT_INTERVAL": "1", "EXEKUTOR_WORKER_TIMEOUT": "4"}
FAKETIME_LIBS = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")


def worker_row(db, pid):
    rows = query(db, "SELECT id::text FROM exekutor_workers WHERE pid = %s", (pid,))
    return rows[0][0] if rows else None


def status_of(db, handle):
    return scalar(db, "SELECT status FROM exekutor_jobs WHERE id = %s", (handle.id,))


def start_delay(db, handle):
    """Seconds from the time a job was due to its start, both by the database's clock."""
    return scalar(db, "SELECT extract(epoch FROM started_at - scheduled_at) FROM exekutor_jobs WHERE id = %s",
                  (handle.id,))


def overlapping_runs(db):
    """Pairs of executions of one job whose runs overlapped in time (each recorded a start and an end)."""
    return query(db, """
        SELECT a.tag, a.pid, b.pid FROM test_executions a JOIN test_executions b
          ON a.tag = b.tag AND a.ctid < b.ctid
         AND a.started_at < coalesce(b.finished_at, 'infinity') AND b.started_at < coalesce(a.finished_at, 'infinity')
        WHERE a.finished_at IS NOT NULL AND b.finished_at IS NOT NULL""")


# --- a worker presumed dead ---------------------------------------------------------------------------------

@pytest.mark.slow
@pytest.mark.timeout(180)
def test_a_worker_whose_loop_blocked_past_worker_timeout_is_not_presumed_dead_and_runs_each_job_once(start_worker,
                                                                                                      executions):
    port = free_port()
    blocked = start_worker("--threads", "5", "--poll-interval", "1", "--healthcheck-port", port, "--queue", "default",
                           "--queue", "blocking", env=FAST, apps=APPS)
    handles = exekutor.enqueue_many([jobs_app.record.job(f"long-{i}", sleep=10) for i in range(3)])
    wait_for(lambda: scalar(executions, "SELECT count(*) FROM test_executions") == 3, 20, message="the jobs to start")
    survivor = start_worker("--threads", "5", "--poll-interval", "1", "--queue", "default", env=FAST, apps=APPS)
    time.sleep(4.5)  # the survivor beats steadily for worker_timeout: from now on it may take others for dead
    # Blocks `blocked`'s event loop for twice worker_timeout. The heartbeat beats on from its own thread, so the
    # survivor does not presume it dead (it used to, and its jobs ran twice).
    blocker = hostile_jobs.block_once.set(queue="blocking").perform_later("block", 8)
    for handle in handles + [blocker]:
        wait_for(lambda handle=handle: status_of(executions, handle) == "c", 60, message="every job to complete")
    assert scalar(executions, "SELECT count(*) FROM exekutor_jobs WHERE status <> 'c'") == 0
    # No job ran twice at the same time, and each ran to its end exactly once.
    assert overlapping_runs(executions) == [], (query(executions, "SELECT * FROM test_executions ORDER BY tag"),
                                                blocked.output()[-5000:])
    finished = dict(query(executions, "SELECT tag, count(*) FROM test_executions WHERE finished_at IS NOT NULL "
                                      "GROUP BY tag"))
    assert finished == {f"long-{i}": 1 for i in range(3)}, (finished, blocked.output()[-4000:])
    started = dict(query(executions, "SELECT tag, count(*) FROM test_executions GROUP BY tag"))
    assert started == {f"long-{i}": 1 for i in range(3)}, started  # none was stopped and run again
    # The blocked worker named the job that blocked it, was never presumed dead and leaks no greenlet slot.
    wait_for(lambda: f"job {blocker.id} (hostile.block_once) blocked the event loop for " in blocked.output(), 10,
             message="the blocked worker to name the blocking job")
    output = blocked.output()
    assert "presumed it dead" not in output and "no heartbeat went through" not in output, output[-3000:]
    threads = wait_for(lambda: (lambda t: t["available"] == t["maximum"] and t)(
        json.loads(get(port, "/threads").body)), 30, message="every greenlet slot to be free again")
    assert threads["maximum"] == 5
    values = metric_values(port)
    assert metric(values, "exekutor_ownership_lost_total") + metric(values, "exekutor_worker_presumed_dead_total") == 0
    assert metric(values, "exekutor_event_loop_blocks_total", job="hostile.block_once") == 1
    # It still runs jobs, and stops promptly (the liveness thread ends with it).
    handle = jobs_app.noop.perform_later()
    wait_for(lambda: status_of(executions, handle) == "c", 30, message="a new job to complete")
    started = time.monotonic()
    blocked.signal(signal.SIGTERM)
    assert blocked.wait(30) == 0
    assert time.monotonic() - started < 10
    assert worker_row(executions, blocked.pid) is None
    survivor.stop()


@pytest.mark.timeout(90)
def test_a_stopping_worker_keeps_beating_so_its_running_job_is_not_taken_for_an_orphan(start_worker, executions):
    stopping = start_worker("--threads", "2", "--poll-interval", "1",
                            env=dict(FAST, EXEKUTOR_WAIT_FOR_TERMINATION="60"), apps=APPS)
    handle = jobs_app.record.perform_later("long", sleep=8)
    wait_for(lambda: scalar(executions, "SELECT count(*) FROM test_executions") == 1, 20, message="the job to start")
    other = start_worker("--threads", "2", "--poll-interval", "1", env=FAST, apps=APPS)
    time.sleep(1)
    stopping.signal(signal.SIGTERM)  # waits for its job, 8 s: twice worker_timeout
    assert stopping.wait(40) == 0, stopping.output()[-3000:]
    assert status_of(executions, handle) == "c"
    assert query(executions, "SELECT pid FROM test_executions") == [(stopping.pid,)]
    assert "dead worker" not in other.output()


@pytest.mark.timeout(120)
def test_a_shared_outage_longer_than_worker_timeout_makes_no_live_worker_look_dead(start_worker, executions,
                                                                                     database_url):
    with TCPProxy.for_url(database_url) as proxy:
        url = proxy.url(database_url)
        workers = [start_worker("--threads", "2", "--poll-interval", "1", "--database-url", url, env=FAST, apps=APPS)
                   for _ in range(3)]
        ids = {worker.pid: worker_row(executions, worker.pid) for worker in workers}
        time.sleep(5)  # every worker beats steadily for worker_timeout
        proxy.down()
        time.sleep(8)  # twice worker_timeout
        proxy.up()
        handle = jobs_app.noop.perform_later()
        wait_for(lambda: status_of(executions, handle) == "c", 60, message="a job to run after the outage")
        time.sleep(6)  # long enough for a worker to take the others for dead
        for worker in workers:
            assert worker_row(executions, worker.pid) == ids[worker.pid]
            assert "dead worker" not in worker.output() and "presumed it dead" not in worker.output()
        for worker in workers:
            worker.stop()


@pytest.mark.timeout(150)
def test_a_worker_cut_off_from_the_database_stops_its_jobs_before_others_could_take_them(start_worker, executions,
                                                                                          database_url):
    with TCPProxy.for_url(database_url) as proxy:
        worker = start_worker("--threads", "2", "--poll-interval", "1", "--database-url", proxy.url(database_url),
                              env=FAST, apps=APPS)
        handle = hostile_jobs.long.perform_later("cut", 15)
        wait_for(lambda: scalar(executions, "SELECT count(*) FROM test_executions") == 1, 20,
                 message="the job to start")
        proxy.down()
        # Within worker_timeout (4 s) of its last heartbeat, before any other worker could take it for dead.
        wait_for(lambda: "no heartbeat went through" in worker.output(), 10, message="the worker to stop its job")
        time.sleep(4)
        proxy.up()
        wait_for(lambda: status_of(executions, handle) == "c", 90,
                 message=f"the job to run again and complete\n{worker.output()[-3000:]}")
        runs = query(executions, "SELECT finished_at FROM test_executions WHERE tag = 'cut' ORDER BY started_at")
        assert len(runs) == 2 and runs[0][0] is None and runs[1][0] is not None, runs  # the first never went on
        worker.stop()


def test_the_rescue_releases_only_ownerless_jobs_started_more_than_worker_timeout_ago(db):
    from exekutor.worker.heartbeat import rescue_orphans

    ghost = "00000000-0000-0000-0000-000000000001"
    query(db, "INSERT INTO exekutor_jobs (payload, status, worker_id, attempts, started_at) VALUES "
              "('{\"job\": \"tests.noop\"}', 'e', %s, 1, now()), "
              "('{\"job\": \"tests.noop\"}', 'e', %s, 1, now() - interval '10 seconds')", (ghost, ghost))
    with db.cursor() as cursor:
        assert rescue_orphans(cursor, "00000000-0000-0000-0000-000000000002", 5, 3)[:2] == (0, 1)
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e'") == 1


# --- reservations that never reached the worker -----------------------------------------------------------

@pytest.mark.timeout(120)
def test_a_reservation_cut_off_by_statement_timeout_behind_a_table_lock_keeps_no_job(start_worker, executions,
                                                                                      database_url):
    env = dict(FAST, EXEKUTOR_STATEMENT_TIMEOUT="2", EXEKUTOR_WORKER_TIMEOUT="30")
    worker = start_worker("--threads", "5", "--poll-interval", "60", env=env, apps=APPS)
    worker_id = worker.worker_id(executions)
    handles = exekutor.enqueue_many([jobs_app.record.set(wait=3).job(f"locked-{i}") for i in range(5)])
    locker = psycopg2.connect(database_url)
    try:
        time.sleep(1)
        query(locker, "LOCK TABLE exekutor_jobs IN ACCESS EXCLUSIVE MODE")  # as VACUUM FULL or ALTER TABLE would
        time.sleep(8)  # the timer's reservation waits for the lock, is cut off after 2 s, and retried
        # Each abandoned reservation was cancelled on the server: only the latest one still waits.
        waiting = scalar(executions, "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                                     "AND query LIKE '%%UPDATE exekutor_jobs SET status = ''e''%%'")
        assert waiting <= 1, waiting
    finally:
        locker.close()
    for handle in handles:
        wait_for(lambda handle=handle: status_of(executions, handle) == "c", 30,
                 message=f"every job to run (owned by the worker but never received?)\n{worker.output()[-3000:]}")
    assert scalar(executions, "SELECT count(*) FROM test_executions") == 5
    assert worker.worker_id(executions) == worker_id


@pytest.mark.timeout(60)
def test_a_job_owned_in_the_database_but_not_running_in_its_worker_is_released(start_worker, executions):
    worker = start_worker("--threads", "2", "--poll-interval", "60", env=FAST, apps=APPS)
    worker_id = worker.worker_id(executions)
    # As a reservation that committed but whose reply was lost: owned by the worker, never received by it.
    lost = query(executions, "INSERT INTO exekutor_jobs (payload, status, worker_id, attempts, started_at) VALUES "
                             "('{\"job\": \"tests.record\", \"args\": [\"lost\"], \"kwargs\": {}}', 'e', %s, 1, now()) "
                             "RETURNING id::text", (worker_id,))[0][0]
    wait_for(lambda: scalar(executions, "SELECT status FROM exekutor_jobs WHERE id = %s", (lost,)) == "c", 30,
             message=f"the stray job to be released and run\n{worker.output()[-3000:]}")
    assert scalar(executions, "SELECT attempts FROM exekutor_jobs WHERE id = %s", (lost,)) == 2
    assert "not running" in worker.output()


# --- timers ---------------------------------------------------------------------------------------------------

def faketime_env(offset):
    if not FAKETIME_LIBS:
        pytest.skip("libfaketime is not installed (Debian's faketime package)")
    return {"LD_PRELOAD": FAKETIME_LIBS[0], "FAKETIME": offset, "FAKETIME_DONT_FAKE_MONOTONIC": "1"}


@pytest.mark.timeout(90)
@pytest.mark.parametrize("offset", [None, "+0.3s", "-0.3s", "+5s", "-5s"])
def test_scheduled_jobs_and_retries_start_on_time_whatever_the_worker_clock(start_worker, executions, offset):
    env = faketime_env(offset) if offset else {}
    worker = start_worker("--threads", "5", env=env, apps=APPS)  # the default 60 s poll
    assert abs(float(scalar(executions, "SELECT extract(epoch FROM now())")) - time.time()) < 1
    # Separate statements, so separate notifications; and one statement with a due job and a later one.
    later = [jobs_app.noop.set(wait=wait).perform_later() for wait in (2, 3)]
    now_and_later = exekutor.enqueue_many([jobs_app.noop.job(), jobs_app.noop.set(wait=2.5).job()])
    retried = hostile_jobs.fail.perform_later({"tag": "retry", "kind": "value_error", "delay": 1.5})
    for handle in later + now_and_later:
        wait_for(lambda handle=handle: status_of(executions, handle) == "c", 20, message="the jobs to run")
    wait_for(lambda: scalar(executions, "SELECT count(*) FROM exekutor_job_errors WHERE job_id = %s",
                            (retried.id,)) >= 2, 20, message="the retry to run")
    delays = [start_delay(executions, handle) for handle in later + now_and_later]
    assert max(delays) < 0.5, (offset, delays, worker.output()[-2000:])
    first, second = [row[0] for row in query(executions, "SELECT created_at FROM exekutor_job_errors "
                                                         "WHERE job_id = %s ORDER BY attempt LIMIT 2", (retried.id,))]
    assert 1.45 <= (second - first).total_seconds() < 2.0, (first, second)


@pytest.mark.timeout(60)
def test_a_worker_runs_jobs_of_its_priority_range_enqueued_with_better_ones(start_worker, executions):
    start_worker("--threads", "5", "--priority", "50:100", apps=APPS)  # the default 60 s poll
    time.sleep(1)
    urgent, mine = exekutor.enqueue_many([jobs_app.noop.set(priority=1).job(), jobs_app.noop.set(priority=60).job()])
    wait_for(lambda: status_of(executions, mine) == "c", 5, message="the priority-60 job to start (not at the poll)")
    assert status_of(executions, urgent) == "p"


# --- notifications are untrusted input ------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_crafted_notifications_are_ignored_and_counted_and_the_listener_goes_on(start_worker, executions):
    port = free_port()
    worker = start_worker("--threads", "2", "--healthcheck-port", port, apps=APPS)
    wait_for(lambda: scalar(executions, "SELECT count(*) FROM pg_stat_activity WHERE query LIKE 'LISTEN%%'"), 10,
             message="the listener")
    crafted = ['{"p":1e400}', '{"q":"default","p":1e400,"t":1}', '{"q":"default","p":1,"t":NaN}',
               '{"q":"default","p":1,"t":1e400}', '{"q":"default","p":true,"t":1}', '[1,2]', 'not json',
               '{"q":"default","p":1,"t":"soon"}', '[' * 3900 + ']' * 3900, '{"q":"default","p":0,"t":1}']
    for payload in crafted:
        query(executions, "SELECT pg_notify('exekutor::job_enqueued', %s)", (payload,))
    wait_for(lambda: metric(metric_values(port), "exekutor_notifications_malformed_total") == len(crafted), 10,
             message="every crafted notification to be counted")
    handle = jobs_app.noop.perform_later()
    wait_for(lambda: status_of(executions, handle) == "c", 2, message="a new job to start through the listener")
    assert "listener error" not in worker.output()
