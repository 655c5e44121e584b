"""Flow control through a worker's SIGKILL and a PostgreSQL restart (issue 26, "Checked by").

Three workers run jobs limited per key (2 and 3 at once) with a rate limit on one key, from flow_app, on the
suite's own cluster. flow_app's flow_slots trigger records every admission and every end of a run on the
database's clock, including the end of a dead worker's runs, which is their rescue (executing -> pending). So:

- kill -9: the limit is never exceeded counting the dead worker's runs until their rescue, its jobs run again
  after the rescue, and it holds no slot past it (the limits fill up again to exactly N);
- PostgreSQL restart (fast: every connection cut): no slot is lost (the limit is never exceeded after it) and none
  is created (each limit fills up again to exactly N after it);
- every job ends, one admission per attempt, no two runs of a job overlapping.
"""
import psycopg2
import pytest

import exekutor
from tests import flow_app
from tests.reliability.conftest import WORKER_ENV
from tests.reliability.support import log, query, scalar, wait_drained, wait_for
from tests.test_flow_control import most_at_once, most_starts_in_window

pytestmark = pytest.mark.slow

LIMITS = {"a": 2, "b": 3}
RATE = ("r", 4)  # key a's jobs also have a rate limit of 4 starts per second (across keys: one rate key)
JOBS_PER_KEY = 40
SECONDS = 0.4
WORKER_TIMEOUT = float(WORKER_ENV["EXEKUTOR_WORKER_TIMEOUT"])


@pytest.fixture
def flow(rel):
    """The flow tables and trigger, created as the app (the trigger runs as the workers' user), and the tables flow
    control writes emptied (the harness empties the others)."""
    for sql in (flow_app.RUNS_DDL + "TRUNCATE exekutor_queues, exekutor_limits, flow_slots, flow_runs", None,
                flow_app.RUNS_TEARDOWN):
        if sql is None:
            yield rel  # a fresh connection afterwards: the scenario restarts the server
            continue
        conn = psycopg2.connect(rel.url)
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(sql)
        conn.close()


def _enqueue(url, prefix):
    conn = psycopg2.connect(url)
    try:
        requests = []
        for i in range(JOBS_PER_KEY):
            for key, limit in LIMITS.items():
                options = {"concurrency": limit, "concurrency_key": key}
                if key == "a":
                    options.update(rate_limit=f"{RATE[1]}/s", rate_key=RATE[0])
                requests.append(flow_app.prop.set(**options).job(f"{prefix}-{key}{i}", seconds=SECONDS,
                                                                 failures=1 if i % 7 == 3 else 0))
        exekutor.enqueue_many(requests, connection=conn)
        conn.commit()
    finally:
        conn.close()


def _running(db, key):
    return scalar(db, "SELECT count(*) FROM flow_slots WHERE concurrency_key = %s AND ended_at IS NULL",
                  (f"flow.prop:{key}",))


def _most_since(db, key, since):
    """The most runs of `key` at once among those admitted after `since` (and those still running then)."""
    return scalar(db, """
        SELECT coalesce(max(n), 0) FROM (
            SELECT sum(d) OVER (ORDER BY t, d) AS n FROM (
                SELECT greatest(admitted_at, %(s)s) AS t, 1 AS d FROM flow_slots
                WHERE concurrency_key = %(k)s AND coalesce(ended_at, 'infinity') > %(s)s
                UNION ALL SELECT coalesce(ended_at, 'infinity'), -1 FROM flow_slots
                WHERE concurrency_key = %(k)s AND coalesce(ended_at, 'infinity') > %(s)s) AS e) AS s
    """, {"k": f"flow.prop:{key}", "s": since})


def _check_limits(db):
    for key, limit in LIMITS.items():
        most = most_at_once(db, "concurrency_key", f"flow.prop:{key}")
        assert most <= limit, f"key {key}: {most} runs at once (dead worker's included until rescued), limit {limit}"
    most = most_starts_in_window(db, "rate_key", f"flow.prop:{RATE[0]}", 1.0)
    assert most <= RATE[1], f"rate key {RATE[0]}: {most} starts in one second, limit {RATE[1]}/s"


