"""Scenario 4, resource pressure: the server's connection slots exhausted for a while, and a session idle in
transaction pinning xmin for a minute under load.

Slots: other clients take every connection slot a non-superuser may use, and the worker's connections are
terminated, so every reconnect is refused ("too many clients" / "remaining connection slots are reserved").
The worker reports errors, does not crash, and runs jobs again once slots free up.

xmin: a REPEATABLE READ transaction that stays open keeps every row version the queue updates from being
cleaned up (dead index entries pile up at the head of the pending index). Throughput must stay at least 70 %
of the baseline during that minute and come back after it ends.
"""
import os
import time

import psycopg2
import pytest

from tests.reliability import cluster as clusters
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

THREADS = 10
WINDOW = 6.0
EXHAUSTED_FOR = 10.0
XMIN_THREADS = 25
XMIN_JOB_SECONDS = 0.125
PIN_SECONDS = float(os.environ.get("EXEKUTOR_RELIABILITY_PIN_SECONDS", "60"))


def _fill_slots(cluster, hogs):
    """Open hog connections until the server refuses one; returns how many were added."""
    added = 0
    while True:
        try:
            hogs.append(psycopg2.connect(cluster.url(user=clusters.HOG_USER), connect_timeout=3))
            added += 1
        except psycopg2.OperationalError as error:
            text = str(error)
            assert "too many clients" in text or "reserved" in text, text
            return added


@pytest.mark.timeout(240)
def test_connection_slots_exhausted(rel, pg_cluster):
    env = {"EXEKUTOR_WORKER_TIMEOUT": "60", "EXEKUTOR_HEARTBEAT_INTERVAL": "2"}
    worker = rel.start_worker(threads=THREADS, env=env)
    load = Load(rel.url, backlog=200, prefix="slots", sleep=0.1).start()
    hogs = []
    try:
        wait_for(lambda: worker_executed_since(rel.db, worker.pid, time.time() - 1), 30, "jobs to run")
        before = measure(rel.db, WINDOW, "before the slots run out")

        # Take every free slot, then throw the app's connections out: their slots go to the hogs too.
        deadline = time.monotonic() + 5
        _fill_slots(pg_cluster, hogs)
        while time.monotonic() < deadline:
            rel.terminate("usename = 'app'")
            _fill_slots(pg_cluster, hogs)
            time.sleep(0.05)
        exhausted_at = time.time()
        app_connections = scalar(rel.db, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app'")
        log(f"{len(hogs)} hog connections hold every non-superuser slot; app has {app_connections} connection(s)")
        time.sleep(EXHAUSTED_FOR)  # the pressure itself
        assert worker.proc.poll() is None, \
            "the worker exited while the slots were exhausted:\n" + worker.output()[-3000:]
        refused = worker.output().count("too many clients") + worker.output().count("reserved for")
        ran_meanwhile = worker_executed_since(rel.db, worker.pid, exhausted_at + 1)
        log(f"while exhausted for {EXHAUSTED_FOR:g}s: {refused} refused connection error(s) in the worker's log, "
            f"{ran_meanwhile} job(s) ran")
        assert refused, "the worker did not report the refused connections:\n" + worker.output()[-3000:]

        for hog in hogs:
            hog.close()
        hogs.clear()
        freed = time.time()
        wait_for(lambda: worker_executed_since(rel.db, worker.pid, freed), 40, "the worker to run jobs again")
        recovered = time.time() - freed
        log(f"worker ran jobs again {recovered:.1f}s after the slots were freed")
        time.sleep(1)
        after = measure(rel.db, WINDOW, "after the slots were freed")
    finally:
        for hog in hogs:
            hog.close()
        load.stop()
    wait_drained(rel.db, 60)
    result = reconcile(rel.db, "connection slots exhausted", load=load)
    log(f"throughput before={before:.1f}/s after={after:.1f}/s ({100 * after / before:.0f}%) recovery={recovered:.1f}s "
        f"load generator errors={load.errors}")
    result.check(failed=0, discarded=0)
    assert after >= 0.9 * before, f"throughput did not come back: {after:.1f}/s vs {before:.1f}/s\n" + result.report()


@pytest.mark.timeout(300)
def test_idle_in_transaction_pins_xmin(rel, pg_cluster):
    # IO-bound jobs as a real deployment runs them: many greenlets per worker, jobs that wait on IO.
    workers = [rel.start_worker(threads=XMIN_THREADS) for _ in range(2)]
    load = Load(rel.url, backlog=400, prefix="xmin", sleep=XMIN_JOB_SECONDS, interval=0.1).start()
    pin = None
    during = []
    try:
        wait_for(lambda: all(worker_executed_since(rel.db, w.pid, time.time() - 1) for w in workers), 30, "jobs to run")
        time.sleep(2)
        baseline = measure(rel.db, WINDOW, "baseline")

        pin = pg_cluster.connect(autocommit=False)
        pin.set_session(isolation_level="REPEATABLE READ")
        with pin.cursor() as cursor:
            cursor.execute("SELECT txid_current(), count(*) FROM exekutor_jobs")
        pinned_at = time.monotonic()
        log(f"a session is idle in transaction, pinning xmin, for {PIN_SECONDS:g}s")
        while time.monotonic() - pinned_at < PIN_SECONDS - 1:
            window = min(10.0, PIN_SECONDS - (time.monotonic() - pinned_at))
            during.append(measure(rel.db, window, "while xmin is pinned"))
        dead = scalar(rel.db, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'exekutor_jobs'")
        state = scalar(rel.db, "SELECT state FROM pg_stat_activity WHERE pid = %s", (pin.get_backend_pid(),))
        assert state == "idle in transaction", state
        pin.rollback()
        pin.close()
        pin = None
        log(f"pin released ({dead} dead row versions in exekutor_jobs)")
        time.sleep(2)
        after = measure(rel.db, WINDOW, "after the pin is released")
    finally:
        if pin is not None:
            pin.close()
        load.stop()
    wait_drained(rel.db, 60)
    result = reconcile(rel.db, "xmin pinned", load=load)
    worst = min(during)
    log(f"throughput baseline={baseline:.1f}/s while pinned: worst={worst:.1f}/s ({100 * worst / baseline:.0f}%) "
        f"windows={[round(x) for x in during]} after={after:.1f}/s ({100 * after / baseline:.0f}%) dead_tuples={dead}")
    result.check(failed=0, discarded=0)
    assert worst >= 0.7 * baseline, f"throughput fell to {worst:.1f}/s with xmin pinned (baseline {baseline:.1f}/s)"
    assert after >= 0.9 * baseline, f"throughput did not recover: {after:.1f}/s (baseline {baseline:.1f}/s)"
