"""Flow control (issue 26, DESIGN §13): what the limits let through, measured on the database's clock.

Three figures, each from a table prepared by one INSERT ... SELECT generate_series whose columns are those
exekutor's own enqueue writes (taken from a JobRequest: queue, priority, payload, limit columns):

- limited job: FLOW_CONCURRENCY (5) runs at once of 10 ms jobs, drained by 3 worker processes of 200 greenlets;
  the ideal is 5 / 10 ms = 500 jobs/s, and what is missing from it is the hand-over of a slot (the outcome written,
  the next held-back job promoted, a worker told and reserving it).
- rate limit: FLOW_RATE (200) starts per second held for a minute by the same 3 workers; starts per second over
  the steady part and the most starts in any 1 s window, from the jobs' started_at (the limiter's own clock).
- held-back backlog: 100,000 jobs held back by a concurrency limit of 1 (one long job running), then runnable jobs
  of the same queue: their time from commit to start, and the reservation statement's time and plan.
"""
import json
import os
import statistics
import subprocess
import tempfile
import time

from benchmarks import harness, jobs
from benchmarks.explain import explain
from benchmarks.jobs import NOOP_PAYLOAD
from benchmarks.limit import reserve_params
from exekutor.db.queries import RESERVE_JOBS

WORKERS = 3
THREADS = 200
POLL = 0.1


def scenario_flow(ctx):
    budget = ctx.new_budget("flow")
    try:
        # The limited runs get what the other two parts leave, as a budget of their own: its overrun (fewer runs)
        # marks their figures only.
        ctx.current_budget = harness.Budget(budget.remaining() - _rest_seconds(ctx))
        _limited(ctx, ctx.current_budget)
        ctx.current_budget = harness.Budget(max(budget.remaining(), _rest_seconds(ctx)))
        _rate(ctx)
        _backlog(ctx, ctx.current_budget)
    finally:
        ctx.db.reset()


# --- preparing the table and running workers -----------------------------------------------------------------------

def insert_like(db, request, count, blocked_on=None):
    """`count` copies of `request` (a JobRequest) in one INSERT ... SELECT, with the columns exekutor's enqueue
    writes for it, optionally already held back on `blocked_on` (a limit key, as exekutor_start_limited names
    it); then VACUUM ANALYZE, as before every drain."""
    limits = request.limits or (None,) * 5
    db.execute(
        "INSERT INTO exekutor_jobs (queue, priority, payload, options, concurrency_key, concurrency_limit, rate_key, "
        "rate_limit, rate_period, blocked_on) "
        "SELECT %s, %s, %s::jsonb, %s::jsonb, %s, %s, %s, %s, %s, %s FROM generate_series(1, %s)",
        (request.queue, request.priority, json.dumps(request.payload),
         json.dumps(request.options) if request.options else None, *limits, blocked_on, count))
    db.vacuum()


def start_workers(db, count=WORKERS, threads=THREADS):
    return [harness.start_worker(db.url, threads) for _ in range(count)]


def stop_workers(procs, timeout=15):
    for proc in procs:
        harness.stop_process(proc, timeout)


def _check_alive(procs):
    for proc in procs:
        if proc.poll() is not None:
            raise RuntimeError(f"a worker exited with status {proc.returncode}:\n{harness.log_tail(proc)}")


def wait_drained(db, procs, timeout):
    """Until no job is pending (held back or not) or executing; True when `timeout` cut it short."""
    deadline = time.monotonic() + timeout
    while db.unfinished():
        _check_alive(procs)
        if time.monotonic() > deadline:
            return True
        time.sleep(POLL)
    return False


# --- a. limited job ------------------------------------------------------------------------------------------------

def max_running(db):
    """The most jobs running at once, from started_at / finished_at (an end sorts before a start at the same
    instant: the slot was free by then)."""
    return db.scalar(
        "SELECT max(running) FROM (SELECT sum(delta) OVER (ORDER BY t, delta ROWS UNBOUNDED PRECEDING) AS running "
        "FROM (SELECT started_at AS t, 1 AS delta FROM exekutor_jobs WHERE finished_at IS NOT NULL "
        "UNION ALL SELECT finished_at, -1 FROM exekutor_jobs WHERE finished_at IS NOT NULL) AS events) AS s")


