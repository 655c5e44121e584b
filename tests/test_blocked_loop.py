"""A job that blocks the event loop: it costs the jobs beside it latency, never their runs; it ends as its own failure.

Real worker processes against a real PostgreSQL. The blocking jobs (tests/hostile_jobs.py) call the original
`time.sleep`, or spin in Python, as CPU work or a C call would; `hostile.block_stubborn` also swallows every
interruption and blocks on. Runs are recorded in test_executions (start and end, on the database clock).
"""
import json
import signal
import time

import pytest

import exekutor
from exekutor.worker.heartbeat import WORKER_LOST, rescue_orphans
from tests import hostile_jobs
from tests.conftest import query, scalar, wait_for
from tests.health_support import free_port, get, metric, metric_values

APPS = ("tests.hostile_jobs", "tests.jobs_app")
# worker_timeout 5 s: another worker presumes one dead after 5 s without a heartbeat; its guard trips after 4 s.
FAST = {"EXEKUTOR_HEARTBEAT_INTERVAL": "1", "EXEKUTOR_WORKER_TIMEOUT": "5", "EXEKUTOR_MAX_BLOCKING_TIME": "1"}


def status_of(db, handle):
    return scalar(db, "SELECT status FROM exekutor_jobs WHERE id = %s", (handle.id,))


def runs(db, tag):
    """(started_at, finished_at) of each run of `tag`, in order."""
    return query(db, "SELECT started_at, finished_at FROM test_executions WHERE tag = %s ORDER BY started_at", (tag,))


def overlapping_runs(db):
    return query(db, """
        SELECT a.tag FROM test_executions a JOIN test_executions b
          ON a.tag = b.tag AND a.ctid < b.ctid
         AND a.started_at < coalesce(b.finished_at, 'infinity') AND b.started_at < coalesce(a.finished_at, 'infinity')
        WHERE a.finished_at IS NOT NULL AND b.finished_at IS NOT NULL""")


def errors_of(db, handle):
    return [row[0] for row in query(db, "SELECT error FROM exekutor_job_errors WHERE job_id = %s ORDER BY created_at",
                                    (handle.id,))]


def worker(start_worker, *args, env=None):
    port = free_port()
    started = start_worker("--poll-interval", "1", "--healthcheck-port", port, *args, env=dict(FAST, **(env or {})),
                           apps=APPS)
    started.port = port
    return started