def _check_every_job_ends_once(db):
    jobs = query(db, "SELECT id::text, status, attempts FROM exekutor_jobs")
    assert len(jobs) == JOBS_PER_KEY * len(LIMITS)
    assert {status for _, status, _ in jobs} <= {"c", "f", "d"}, jobs
    slots = query(db, "SELECT job_id::text, attempt, admitted_at, ended_at FROM flow_slots ORDER BY job_id, attempt")
    assert all(ended is not None for _, _, _, ended in slots), "a run never ended"
    by_job = {}
    for job_id, attempt, admitted, ended in slots:
        by_job.setdefault(job_id, []).append((attempt, admitted, ended))
    for job_id, _, attempts in jobs:
        runs = by_job.get(job_id, [])
        assert [attempt for attempt, _, _ in runs] == list(range(1, attempts + 1)), (job_id, runs, attempts)
        for (_, _, ended), (_, admitted, _) in zip(runs, runs[1:]):
            assert ended <= admitted, (job_id, runs)


@pytest.mark.timeout(300)
def test_limits_hold_through_a_worker_kill_and_a_postgres_restart(flow):
    rel = flow
    workers = [rel.start_worker(threads=5, apps=("tests.flow_app",)) for _ in range(3)]
    victim = workers[1]
    victim_id = victim.worker_id(rel.db)
    _enqueue(rel.url, "crash")

    # kill -9 while the victim runs limited jobs.
    def victim_runs():
        return query(rel.db, "SELECT id::text, attempts FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s",
                     (victim_id,))

    orphans = wait_for(victim_runs, 60, "the victim to run limited jobs", interval=0.02)
    rel.kill(victim)
    orphans = victim_runs()  # what it held when it died (it may have finished one in between)
    killed_at = scalar(rel.db, "SELECT now()")
    log(f"SIGKILLed worker pid {victim.pid} running {len(orphans)} limited job(s)")
    assert orphans, "the victim ran no limited job when it died: the scenario proves nothing"
    wait_for(lambda: not query(rel.db, "SELECT 1 FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s",
                               (victim_id,)), WORKER_TIMEOUT + 30, "the orphans to be rescued")
    rescued_at = scalar(rel.db, "SELECT max(ended_at) FROM flow_slots WHERE (job_id::text, attempt) IN "
                                "(SELECT * FROM unnest(%s::text[], %s::int[]))",
                        ([o[0] for o in orphans], [o[1] for o in orphans]))
    log(f"orphans rescued {(rescued_at - killed_at).total_seconds():.1f}s after the kill")
    # Its jobs run again afterwards, and its slots are free: every limit fills up again to exactly N.
    wait_for(lambda: scalar(rel.db, "SELECT count(*) FROM flow_slots WHERE job_id = ANY(%s::uuid[]) AND "
                                    "attempt > 1 AND admitted_at >= %s", ([o[0] for o in orphans], rescued_at))
             >= len(orphans), 60, "the killed worker's jobs to run again")
    for key, limit in LIMITS.items():
        wait_for(lambda key=key, limit=limit: _running(rel.db, key) == limit, 30,
                 f"key {key} to fill its {limit} slots after the rescue")

    # PostgreSQL restart while limited jobs run.
    wait_for(lambda: all(_running(rel.db, key) for key in LIMITS), 30, "limited jobs to be running")
    rel.cluster.restart()
    rel.reconnect()
    restarted_at = scalar(rel.db, "SELECT now()")
    log("PostgreSQL restarted")
    for key, limit in LIMITS.items():
        wait_for(lambda key=key, limit=limit: _most_since(rel.db, key, restarted_at) == limit, 60,
                 f"key {key} to fill its {limit} slots again after the restart")

    wait_drained(rel.db, 120)
    _check_limits(rel.db)
    _check_every_job_ends_once(rel.db)
    for worker in (workers[0], workers[2]):
        assert worker.proc.poll() is None, rel.logs()
    log("flow crash: " + ", ".join(f"{status}={count}" for status, count in query(
        rel.db, "SELECT status, count(*) FROM exekutor_jobs GROUP BY status ORDER BY status")))