def _limited_run(ctx, count, seconds, budget):
    db = ctx.db
    db.reset()
    insert_like(db, jobs.flow_limited.job(seconds), count)
    procs = start_workers(db)
    try:
        partial = wait_drained(db, procs, max(10.0, budget.remaining()))
    finally:
        stop_workers(procs)
    finished, span, bad = db.drain_span()
    rate = finished / span if span > 0 else None
    return {"count": count, "finished": finished, "not_completed": bad, "partial": partial, "span_s": round(span, 3),
            "rate": rate, "max_running": max_running(db),
            # What each slot spends between two jobs beyond the job itself: 5 slots, each a cycle of
            # FLOW_CONCURRENCY / rate seconds, of which `seconds` is the job.
            "handover_ms": (jobs.FLOW_CONCURRENCY / rate - seconds) * 1000 if rate else None}


def _limited(ctx, budget):
    count, seconds = ctx.count(20000, 3000), 0.01
    ideal = jobs.FLOW_CONCURRENCY / seconds
    runs = []
    for i in range(min(ctx.runs, 3)):  # a run is a minute or more: three are enough beside the rate limit's
        if runs and not budget.allows(runs[-1]["span_s"] + 10):
            break
        run = _limited_run(ctx, count, seconds, budget)
        runs.append(run)
        ctx.say(f"  limited job, run {i + 1}: {run['rate']:,.0f} jobs/s (ideal {ideal:,.0f}; {run['finished']} jobs "
                f"in {run['span_s']:.1f}s; at most {run['max_running']} running at once; hand-over per slot "
                f"{run['handover_ms']:.2f} ms)")
    ctx.record("flow_limited", {"count": count, "sleep_s": seconds, "workers": WORKERS, "threads": THREADS,
                                "concurrency": jobs.FLOW_CONCURRENCY, "ideal_rate": ideal, "runs": runs})
    partial = any(r["partial"] for r in runs)
    ctx.figure("flow_limited", f"limited job: concurrency {jobs.FLOW_CONCURRENCY}, {seconds * 1000:g} ms jobs, "
               f"{WORKERS} workers x {THREADS} (ideal {ideal:,.0f})", "jobs/s",
               harness.summary([r["rate"] for r in runs]), target=(">=", 0.9 * ideal), partial=partial)
    ctx.figure("flow_limited_max", "  most running at once (started_at / finished_at)", "jobs",
               harness.summary([r["max_running"] for r in runs]), target=("<=", jobs.FLOW_CONCURRENCY),
               partial=partial)
    ctx.figure("flow_limited_handover", "  slot hand-over (5 / rate - 10 ms)", "ms",
               harness.summary([r["handover_ms"] for r in runs]))


# --- b. rate limit -------------------------------------------------------------------------------------------------

def _rest_seconds(ctx):
    """What the rate and backlog parts need after the limited runs (start-ups and inserts included)."""
    return _rate_seconds(ctx) + 40


def _rate_seconds(ctx):
    return ctx.count(60, 15)


def window_cycles(db, limit, after):
    """(mean, min) seconds between each start and the start `limit` later, for starts from `after` seconds past
    the first one. Under a sliding-window limit of `limit` per second, a start frees its place 1 s later, and the
    start that takes it comes some lag after: the mean cycle is 1 s plus that lag (the rate is limit / cycle), and
    the shortest is at least 1 s exactly when no second ever saw more than `limit` starts."""
    return db.execute(
        "SELECT extract(epoch FROM avg(cycle))::float8, extract(epoch FROM min(cycle))::float8 FROM ("
        "SELECT started_at, lead(started_at, %s) OVER (ORDER BY started_at) - started_at AS cycle "
        "FROM exekutor_jobs WHERE started_at IS NOT NULL) AS s, "
        "(SELECT min(started_at) AS t0 FROM exekutor_jobs) AS f "
        "WHERE cycle IS NOT NULL AND started_at >= t0 + %s * interval '1 second'", (limit, after))[0]


def max_starts_per_window(db):
    """The most starts in any window of one second, (t - 1 s, t] at microsecond resolution, as the limiter counts."""
    return db.scalar(
        "SELECT max(n) FROM (SELECT count(*) OVER (ORDER BY started_at RANGE BETWEEN interval '999999 microseconds' "
        "PRECEDING AND CURRENT ROW) AS n FROM exekutor_jobs WHERE started_at IS NOT NULL) AS w")


def _wait_for(db, procs, sql, what, timeout=30):
    """Until `sql` gives a true value, the workers alive meanwhile."""
    deadline = time.monotonic() + timeout
    while not db.scalar(sql):
        _check_alive(procs)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} within {timeout}s")
        time.sleep(0.05)