def wait_running(db, count, timeout=30):
    wait_for(lambda: scalar(db, "SELECT count(*) FROM test_executions") >= count, timeout,
             message=f"{count} runs to start")


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_a_lone_worker_whose_loop_a_job_blocks_for_nearly_worker_timeout_runs_every_job_once(start_worker,
                                                                                            executions):
    # Defect 2 of issue 24: a 4.5 s block (worker_timeout 5) used to trip the ownership guard: every job was killed
    # and started again, forever.
    lone = worker(start_worker, "--threads", "12")
    ordinary = exekutor.enqueue_many([hostile_jobs.long.job(f"ordinary-{i}", 8) for i in range(10)])
    wait_running(executions, 10)
    blocker = hostile_jobs.block.perform_later("blocker", 4.5)
    for handle in ordinary + [blocker]:
        wait_for(lambda handle=handle: status_of(executions, handle) == "c", 60,
                 message=f"every job to complete\n{lone.output()[-3000:]}")
    assert overlapping_runs(executions) == []
    counts = dict(query(executions, "SELECT tag, count(*) FROM test_executions GROUP BY tag"))
    assert counts == {**{f"ordinary-{i}": 1 for i in range(10)}, "blocker": 1}, (counts, lone.output()[-3000:])
    wait_for(lambda: f"job {blocker.id} (hostile.block) blocked the event loop for 4." in lone.output(), 10,
             message="the worker to name the blocking job")
    output = lone.output()
    assert "no heartbeat went through" not in output and "presumed it dead" not in output, output[-3000:]
    values = metric_values(lone.port)
    assert metric(values, "exekutor_ownership_lost_total") == 0
    assert metric(values, "exekutor_event_loop_blocks_total", job="hostile.block") == 1
    assert metric(values, "exekutor_event_loop_blocked_seconds_total", job="hostile.block") >= 4.0


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_job_blocking_twice_worker_timeout_on_two_workers_ends_failed_and_every_other_job_runs_once(start_worker,
                                                                                                      executions):
    # Defect 3 of issue 24 (and defect 0): a job blocking 2 x worker_timeout on every run used to make its worker
    # look dead; the other worker ran it again while the first copy still blocked, forever, and both workers'
    # other jobs were killed and run again at each hand-over.
    env = {"EXEKUTOR_BLOCKING_TIMEOUT": "3"}
    first = worker(start_worker, "--threads", "6", env=env)
    second = worker(start_worker, "--threads", "6", env=env)
    ordinary = exekutor.enqueue_many([hostile_jobs.long.job(f"ordinary-{i}", 6) for i in range(8)])
    wait_running(executions, 8)
    blocker = hostile_jobs.block.perform_later("blocker", 10)
    wait_for(lambda: status_of(executions, blocker) == "f", 40,
             message=f"the blocker to end failed\n{first.output()[-3000:]}\n{second.output()[-3000:]}")
    for handle in ordinary:
        wait_for(lambda handle=handle: status_of(executions, handle) == "c", 60, message="every other job to complete")
    # The blocker ran once: interrupted after blocking_timeout (3 s), not after its 10 s, failed, not retried.
    (_, finished), = runs(executions, "blocker")
    assert finished is None  # interrupted where it blocked: it did not record its end
    assert 2.5 < scalar(executions, "SELECT runtime FROM exekutor_jobs WHERE id = %s", (blocker.id,)) < 8
    (error,) = errors_of(executions, blocker)
    assert error["type"] == "exekutor.errors.JobBlockedError", error
    assert "longer than blocking_timeout (3s), and was interrupted" in error["message"], error
    assert overlapping_runs(executions) == []
    counts = dict(query(executions, "SELECT tag, count(*) FROM test_executions WHERE tag <> 'blocker' GROUP BY tag"))
    assert counts == {f"ordinary-{i}": 1 for i in range(8)}, counts
    # Nobody was presumed dead, and the worker that ran it names it in its log and its metrics.
    outputs = first.output() + second.output()
    assert "presumed it dead" not in outputs and "no heartbeat went through" not in outputs, outputs[-4000:]
    assert f"job {blocker.id} (hostile.block) has blocked the event loop for 3." in outputs, outputs[-4000:]
    values = [metric_values(w.port) for w in (first, second)]
    assert sum(metric(v, "exekutor_jobs_interrupted_blocking_total") for v in values) == 1
    assert sum(metric(v, "exekutor_event_loop_blocks_total", job="hostile.block") for v in values) == 1
    assert sum(metric(v, "exekutor_rescued_jobs_total") for v in values) == 0


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_cpu_work_past_execution_timeout_or_blocking_timeout_is_interrupted_and_the_worker_goes_on(start_worker,
                                                                                                   executions):
    lone = worker(start_worker, "--threads", "4", env={"EXEKUTOR_BLOCKING_TIMEOUT": "2"})
    spin = hostile_jobs.spin.perform_later("spin", 60)
    wait_for(lambda: status_of(executions, spin) == "f", 40, message=f"the spin to end\n{lone.output()[-3000:]}")
    # One after the other: a job whose execution_timeout passed while another blocked the loop simply times out.
    timed = hostile_jobs.block.set(execution_timeout=1).perform_later("timed", 60)
    wait_for(lambda: status_of(executions, timed) == "d", 40, message=f"the block to end\n{lone.output()[-3000:]}")
    spin_error, = errors_of(executions, spin)
    assert spin_error["type"] == "exekutor.errors.JobBlockedError", spin_error
    assert "hostile_jobs.py" in spin_error["traceback"]  # where it was interrupted
    timed_error, = errors_of(executions, timed)
    assert timed_error["type"] == "exekutor.errors.JobTimeoutError", timed_error
    assert "execution_timeout of 1s while blocking the event loop" in timed_error["message"], timed_error
    canary = hostile_jobs.canary.perform_later("after")
    wait_for(lambda: status_of(executions, canary) == "c", 30, message="a job after them to complete")
    threads = wait_for(lambda: (lambda t: t["available"] == t["maximum"] and t)(
        json.loads(get(lone.port, "/threads").body)), 30, message="every greenlet slot to be free again")
    assert threads["maximum"] == 4


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_block_no_interruption_ends_fails_that_job_and_hands_the_others_over_without_overlap(start_worker,
                                                                                              executions):
    env = {"EXEKUTOR_BLOCKING_TIMEOUT": "2"}
    stuck = worker(start_worker, "--threads", "6", "--queue", "shared", "--queue", "stuck", env=env)
    ordinary = exekutor.enqueue_many([hostile_jobs.long.set(queue="shared").job(f"ordinary-{i}", 8)
                                      for i in range(3)])
    wait_running(executions, 3)
    other = worker(start_worker, "--threads", "6", "--queue", "shared")
    time.sleep(5.5)  # the other worker beats steadily for worker_timeout: from now on it may take others for dead
    blocker = hostile_jobs.block_stubborn.set(queue="stuck").perform_later("blocker", 16)
    # Interrupted after 2 s, the job swallows it and blocks on; 2 s later the watchdog writes its failure itself
    # and stops the heartbeat; the other worker rescues the jobs that wait behind the block.
    wait_for(lambda: status_of(executions, blocker) == "f", 30,
             message=f"the blocker to fail\n{stuck.output()[-3000:]}")
    for handle in ordinary:
        wait_for(lambda handle=handle: status_of(executions, handle) == "c", 60,
                 message=f"the others to complete\n{stuck.output()[-3000:]}\n{other.output()[-3000:]}")
    (error,) = errors_of(executions, blocker)
    assert error["type"] == "exekutor.errors.JobBlockedError" and "could not be interrupted" in error["message"]
    wait_for(lambda: runs(executions, "blocker")[0][1] is not None, 30, message="the block to end")
    assert len(runs(executions, "blocker")) == 1  # never handed to another worker
    for i in range(3):
        first_run, second_run = runs(executions, f"ordinary-{i}")
        assert first_run[1] is None and second_run[1] is not None  # the stalled run never went on
    assert overlapping_runs(executions) == []
    # After the block, the stuck worker stopped the stalled jobs, found itself presumed dead, and registers again.
    wait_for(lambda: "registering again" in stuck.output(), 30, message="the stuck worker to register again")
    assert "could not be interrupted: it ends failed" in stuck.output()
    values = metric_values(stuck.port)
    assert metric(values, "exekutor_jobs_blocking_given_up_total") == 1
    canary = hostile_jobs.canary.set(queue="stuck").perform_later("after")
    wait_for(lambda: status_of(executions, canary) == "c", 30, message="the stuck worker to run jobs again")


