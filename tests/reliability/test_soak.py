"""Scenario 7, soak: SOAK_JOBS jobs through two workers, 5 % of executions failing at random (retried, up to 3
attempts), and one worker SIGKILLed halfway and restarted. The reconciliation must hold for every job.

EXEKUTOR_SOAK_JOBS scales it (default 100,000: about 2 minutes of the suite on a 2-core machine, which keeps
the whole reliability suite within its 12-minute budget; see docs/reliability.md).
"""
import os
import time

import pytest

from tests.reliability.support import enqueue_work, log, reconcile, scalar, wait_drained, wait_for

pytestmark = pytest.mark.slow

SOAK_JOBS = int(os.environ.get("EXEKUTOR_SOAK_JOBS", "100000"))
FAIL_RATE = 0.05
THREADS = 20


@pytest.mark.timeout(900)
def test_soak_with_random_failures_and_a_killed_worker(rel):
    started = time.monotonic()
    tags = enqueue_work(rel.url, SOAK_JOBS, "soak", fail_rate=FAIL_RATE)
    log(f"enqueued {len(tags)} jobs in {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    workers = [rel.start_worker(threads=THREADS) for _ in range(2)]

    def finished():
        return scalar(rel.db, "SELECT count(*) FROM exekutor_jobs WHERE status IN ('c', 'f', 'd')")

    wait_for(lambda: finished() >= SOAK_JOBS // 2, 600, "half of the jobs to finish", interval=0.5)
    victim = workers[1]
    victim_id = victim.worker_id(rel.db)
    orphans = scalar(rel.db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s", (victim_id,))
    rel.kill(victim)
    # Their attempt ended with the process, without an error record (until the rescue, the rows still name it).
    killed_runs = scalar(rel.db, "SELECT ARRAY(SELECT id::text FROM exekutor_jobs WHERE status = 'e' "
                                 "AND worker_id = %s)", (victim_id,))
    log(f"halfway ({finished()} finished): SIGKILLed worker pid {victim.pid} with {orphans} job(s) executing; "
        "restarting it")
    rel.start_worker(threads=THREADS)
    wait_drained(rel.db, 900)
    elapsed = time.monotonic() - started
    result = reconcile(rel.db, f"soak {SOAK_JOBS}", acknowledged=tags, killed_pids=rel.killed_pids)
    retried = scalar(rel.db, "SELECT count(*) FROM exekutor_jobs WHERE attempts > 1")
    log(f"soak: {SOAK_JOBS} jobs in {elapsed:.1f}s ({SOAK_JOBS / elapsed:.0f} jobs/s), {retried} run more than once "
        f"(retries and rescued orphans), {result['raised_executions']} random failures, {result['failed']} failed "
        f"for good (3 failures in a row), {orphans} orphaned by the kill")
    result.check(enqueued=SOAK_JOBS, discarded=0)
    assert result["raised_executions"] > SOAK_JOBS * FAIL_RATE * 0.8, "the random failures did not happen"
    # every job that failed for good failed on each of its 3 attempts
    # (a job whose run the kill ended spent that attempt without an error record)
    exhausted = scalar(rel.db, "SELECT count(*) FROM exekutor_jobs j WHERE status = 'f' AND (SELECT count(*) FROM "
                               "exekutor_job_errors e WHERE e.job_id = j.id) < 3 - (j.id = ANY(%s::uuid[]))::int",
                       (killed_runs,))
    assert exhausted == 0, f"{exhausted} job(s) failed before their 3 attempts"
