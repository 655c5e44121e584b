"""The scheduler's cost with 1,000 schedules: database transactions per second and worker CPU, against the same
worker with `enable_scheduler: false`.

The schedules (config `schedules:`, through EXEKUTOR_SCHEDULES) run `every` 1 to 60 seconds (schedule i every
1 + i % 60 s; about 78 jobs a second in all, with some schedules due every second, and all 1,000 at once on each
whole minute). Their jobs go to a queue the worker does not take, so the figures are the scheduler's alone: the
claims, the inserts, and the worker's CPU to compute ticks and build the jobs. Transactions are counted by the
server (pg_stat_database.xact_commit of the benchmark database; every worker statement is one, as its connections
autocommit), less the same count for the baseline worker over the same window.
"""
import json
import os
import time

from benchmarks import harness

SCHEDULES = 1000
WINDOW, QUICK_WINDOW = 60.0, 20.0
QUEUE = "default"  # bench.noop's queue; the worker takes only WORKER_QUEUE, so the scheduled jobs wait
WORKER_QUEUE = "bench-idle"


def scenario_scheduler(ctx):
    budget = ctx.new_budget("scheduler")
    window = ctx.count(WINDOW, QUICK_WINDOW)
    schedules = json.dumps({f"bench-{i:04d}": {"job": "bench.noop", "every": 1 + i % 60} for i in range(SCHEDULES)})
    runs = {}
    named = {"EXEKUTOR_SET_DB_CONNECTION_NAME": "true"}  # wait_worker_listening finds the listener by its name
    for label, env in (("baseline", {**named, "EXEKUTOR_ENABLE_SCHEDULER": "false"}),
                       ("scheduler", {**named, "EXEKUTOR_SCHEDULES": schedules})):
        if not budget.allows(window + 10):
            break
        runs[label] = _run(ctx, env, window)
        ctx.say(f"  {label}: {runs[label]['xacts_per_s']:.1f} transactions/s, worker CPU "
                f"{runs[label]['cpu_percent']:.2f}%, {runs[label]['jobs_per_s']:.1f} jobs enqueued/s")
    ctx.record("scheduler", {"schedules": SCHEDULES, "window_s": window, **runs})
    if len(runs) < 2:
        return
    base, sched = runs["baseline"], runs["scheduler"]
    ctx.figure("scheduler_xacts", f"scheduler with {SCHEDULES:,} schedules (every 1-60 s): database statements",
               "/s", harness.summary([sched["xacts_per_s"] - base["xacts_per_s"]]))
    ctx.figure("scheduler_cpu", f"scheduler with {SCHEDULES:,} schedules: worker CPU over the idle worker's", "%",
               harness.summary([sched["cpu_percent"] - base["cpu_percent"]]))
    ctx.figure("scheduler_jobs", f"scheduler with {SCHEDULES:,} schedules: jobs enqueued", "jobs/s",
               harness.summary([sched["jobs_per_s"]]), throughput=True)


def _run(ctx, env, window):
    db = ctx.db
    db.reset()
    db.execute("DELETE FROM exekutor_schedules")
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)  # harness.spawn passes the driver's environment on
    try:
        proc = harness.spawn(["-m", "exekutor", "start", "--app", "benchmarks.jobs", "--queue", WORKER_QUEUE,
                              "--quiet"], db.url, "scheduler")
    finally:
        for name, value in saved.items():
            os.environ.pop(name) if value is None else os.environ.__setitem__(name, value)
    try:
        harness.wait_worker_listening(db, proc)
        time.sleep(3)  # past the start: definitions written, first ticks claimed
        xacts, cpu, jobs, started = _counters(db, proc)
        time.sleep(window)
        xacts2, cpu2, jobs2, ended = _counters(db, proc)
    finally:
        harness.stop_process(proc)
        db.reset()
        db.execute("DELETE FROM exekutor_schedules")
    elapsed = ended - started
    return {"xacts_per_s": (xacts2 - xacts) / elapsed, "cpu_percent": 100 * (cpu2 - cpu) / elapsed,
            "jobs_per_s": (jobs2 - jobs) / elapsed, "seconds": elapsed}


def _counters(db, proc):
    jobs = db.scalar("SELECT count(*) FROM exekutor_jobs WHERE queue = %s", (QUEUE,))
    # pg_stat_database is refreshed by the backends' stats reports: ask for a fresh snapshot.
    db.execute("SELECT pg_stat_clear_snapshot()")
    xacts = db.scalar("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
    return xacts, harness.cpu_seconds(proc.pid) or 0.0, jobs, time.monotonic()