def _rate(ctx):
    """One run (a minute is 60 windows already): more jobs than the limit lets through, workers stopped after."""
    db, seconds = ctx.db, _rate_seconds(ctx)
    db.reset()
    insert_like(db, jobs.flow_rate.job(), jobs.FLOW_RATE * (seconds + 5))
    procs = start_workers(db)
    try:
        _wait_for(db, procs, "SELECT EXISTS (SELECT 1 FROM exekutor_jobs WHERE started_at IS NOT NULL)",
                  "no job started")
        time.sleep(seconds + 0.5)
        _check_alive(procs)
    finally:
        stop_workers(procs)
    # The steady part: after the first second (its burst is the limit's own allowance), to the last start.
    cycle, shortest = window_cycles(db, jobs.FLOW_RATE, 1)
    per_second = [r[0] for r in db.execute(
        "SELECT count(*) FROM exekutor_jobs, (SELECT min(started_at) AS t0 FROM exekutor_jobs) AS f "
        "WHERE started_at IS NOT NULL AND started_at < t0 + %s * interval '1 second' "
        "GROUP BY floor(extract(epoch FROM started_at - t0))", (seconds,))]
    run = {"seconds": seconds, "started": db.scalar("SELECT count(*) FROM exekutor_jobs WHERE started_at IS NOT NULL"),
           "cycle_s": cycle, "shortest_cycle_s": shortest, "rate": jobs.FLOW_RATE / cycle, "lag_ms": (cycle - 1) * 1000,
           "max_in_1s": max_starts_per_window(db), "per_second_counts": sorted(per_second)}
    ctx.say(f"  rate limit {jobs.FLOW_RATE}/s over {seconds}s: {run['rate']:.2f} starts/s after the first second "
            f"(a start {run['lag_ms']:.2f} ms after its place came free, on average; shortest cycle "
            f"{shortest:.6f}s), at most {run['max_in_1s']} in any 1 s window; per whole second: min "
            f"{min(per_second)}, max {max(per_second)}")
    ctx.record("flow_rate", {"workers": WORKERS, "threads": THREADS, "limit": jobs.FLOW_RATE, "run": run})
    ctx.figure("flow_rate", f"rate limit {jobs.FLOW_RATE}/s, starts per second held {seconds} s "
               f"({WORKERS} workers)", "starts/s", harness.summary([run["rate"]]),
               target=(">=", jobs.FLOW_RATE * 0.98))
    ctx.figure("flow_rate_max", "  most starts in any 1 s window", "jobs", harness.summary([run["max_in_1s"]]),
               target=("<=", jobs.FLOW_RATE))
    ctx.figure("flow_rate_lag", "  a start's lag after its place in the window came free (mean)", "ms",
               harness.summary([run["lag_ms"]]))


# --- c. held-back backlog ------------------------------------------------------------------------------------------

HELD = 100_000


# Due at the transaction's now(), which the reservation in the same transaction compares with (the column's
# default, clock_timestamp(), is later).
RUNNABLE_JOB = "INSERT INTO exekutor_jobs (payload, scheduled_at) VALUES (%s::jsonb, now())"


def reservation_times(db, worker_id, tries=20):
    """The worker's reservation statement (limit THREADS) for one runnable no-op job, `tries` times, each in a
    transaction rolled back (the worker never sees the job): seconds, client side."""
    conn = harness.connect(db.url, autocommit=False)
    times = []
    try:
        with conn.cursor() as cursor:
            params = reserve_params(worker_id, THREADS)
            for _ in range(tries):
                cursor.execute(RUNNABLE_JOB, (NOOP_PAYLOAD,))
                started = time.perf_counter()
                cursor.execute(RESERVE_JOBS, params)
                got = sum(row[0] is not None for row in cursor.fetchall())  # not the walk's account
                times.append(time.perf_counter() - started)
                conn.rollback()
                if got != 1:
                    raise RuntimeError(f"the reservation took {got} jobs, expected the 1 runnable one")
            cursor.execute(RUNNABLE_JOB, (NOOP_PAYLOAD,))
            plan = explain(cursor, RESERVE_JOBS, params)
            conn.rollback()
    finally:
        conn.close()
    return times, plan