def test_the_rescue_fails_a_job_whose_workers_were_presumed_dead_max_job_rescues_times(db):
    dead, me = "00000000-0000-0000-0000-000000000001", "00000000-0000-0000-0000-000000000002"
    query(db, "INSERT INTO exekutor_workers (id, hostname, pid, last_heartbeat_at) "
              "VALUES (%s, 'gone', 1, now() - interval '1 hour')", (dead,))
    ids = [row[0] for row in query(db, "INSERT INTO exekutor_jobs (payload, status, worker_id, attempts, started_at) "
                                       "SELECT '{\"job\": \"tests.noop\"}', 'e', %s, n, now() "
                                       "FROM generate_series(1, 3) n RETURNING id::text", (dead,))]
    # The first job was rescued twice before, the second once, the third never.
    for job_id, before in zip(ids, (2, 1, 0)):
        for attempt in range(before):
            query(db, "INSERT INTO exekutor_job_errors (job_id, attempt, error) VALUES (%s, %s, %s)",
                  (job_id, attempt, json.dumps({"type": WORKER_LOST, "message": "", "traceback": ""})))
    with db.cursor() as cursor:
        assert rescue_orphans(cursor, me, 5, 3) == (1, 0, 2, 1)
    statuses = dict(query(db, "SELECT id::text, status FROM exekutor_jobs"))
    assert [statuses[job_id] for job_id in ids] == ["f", "p", "p"]
    messages = query(db, "SELECT job_id::text, error->>'message' FROM exekutor_job_errors WHERE attempt = "
                         "(SELECT attempts FROM exekutor_jobs j WHERE j.id = job_id) ORDER BY job_id")
    assert {job_id: message for job_id, message in messages} == {
        ids[0]: "its worker was presumed dead while it ran this job (no heartbeat for 5s: killed, stopped, cut off "
                "from the database, or its event loop blocked): 3 of max_job_rescues (3); the job ends failed "
                "instead of running again",
        ids[1]: "its worker was presumed dead while it ran this job (no heartbeat for 5s: killed, stopped, cut off "
                "from the database, or its event loop blocked): 2 of max_job_rescues (3); it runs again",
        ids[2]: "its worker was presumed dead while it ran this job (no heartbeat for 5s: killed, stopped, cut off "
                "from the database, or its event loop blocked): 1 of max_job_rescues (3); it runs again"}


