"""Flow control through a worker's SIGKILL and a PostgreSQL restart (issue 26, "Checked by").

Three workers run jobs limited per key (generated: 1 to 3 at once, and a rate limit on one key, job durations,
failures retried, the kill before or after the restart; CI runs one generated example and an explicit one), from
flow_app, on the suite's own cluster. flow_app's flow_slots trigger records every admission and every end of a run
on the database's clock, including the end of a dead worker's runs, which is their rescue (executing -> pending). So:

- kill -9: the limit is never exceeded counting the dead worker's runs until their rescue, its jobs run again
  after the rescue, and it holds no slot past it (the limits fill up again to exactly N);
- PostgreSQL restart (fast: every connection cut): no slot is lost (the limit is never exceeded after it) and none
  is created (each limit fills up again to exactly N after it);
- every job ends, one admission per attempt, no two runs of a job overlapping.
"""
import os

import psycopg2
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import exekutor
from tests import flow_app
from tests.reliability.conftest import WORKER_ENV
from tests.reliability.support import log, query, scalar, wait_drained, wait_for
from tests.test_flow_control import most_at_once, most_starts_in_window

pytestmark = pytest.mark.slow

WORKER_TIMEOUT = float(WORKER_ENV["EXEKUTOR_WORKER_TIMEOUT"])
BUSY_SECONDS = 20  # each key has jobs for this long at its limit's pace: through the kill's rescue and the restart
# CI: the explicit example and one generated (about 20 s each, a server restart included); another profile
# (HYPOTHESIS_PROFILE=long) a tenth of its examples.
EXAMPLES = 1 if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else max(2, settings.default.max_examples // 10)


@st.composite
def scenarios(draw):
    return {
        "limits": draw(st.dictionaries(st.sampled_from("ab"), st.integers(1, 3), min_size=1, max_size=2)),
        "rate": draw(st.none() | st.integers(3, 8)),  # starts per second of key a's jobs, if any
        "seconds": draw(st.sampled_from([0.2, 0.4, 0.8])),
        "fail_every": draw(st.sampled_from([0, 3, 7])),  # every Nth job fails its first run (retried)
        "kill_first": draw(st.booleans()),
    }


EXPLICIT = {"limits": {"a": 2, "b": 3}, "rate": 4, "seconds": 0.4, "fail_every": 7, "kill_first": True}


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


def _enqueue(url, scenario, prefix):
    conn = psycopg2.connect(url)
    try:
        requests = []
        for key, limit in scenario["limits"].items():
            for i in range(_jobs_of(scenario, key)):
                options = {"concurrency": limit, "concurrency_key": key}
                if key == "a" and scenario["rate"]:
                    options.update(rate_limit=f"{scenario['rate']}/s", rate_key="r")
                fails = scenario["fail_every"] and i % scenario["fail_every"] == 1
                requests.append(flow_app.prop.set(**options).job(f"{prefix}-{key}{i}", seconds=scenario["seconds"],
                                                                 failures=1 if fails else 0))
        exekutor.enqueue_many(requests, connection=conn)
        conn.commit()
    finally:
        conn.close()


def _jobs_of(scenario, key):
    pace = scenario["limits"][key] / scenario["seconds"]  # starts per second at the concurrency limit
    if key == "a" and scenario["rate"]:
        pace = min(pace, scenario["rate"])
    return int(pace * BUSY_SECONDS)


def _running(db, key):
    return scalar(db, "SELECT count(*) FROM flow_slots WHERE concurrency_key = %s AND ended_at IS NULL",
                  (f"flow.prop:{key}",))


def _most_since(db, key, since):
    """The most runs of `key` at once from `since` on (runs admitted earlier and still running then count)."""
    return scalar(db, """
        SELECT coalesce(max(n), 0) FROM (
            SELECT sum(d) OVER (ORDER BY t, d) AS n FROM (
                SELECT greatest(admitted_at, %(s)s) AS t, 1 AS d FROM flow_slots
                WHERE concurrency_key = %(k)s AND coalesce(ended_at, 'infinity') > %(s)s
                UNION ALL SELECT coalesce(ended_at, 'infinity'), -1 FROM flow_slots
                WHERE concurrency_key = %(k)s AND coalesce(ended_at, 'infinity') > %(s)s) AS e) AS s
    """, {"k": f"flow.prop:{key}", "s": since})


def _fill_up(db, scenario, since, after):
    """Every limit fills up to exactly N again from `since` on: no slot lost (or still held by a dead worker)."""
    for key, limit in scenario["limits"].items():
        wait_for(lambda key=key, limit=limit: _most_since(db, key, since) == limit, 60,
                 f"key {key} to fill its {limit} slots again after {after}")


def _kill(rel, scenario, workers):
    """kill -9 a worker that runs limited jobs (whichever does: with a limit of 1, one worker may get every run)."""
    ids = {worker.worker_id(rel.db): worker for worker in workers}

    def running():
        return query(rel.db, "SELECT worker_id::text FROM exekutor_jobs WHERE status = 'e' AND worker_id = "
                             "ANY(%s::uuid[]) LIMIT 1", (list(ids),))

    victim_id = wait_for(running, 60, "a worker to run limited jobs", interval=0.02)[0][0]
    victim = ids[victim_id]

    def victim_runs():
        return query(rel.db, "SELECT id::text, attempts FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s",
                     (victim_id,))

    rel.kill(victim)
    orphans = victim_runs()  # what it held when it died (it may have finished one in between)
    killed_at = scalar(rel.db, "SELECT now()")
    log(f"SIGKILLed worker pid {victim.pid} running {len(orphans)} limited job(s)")
    assert orphans, "the victim ran no limited job when it died: the scenario proves nothing"
    wait_for(lambda: not query(rel.db, "SELECT 1 FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s",
                               (victim_id,)), WORKER_TIMEOUT + 30, "the orphans to be rescued")
    ids, attempts = [o[0] for o in orphans], [o[1] for o in orphans]
    rescued_at = scalar(rel.db, "SELECT max(ended_at) FROM flow_slots WHERE (job_id::text, attempt) IN "
                                "(SELECT * FROM unnest(%s::text[], %s::int[]))", (ids, attempts))
    log(f"orphans rescued {(rescued_at - killed_at).total_seconds():.1f}s after the kill")
    # Its jobs run again (unless they were the last ones), and its slots are free.
    wait_for(lambda: scalar(rel.db, "SELECT count(DISTINCT job_id) FROM flow_slots WHERE job_id = ANY(%s::uuid[]) "
                                    "AND admitted_at >= %s", (ids, rescued_at)) == len(ids), 90,
             "the killed worker's jobs to run again")
    return rescued_at


def _restart(rel):
    wait_for(lambda: scalar(rel.db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e'"), 30,
             "limited jobs to be running")
    rel.cluster.restart()
    rel.reconnect()
    log("PostgreSQL restarted")
    return scalar(rel.db, "SELECT now()")


def _check_limits(db, scenario):
    for key, limit in scenario["limits"].items():
        most = most_at_once(db, "concurrency_key", f"flow.prop:{key}")
        assert most <= limit, f"key {key}: {most} runs at once (dead worker's included until rescued), limit {limit}"
    if scenario["rate"] and "a" in scenario["limits"]:
        most = most_starts_in_window(db, "rate_key", "flow.prop:r", 1.0)
        assert most <= scenario["rate"], f"rate key r: {most} starts in one second, limit {scenario['rate']}/s"


def _check_every_job_ends_once(db, scenario):
    jobs = query(db, "SELECT id::text, status, attempts FROM exekutor_jobs")
    assert len(jobs) == sum(_jobs_of(scenario, key) for key in scenario["limits"])
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


def _empty(rel):
    with rel.db.cursor() as cursor:
        cursor.execute("TRUNCATE exekutor_jobs, exekutor_workers, exekutor_job_errors, exekutor_queues, "
                       "exekutor_limits, flow_slots, flow_runs")


@pytest.mark.timeout(120 + 90 * EXAMPLES)
def test_property_limits_hold_through_a_worker_kill_and_a_postgres_restart(flow):
    rel = flow
    counter = iter(range(10**9))

    @settings(max_examples=EXAMPLES)
    @given(scenario=scenarios())
    @example(scenario=EXPLICIT)
    def check(scenario):
        log(f"flow crash scenario: {scenario}")
        _empty(rel)
        workers = [rel.start_worker(threads=5, apps=("tests.flow_app",)) for _ in range(3)]
        try:
            _enqueue(rel.url, scenario, f"crash{next(counter)}")
            events = [("the rescue", lambda: _kill(rel, scenario, workers)), ("the restart", lambda: _restart(rel))]
            for after, event in events if scenario["kill_first"] else reversed(events):
                since = event()
                _fill_up(rel.db, scenario, since, after)  # rel.db after the event: a restart replaces it
            wait_drained(rel.db, 120)
            _check_limits(rel.db, scenario)
            _check_every_job_ends_once(rel.db, scenario)
            survivors = [worker for worker in workers if worker.pid not in rel.killed_pids]
            assert len(survivors) == 2 and all(worker.proc.poll() is None for worker in survivors), rel.logs()
            log("flow crash: " + ", ".join(f"{status}={count}" for status, count in query(
                rel.db, "SELECT status, count(*) FROM exekutor_jobs GROUP BY status ORDER BY status")))
        finally:
            for worker in workers:
                worker.stop()

    check()
