"""A crash's effect is visible: the rescue counts the jobs the trigger released from the dead workers it removed,
in its log line and in `exekutor_rescued_jobs_total`, not only the ownerless jobs it released itself."""
import os
import signal

import pytest

import exekutor
from exekutor.worker.heartbeat import rescue_orphans
from tests import health_jobs
from tests.conftest import query, scalar, wait_for
from tests.health_support import metric, metric_values, worker_starter

RUNNING = 7
FAST = {"EXEKUTOR_HEARTBEAT_INTERVAL": "0.5", "EXEKUTOR_WORKER_TIMEOUT": "2", "EXEKUTOR_WAIT_FOR_TERMINATION": "0"}
DEAD, GONE, ME = ("00000000-0000-0000-0000-00000000000%d" % n for n in (1, 2, 3))


def test_the_rescue_statement_counts_the_jobs_of_the_workers_it_removes(db):
    query(db, "INSERT INTO exekutor_workers (id, hostname, pid, last_heartbeat_at) "
              "VALUES (%s, 'gone', 1, now() - interval '1 hour')", (DEAD,))
    # 3 executing jobs of the dead worker, one of its finished ones (not released), and one ownerless job.
    query(db, "INSERT INTO exekutor_jobs (payload, status, worker_id, attempts, started_at) "
              "SELECT '{\"job\": \"tests.noop\"}', status, worker, 1, now() - interval '1 hour' FROM "
              "(VALUES ('e', %s::uuid), ('e', %s), ('e', %s), ('c', %s), ('e', %s)) AS v(status, worker)",
              (DEAD, DEAD, DEAD, DEAD, GONE))

    with db.cursor() as cursor:
        dead, ownerless, released, failed = rescue_orphans(cursor, ME, 5, 3)

    assert (dead, ownerless, released, failed) == (1, 1, 3, 0)
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'p'") == 4
    # A run its worker ended without an outcome is a release: it does not count against the job's Retry policy.
    assert query(db, "SELECT status, releases, count(*) FROM exekutor_jobs GROUP BY 1, 2 ORDER BY 1") == [
        ("c", 0, 1), ("p", 1, 4)]


def test_a_worker_that_deletes_its_row_releases_its_jobs_without_spending_their_attempts(db):
    query(db, "INSERT INTO exekutor_workers (id, hostname, pid) VALUES (%s, 'here', 1)", (DEAD,))
    query(db, "INSERT INTO exekutor_jobs (payload, status, worker_id, attempts, releases, started_at) "
              "VALUES ('{\"job\": \"tests.noop\"}', 'e', %s, 3, 1, now())", (DEAD,))
    query(db, "DELETE FROM exekutor_workers WHERE id = %s", (DEAD,))  # a stop that killed its job
    assert query(db, "SELECT status, attempts, releases FROM exekutor_jobs") == [("p", 3, 2)]


@pytest.fixture
def health_worker(start_worker):
    return worker_starter(start_worker)


@pytest.mark.timeout(90)
def test_a_survivor_counts_the_jobs_of_a_killed_worker_in_its_log_and_metrics(start_worker, health_worker, db):
    doomed = start_worker("--app", "tests.health_jobs", "--threads", RUNNING, "--queue", "doomed", env=FAST)
    doomed_id = doomed.worker_id(db)
    exekutor.enqueue_many([health_jobs.sleep.set(queue="doomed").job(60) for _ in range(RUNNING)])
    wait_for(lambda: scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s",
                            (doomed_id,)) == RUNNING, 30, message=f"the doomed worker to run {RUNNING} jobs")
    # On another queue, so that the released jobs stay pending where the test can count them.
    survivor = health_worker("--queue", "elsewhere", env=FAST)

    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(10)

    values = wait_for(lambda: (lambda v: metric(v, "exekutor_rescued_workers_total") == 1 and v)(
        metric_values(survivor.port)), 30, message=f"the killed worker to be rescued\n{survivor.output()[-3000:]}")
    assert metric(values, "exekutor_rescued_jobs_total") == RUNNING
    assert f"removed 1 dead worker(s) (no heartbeat for 2s), whose {RUNNING} executing job(s) went back to " \
           "pending" in survivor.output()
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'p' AND queue = 'doomed'") == RUNNING
