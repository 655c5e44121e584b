"""Scenario 2, database outage: the server restarts in the middle of a load, and a pg_terminate_backend storm
hits every connection of the workers (and of the jobs and the load generator) for ten seconds.

Workers must recover by themselves (same processes, no restart), and their throughput after recovery must be
at least 90 % of what it was before. worker_timeout is longer than the outage here: a database outage longer
than worker_timeout makes live workers look dead to each other (see docs/reliability.md).
"""
import time

import pytest

from tests.reliability.support import (
    Load,
    log,
    measure,
    reconcile,
    scalar,
    wait_drained,
    wait_for,
    worker_executed_since,
)

pytestmark = pytest.mark.slow

ENV = {"EXEKUTOR_WORKER_TIMEOUT": "30", "EXEKUTOR_HEARTBEAT_INTERVAL": "2"}
JOB_SECONDS = 0.1
THREADS = 10
WINDOW = 6.0
OUTAGE = 3.0
STORM = 10.0


def _wait_recovered(rel, workers, since, timeout=40):
    """Wait until every worker ran a job that started after `since`; returns the seconds it took each."""
    took = {}

    def recovered():
        for worker in workers:
            assert worker.proc.poll() is None, f"worker {worker.pid} exited:\n{worker.output()[-3000:]}"
            if worker.pid not in took and worker_executed_since(rel.db, worker.pid, since):
                took[worker.pid] = time.time() - since
        return len(took) == len(workers)

    wait_for(recovered, timeout, "every worker to run jobs again", interval=0.2)
    return took


@pytest.mark.timeout(240)
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_server_restart_mid_load(rel, pg_cluster, mode):
    """`fast`: a clean restart (sessions terminated, checkpoint); `immediate`: a crash (no shutdown at all,
    crash recovery from the WAL at start)."""
    workers = [rel.start_worker(threads=THREADS, env=ENV) for _ in range(2)]
    load = Load(rel.url, backlog=300, prefix="restart", sleep=JOB_SECONDS).start()
    try:
        _wait_recovered(rel, workers, time.time())
        before = measure(rel.db, WINDOW, "before the restart")

        log(f"stopping PostgreSQL ({mode}) for {OUTAGE:g}s")
        pg_cluster.stop(mode)
        time.sleep(OUTAGE)  # the outage itself
        pg_cluster.start()
        up = time.time()
        rel.reconnect()
        took = _wait_recovered(rel, workers, up)
        log("recovered after the server came back: " + ", ".join(f"pid {pid} in {s:.1f}s" for pid, s in took.items()))
        time.sleep(1)
        after = measure(rel.db, WINDOW, "after recovery")
        running = scalar(rel.db, "SELECT count(*) FROM exekutor_workers WHERE status = 'r' "
                                 "AND last_heartbeat_at > now() - interval '10 seconds'")
        assert running == 2, f"{running} worker row(s) running with a fresh heartbeat, expected 2"
    finally:
        load.stop()
    wait_drained(rel.db, 90)
    result = reconcile(rel.db, f"database restart ({mode})", load=load)
    log(f"load generator errors={load.errors} throughput before={before:.1f}/s after={after:.1f}/s "
        f"({100 * after / before:.0f}%) recovery={max(took.values()):.1f}s")
    result.check(failed=0, discarded=0)
    assert after >= 0.9 * before, f"throughput after recovery {after:.1f}/s < 90% of {before:.1f}/s\n" + result.report()


@pytest.mark.timeout(240)
def test_terminate_backend_storm(rel):
    workers = [rel.start_worker(threads=THREADS, env=ENV) for _ in range(2)]
    load = Load(rel.url, backlog=300, prefix="storm", sleep=JOB_SECONDS).start()
    terminated = 0
    try:
        _wait_recovered(rel, workers, time.time())
        before = measure(rel.db, WINDOW, "before the storm")

        log(f"terminating every connection of user app for {STORM:g}s")
        end = time.monotonic() + STORM
        while time.monotonic() < end:
            terminated += rel.terminate("usename = 'app'")
            time.sleep(0.1)
        calm = time.time()
        log(f"storm over: {terminated} backend(s) terminated")
        took = _wait_recovered(rel, workers, calm)
        log("recovered after the storm: " + ", ".join(f"pid {pid} in {s:.1f}s" for pid, s in took.items()))
        time.sleep(1)
        after = measure(rel.db, WINDOW, "after the storm")
    finally:
        load.stop()
    wait_drained(rel.db, 90)
    result = reconcile(rel.db, "pg_terminate_backend storm", load=load)
    log(f"terminated={terminated} load generator errors={load.errors} throughput before={before:.1f}/s "
        f"after={after:.1f}/s ({100 * after / before:.0f}%) recovery={max(took.values()):.1f}s")
    result.check(failed=0, discarded=0)
    assert terminated > 20, "the storm terminated almost nothing: the scenario proves nothing"
    assert after >= 0.9 * before, \
        f"throughput after the storm {after:.1f}/s < 90% of {before:.1f}/s\n" + result.report()


@pytest.mark.timeout(120)
def test_reservation_that_lost_its_connection_is_retried(rel):
    """The worker's pooled connections are terminated while it idles; the next job's notification makes the
    provider reserve on a dead connection. It must retry at once (with its backoff), not wait for the next poll."""
    env = {"EXEKUTOR_POLLING_INTERVAL": "60", "EXEKUTOR_HEARTBEAT_INTERVAL": "20", "EXEKUTOR_WORKER_TIMEOUT": "60"}
    worker = rel.start_worker(threads=THREADS, env=env)
    from tests.reliability.support import enqueue_work

    enqueue_work(rel.url, 5, "warm")
    wait_drained(rel.db, 20)  # the pool now holds idle connections
    worker_id = worker.worker_id(rel.db)
    killed = rel.terminate(f"application_name = 'exekutor {worker_id[:8]} worker'")
    log(f"terminated {killed} idle pooled connection(s) of the worker (its listener untouched)")
    assert killed, "the worker had no pooled connection to terminate"
    enqueued = time.time()
    enqueue_work(rel.url, 1, "after-terminate")
    wait_for(lambda: scalar(rel.db, "SELECT count(*) FROM rel_executions WHERE tag = 'after-terminate-0'"), 30,
             "the job enqueued after the connections were terminated to run")
    latency = float(scalar(rel.db, "SELECT extract(epoch FROM started_at) FROM rel_executions "
                                   "WHERE tag = 'after-terminate-0'")) - enqueued
    log(f"job started {latency:.2f}s after it was enqueued (polling_interval 60s)")
    assert worker.proc.poll() is None
    assert latency < 5, f"the job waited {latency:.1f}s: the failed reservation was not retried"
    # Its outcome is written after it ran, by a completer that may itself be backing off from a terminated
    # connection: reconcile once the queue is drained, not the instant the job recorded its execution.
    wait_drained(rel.db, 30)
    reconcile(rel.db, "reservation on a dead connection", acknowledged=[f"warm-{i}" for i in range(5)]
              + ["after-terminate-0"]).check(failed=0, discarded=0)