def _produce(db, count, interval, budget):
    """The latency scenario's producer (another process): [job id, before, after] of each perform_later."""
    out = tempfile.NamedTemporaryFile(prefix="exekutor-bench-flow-", suffix=".json", delete=False)
    out.close()
    try:
        producer = harness.spawn(["-m", "benchmarks.producer", str(count), str(interval), out.name], db.url,
                                 "producer")
        try:
            producer.wait(max(10.0, budget.remaining()))
        except subprocess.TimeoutExpired:
            pass
        if producer.returncode != 0:
            raise RuntimeError(f"the producer failed or overran its budget:\n{harness.log_tail(producer)}")
        harness.stop_process(producer)
        with open(out.name, encoding="utf-8") as handle:
            return json.load(handle)
    finally:
        os.unlink(out.name)


def _commit_to_start(db, records, timeout=10):
    """Milliseconds from each perform_later's return (its commit) to the job's started_at."""
    ids = [r[0] for r in records]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        started = dict(db.execute("SELECT id::text, extract(epoch FROM started_at)::float8 FROM exekutor_jobs "
                                  "WHERE id = ANY(%s::uuid[]) AND started_at IS NOT NULL", (ids,)))
        if len(started) == len(ids):
            break
        time.sleep(0.05)
    return sorted((started[job_id] - after) * 1000 for job_id, _, after in records if job_id in started)


def _backlog(ctx, budget):
    db = ctx.db
    tries = ctx.count(100, 30)
    db.reset()
    procs = start_workers(db, count=1)
    try:
        harness.wait_worker_listening(db, procs[0])
        worker_id = db.scalar("SELECT id::text FROM exekutor_workers LIMIT 1")
        empty_times, _ = reservation_times(db, worker_id)
        # The backlog as exekutor_start_limited leaves it: pending, blocked_on the limit key, no slot held.
        started = time.monotonic()
        hold = jobs.flow_hold.job(max(60.0, budget.remaining()))
        insert_like(db, hold, HELD, blocked_on="concurrency job " + hold.limits[0])
        insert_s = time.monotonic() - started
        jobs.flow_hold.perform_later(max(60.0, budget.remaining()))  # the one that runs and holds the slot
        # The one long job runs, and holds the limit's only slot.
        _wait_for(db, procs, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e'", "the long job did not start")
        time.sleep(1.5)  # past a poll: its sweep of the held-back limits has run and found no free slot
        backlog_times, plan = reservation_times(db, worker_id)
        records = _produce(db, tries, 0.02, budget)
        latencies = _commit_to_start(db, records)
        held = db.scalar("SELECT count(*) FROM exekutor_jobs WHERE status = 'p' AND blocked_on IS NOT NULL")
    finally:
        stop_workers(procs, timeout=2)  # the long job would hold a graceful stop: killed after 2 s
    ctx.say(f"  backlog: {HELD:,} held-back jobs inserted in {insert_s:.1f}s (with VACUUM ANALYZE); still held "
            f"at the end: {held:,}")
    ctx.say(f"  EXPLAIN (ANALYZE, BUFFERS) of RESERVE_JOBS (limit {THREADS}) with the backlog, 1 runnable job:")
    ctx.say("    " + plan.replace("\n", "\n    "))
    pct = harness.percentile
    run = {"held": HELD, "still_held": held, "insert_s": round(insert_s, 2), "tries": len(records),
           "started": len(latencies), "p50_ms": pct(latencies, 0.5), "p99_ms": pct(latencies, 0.99),
           "max_ms": latencies[-1] if latencies else None,
           "reserve_empty_ms": statistics.median(empty_times) * 1000,
           "reserve_backlog_ms": statistics.median(backlog_times) * 1000, "plan": plan}
    ctx.say(f"  commit to start with the backlog: p50 {run['p50_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms "
            f"({run['started']}/{run['tries']} started); reservation statement {run['reserve_backlog_ms']:.2f} ms "
            f"(empty table {run['reserve_empty_ms']:.2f} ms)")
    ctx.record("flow_backlog", run)
    partial = run["started"] < run["tries"]
    ctx.figure("flow_backlog_p50", f"{HELD:,} held back: runnable job, commit to start p50 ({len(records)} jobs)",
               "ms", harness.summary([run["p50_ms"]]), target=("<=", 10.0), partial=partial)
    ctx.figure("flow_backlog_p99", "  the same, p99", "ms", harness.summary([run["p99_ms"]]), target=("<=", 10.0),
               partial=partial)
    ctx.figure("flow_backlog_reserve", f"  reservation statement with the backlog (median of {len(backlog_times)})",
               "ms", harness.summary([run["reserve_backlog_ms"]]))
    ctx.figure("flow_backlog_reserve_empty", "  the same, empty table", "ms",
               harness.summary([run["reserve_empty_ms"]]))