@pytest.mark.slow
@pytest.mark.timeout(150)
def test_a_job_that_freezes_every_worker_is_handed_on_at_most_max_job_rescues_times(start_worker, executions):
    env = {"EXEKUTOR_MAX_JOB_RESCUES": "2"}
    workers = [worker(start_worker, "--threads", "2", env=env) for _ in range(2)]
    time.sleep(5.5)  # both beat steadily for worker_timeout: each may now take the other for dead
    frozen = hostile_jobs.long.perform_later("frozen", 120)
    by_pid = {w.pid: w for w in workers}
    for rescue in (1, 2):
        wait_for(lambda rescue=rescue: len(runs(executions, "frozen")) == rescue, 30, message=f"run {rescue} to start")
        pid = scalar(executions, "SELECT pid FROM test_executions WHERE tag = 'frozen' ORDER BY started_at DESC "
                                 "LIMIT 1")
        frozen_worker = by_pid[pid]
        frozen_worker.signal(signal.SIGSTOP)  # its process stops as a whole: heartbeat thread included
        try:
            wait_for(lambda rescue=rescue: len(errors_of(executions, frozen)) == rescue, 30, message=f"rescue {rescue}")
        finally:
            frozen_worker.signal(signal.SIGCONT)
        # Back, the frozen worker stops the job before it runs another line and registers again.
        wait_for(lambda w=frozen_worker: "registering again" in w.output(), 30, message="the frozen worker to rejoin")
        wait_for(lambda w=frozen_worker: w.worker_id(executions), 30, message="its new registration")
        time.sleep(5.5)  # it beats steadily again for worker_timeout before it may rescue the other
    assert status_of(executions, frozen) == "f"
    messages = [error["message"] for error in errors_of(executions, frozen)]
    assert [error["type"] for error in errors_of(executions, frozen)] == [WORKER_LOST, WORKER_LOST]
    assert messages[0].endswith("1 of max_job_rescues (2); it runs again"), messages
    assert messages[1].endswith("2 of max_job_rescues (2); the job ends failed instead of running again"), messages
    assert [finished for _, finished in runs(executions, "frozen")] == [None, None]  # no run went on after its rescue
    assert sum(metric(metric_values(w.port), "exekutor_jobs_failed_after_rescues_total") for w in workers) == 1


@pytest.mark.slow
@pytest.mark.timeout(90)
def test_blocking_work_handed_to_gevents_thread_pool_leaves_the_loop_free(start_worker, executions):
    # The rule of thumb in docs/reliability.md: the same blocking call, run through the hub's thread pool.
    lone = worker(start_worker, "--threads", "8", env={"EXEKUTOR_BLOCKING_TIMEOUT": "2"})
    offloaded = hostile_jobs.offloaded.perform_later("offloaded", 10)
    wait_running(executions, 1)
    quick = [hostile_jobs.canary.perform_later(f"quick-{i}") for i in range(5)]
    for handle in quick:  # they run while the offloaded call still blocks its thread
        wait_for(lambda handle=handle: status_of(executions, handle) == "c", 7, message="the quick jobs to complete")
    assert status_of(executions, offloaded) == "e"
    wait_for(lambda: status_of(executions, offloaded) == "c", 30, message="the offloaded job to complete")
    assert "blocked the event loop" not in lone.output(), lone.output()[-3000:]
    assert metric(metric_values(lone.port), "exekutor_jobs_interrupted_blocking_total") == 0
