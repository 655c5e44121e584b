"""Scenario 1, worker death: SIGKILL one of two workers mid-load, then one worker five times in a row.

The jobs a killed worker was running are orphans (executing, owned by a dead worker) until a live worker
finds its heartbeat older than worker_timeout and deletes its row, which puts them back to pending: they run
again, never before worker_timeout, and throughput comes back once the worker is restarted.
"""
import time

import pytest

from tests.reliability.conftest import WORKER_ENV
from tests.reliability.support import Load, log, measure, query, reconcile, wait_drained, wait_for

pytestmark = pytest.mark.slow

WORKER_TIMEOUT = float(WORKER_ENV["EXEKUTOR_WORKER_TIMEOUT"])
HEARTBEAT = float(WORKER_ENV["EXEKUTOR_HEARTBEAT_INTERVAL"])
JOB_SECONDS = 0.1  # each job waits this long (IO): throughput is set by the greenlets, not by the CPU
THREADS = 10
WINDOW = 6.0


def _executing(rel, worker_id):
    return [row[0] for row in query(rel.db, "SELECT id::text FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s",
                                    (worker_id,))]


def _wait_executing(rel, worker, minimum=5):
    worker_id = worker.worker_id(rel.db)
    wait_for(lambda: len(_executing(rel, worker_id)) >= minimum, 30, f"worker {worker.pid} to be running jobs")
    return worker_id


def _rescue(rel, orphans, killed_at):
    """Wait until no orphan is still executing for a dead owner; returns how long after `killed_at` that was."""
    def rescued():
        return not query(rel.db, "SELECT 1 FROM exekutor_jobs WHERE id = ANY(%s::uuid[]) AND status = 'e' "
                                 "AND worker_id = ANY(%s::uuid[])", (orphans, rel.dead_ids))

    wait_for(rescued, WORKER_TIMEOUT + 20, "the orphans to be released back to pending", interval=0.05)
    return time.time() - killed_at


def _reran(rel, orphans, not_before, killed_pids):
    """Orphans that finished with a successful execution by another process started after `not_before`."""
    rows = query(rel.db, "SELECT count(DISTINCT j.id) FROM exekutor_jobs j JOIN rel_executions e "
                         "ON e.tag = j.payload->'args'->>0 WHERE j.id = ANY(%s::uuid[]) AND e.ok "
                         "AND e.started_at >= to_timestamp(%s) AND NOT (e.pid = ANY(%s))",
                 (orphans, not_before, list(killed_pids)))
    return rows[0][0]


@pytest.mark.timeout(300)
def test_sigkill_one_of_two_workers_mid_load(rel):
    rel.dead_ids = []
    survivor = rel.start_worker(threads=THREADS)
    victim = rel.start_worker(threads=THREADS)
    load = Load(rel.url, backlog=300, prefix="kill1", sleep=JOB_SECONDS).start()
    try:
        _wait_executing(rel, survivor)
        victim_id = _wait_executing(rel, victim)
        before = measure(rel.db, WINDOW, "with two workers")

        killed_at = time.time()
        rel.kill(victim)
        rel.dead_ids.append(victim_id)
        orphans = _executing(rel, victim_id)
        log(f"SIGKILLed worker pid {victim.pid}: {len(orphans)} job(s) orphaned")
        assert orphans, "the killed worker was running no job: the scenario proves nothing"

        rescued_after = _rescue(rel, orphans, killed_at)
        log(f"orphans released {rescued_after:.1f}s after the kill (worker_timeout {WORKER_TIMEOUT:g}s)")
        # Never before worker_timeout (less one heartbeat: the victim's last beat came before the kill).
        assert rescued_after >= WORKER_TIMEOUT - HEARTBEAT - 0.5, rescued_after
        wait_for(lambda: _reran(rel, orphans, killed_at, rel.killed_pids) == len(orphans), 30,
                 "every orphan to run again on the surviving worker")
        assert survivor.proc.poll() is None, rel.logs()

        restarted = rel.start_worker(threads=THREADS)
        _wait_executing(rel, restarted)
        time.sleep(1)  # let the new worker's pool fill before the window
        after = measure(rel.db, WINDOW, "after restarting the killed worker")
    finally:
        load.stop()
    wait_drained(rel.db, 60)
    result = reconcile(rel.db, "worker death: SIGKILL one of two", load=load, killed_pids=rel.killed_pids)
    log(f"orphans={len(orphans)} released_after={rescued_after:.1f}s throughput before={before:.1f}/s "
        f"after={after:.1f}/s ({100 * after / before:.0f}%)")
    result.check(failed=0, discarded=0)
    assert after >= 0.9 * before, f"throughput did not come back: {after:.1f}/s after vs {before:.1f}/s before\n" \
                                  + result.report()


@pytest.mark.timeout(300)
def test_sigkill_a_worker_five_times_in_a_row(rel):
    """Kill the only worker mid-load, restart it at once, five times: each new worker rescues the jobs of its
    dead predecessors once their heartbeat is older than worker_timeout."""
    rel.dead_ids = []
    worker = rel.start_worker(threads=THREADS)
    load = Load(rel.url, backlog=200, prefix="kill5", sleep=JOB_SECONDS).start()
    orphans = []
    try:
        _wait_executing(rel, worker)
        before = measure(rel.db, WINDOW, "before the kills")
        first_kill = time.time()
        for round_ in range(5):
            worker_id = _wait_executing(rel, worker, minimum=3)
            rel.kill(worker)
            rel.dead_ids.append(worker_id)
            lost = _executing(rel, worker_id)
            orphans.extend(lost)
            log(f"kill {round_ + 1}/5: worker pid {worker.pid}, {len(lost)} job(s) orphaned")
            worker = rel.start_worker(threads=THREADS)
        rescued_after = _rescue(rel, orphans, first_kill)
        log(f"all {len(orphans)} orphans released {rescued_after:.1f}s after the first kill")
        wait_for(lambda: _reran(rel, orphans, first_kill, rel.killed_pids) == len(orphans), 40,
                 "every orphan to run again")
        dead_rows = query(rel.db, "SELECT count(*) FROM exekutor_workers WHERE id = ANY(%s::uuid[])",
                          (rel.dead_ids,))[0][0]
        assert dead_rows == 0, "the rows of the killed workers were not removed"
        time.sleep(1)
        after = measure(rel.db, WINDOW, "after five kills")
    finally:
        load.stop()
    wait_drained(rel.db, 60)
    result = reconcile(rel.db, "worker death: five kills in a row", load=load, killed_pids=rel.killed_pids)
    log(f"orphans={len(orphans)} throughput before={before:.1f}/s after={after:.1f}/s ({100 * after / before:.0f}%)")
    result.check(failed=0, discarded=0)
    assert after >= 0.9 * before, f"throughput did not come back: {after:.1f}/s after vs {before:.1f}/s before\n" \
                                  + result.report()
