"""Worker throughput: no-op drain (with a --threads sweep), IO concurrency (and memory), big table.

Each run starts from a known table: truncated (or just the filler rows for the big table), N pending jobs
inserted by one INSERT ... SELECT generate_series, then VACUUM ANALYZE. Then one worker process is started
(`python -m exekutor start --app benchmarks.jobs --threads N --poll-interval 1 --quiet`) and the driver
waits until no job is pending or executing.

The rate is jobs / (last finished_at - first started_at), both columns written by the worker's own
statements (the reservation's now() and the completion's now()): it measures the drain itself, without the
process start-up (imports, connecting), which is reported separately as the wall-clock rate from the
process start to the moment the driver saw the queue empty.
"""
import os
import shutil
import signal
import subprocess
import sys
import time

from benchmarks import harness
from benchmarks.housekeeping import measure_housekeeping
from benchmarks.jobs import NOOP_PAYLOAD, sleep_payload
from benchmarks.operations import measure_listing

POLL = 0.1  # how often the driver looks at the queue (two index-only counts)


def drain(ctx, threads, expected, timeout, where="TRUE", sample_rss=False, label="noop", db=None):
    """Start a worker on the prepared table, wait until it has drained it, stop it; returns a run record."""
    db = db or ctx.db
    proc = harness.start_worker(db.url, threads)
    started = time.monotonic()
    peak_rss, max_executing, partial = 0, 0, False
    profiler = None
    try:
        profiler = _start_profiler(ctx, proc, f"{label}-t{threads}")
        deadline = started + timeout
        cpu_base = _cpu_at_registration(db, proc, deadline)
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the worker exited with status {proc.returncode}:\n{harness.log_tail(proc)}")
            pending, executing = db.execute(
                "SELECT (SELECT count(*) FROM exekutor_jobs WHERE status = 'p'), "
                "(SELECT count(*) FROM exekutor_jobs WHERE status = 'e')")[0]
            max_executing = max(max_executing, executing)
            if sample_rss:
                peak_rss = max(peak_rss, harness.rss_bytes(proc.pid) or 0)
            if pending + executing == 0:
                break
            if time.monotonic() > deadline:
                partial = True
                break
            time.sleep(POLL)
        wall = time.monotonic() - started
        rss_end = harness.rss_bytes(proc.pid)
        # CPU used since registration by the worker process and by the server processes of its
        # connections: where the machine's two cores went.
        cpu_worker, cpu_postgres = _cpu_since(db, proc, cpu_base)
    finally:
        _stop_profiler(profiler)
        harness.stop_process(proc)
    count, span, bad = db.drain_span(where)
    reserves, completes = db.rounds(where)

    def per_job(cpu):
        return round(cpu / count * 1e6, 1) if cpu is not None and count else None

    return {
        "threads": threads, "expected": expected, "finished": count, "not_completed": bad, "partial": partial,
        "span_s": round(span, 4), "rate": count / span if span > 0 else None,
        "wall_s": round(wall, 3), "wall_rate": count / wall if wall > 0 else None,
        "peak_rss_mb": round(peak_rss / 2**20, 1) if sample_rss else None,
        "rss_end_mb": round((rss_end or 0) / 2**20, 1), "max_executing_rows_seen": max_executing,
        "reserve_statements": reserves, "jobs_per_reserve": round(count / reserves, 1) if reserves else None,
        "complete_statements": completes, "jobs_per_complete": round(count / completes, 1) if completes else None,
        "worker_cpu_s": cpu_worker, "postgres_cpu_s": cpu_postgres,
        "worker_cpu_us_per_job": per_job(cpu_worker), "postgres_cpu_us_per_job": per_job(cpu_postgres),
    }


def _cpu_at_registration(db, proc, deadline):
    """CPU counters of the worker and its server processes once its row exists (imports and start-up done;
    with jobs already pending, reservation starts right then). Polled every 10 ms."""
    while time.monotonic() < deadline and proc.poll() is None:
        if db.scalar("SELECT count(*) FROM exekutor_workers"):
            break
        time.sleep(0.01)
    return (harness.cpu_seconds(proc.pid),
            {pid: harness.cpu_seconds(pid) for pid in harness.backend_pids(db)})


def _cpu_since(db, proc, base):
    worker_base, backend_base = base
    now = harness.cpu_seconds(proc.pid)
    worker = now - worker_base if now is not None and worker_base is not None else None
    postgres = None
    for pid in harness.backend_pids(db):
        used = harness.cpu_seconds(pid)
        if used is not None:
            postgres = (postgres or 0.0) + used - (backend_base.get(pid) or 0.0)
    return worker, postgres


def _start_profiler(ctx, proc, name):
    """With --profile DIR: py-spy records the worker (speedscope format) until the drain ends."""
    if not ctx.profile_dir:
        return None
    os.makedirs(ctx.profile_dir, exist_ok=True)
    ctx.profile_seq += 1
    path = os.path.join(ctx.profile_dir, f"{ctx.profile_seq:02d}-{name}.speedscope.json")
    profiler = subprocess.Popen([_py_spy(), "record", "--pid", str(proc.pid), "--rate", "250", "--format",
                                 "speedscope", "--output", path, "--nonblocking"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    harness._children[profiler.pid] = profiler
    time.sleep(0.2)
    return profiler


def _py_spy():
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    found = beside if os.path.exists(beside) else shutil.which("py-spy")
    if not found:
        raise RuntimeError("--profile needs py-spy: pip install py-spy")
    return found


def _stop_profiler(profiler):
    if profiler is None:
        return
    try:
        os.kill(profiler.pid, signal.SIGINT)  # py-spy writes its output on SIGINT
        profiler.wait(20)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        pass
    harness.stop_process(profiler, timeout=5)


def _run_noop(ctx, threads, count, budget):
    ctx.db.reset()
    ctx.db.insert_pending(count, NOOP_PAYLOAD)
    return drain(ctx, threads, count, timeout=max(10.0, budget.remaining()), label="noop")


def _estimate(runs, default):
    """Seconds the next run will take, from the previous ones (wall time plus set-up)."""
    walls = [r["wall_s"] for r in runs if r.get("wall_s")]
    return (max(walls) + 2.0) if walls else default


def scenario_noop(ctx):
    """20,000 pending no-op jobs drained by one worker: a --threads sweep (one shorter run each), then the
    runs at the best --threads."""
    budget = ctx.new_budget("noop")
    count = ctx.count(20000, 5000)
    candidates = ctx.threads_candidates
    sweep = []
    if len(candidates) > 1:
        sweep_count = ctx.count(10000, 3000)
        for threads in candidates:
            if sweep and not budget.allows(_estimate(sweep, 10)):
                break
            run = _run_noop(ctx, threads, sweep_count, budget)
            sweep.append(run)
            ctx.say(f"  sweep --threads {threads:>4}: {_fmt_rate(run['rate'])} jobs/s "
                    f"({run['finished']} jobs in {run['span_s']:.2f}s)")
        best = max(sweep, key=lambda r: r["rate"] or 0)["threads"]
    else:
        best = candidates[0]
    ctx.best_threads = best
    runs = []
    for i in range(ctx.runs):
        if runs and not budget.allows(_estimate(runs, 15)):
            break
        run = _run_noop(ctx, best, count, budget)
        runs.append(run)
        ctx.say(f"  --threads {best} run {i + 1}: {_fmt_rate(run['rate'])} jobs/s "
                f"({run['finished']} jobs in {run['span_s']:.2f}s; start to done {run['wall_s']:.2f}s; "
                f"CPU per job: worker {run['worker_cpu_us_per_job']} us, postgres {run['postgres_cpu_us_per_job']} us; "
                f"up to {run['max_executing_rows_seen']} rows executing; {run['jobs_per_reserve']} jobs per reserve, "
                f"{run['jobs_per_complete']} per complete)")
    rates = harness.summary([r["rate"] for r in runs])
    ctx.noop_empty = rates
    ctx.record("noop", {"count": count, "best_threads": best, "sweep": sweep, "runs": runs,
                        "budget_overrun": budget.overrun})
    ctx.figure("noop", f"no-op throughput (--threads {best})", "jobs/s", rates, target=(">=", 12000),
               throughput=True, partial=any(r["partial"] for r in runs))
    ctx.figure("noop_wall", f"no-op, process start to all done (--threads {best})", "jobs/s",
               harness.summary([r["wall_rate"] for r in runs]), throughput=True)
    for run in sweep:
        ctx.figure(f"noop_sweep_{run['threads']}", f"  sweep: --threads {run['threads']} (1 run, "
                   f"{run['expected']} jobs)", "jobs/s", harness.summary([run["rate"]]), throughput=True)


def scenario_io(ctx):
    """5,000 jobs that each gevent.sleep(0.05) on 200 greenlets (ideal: 4,000 jobs/s); the worker's resident
    memory is sampled throughout (the memory figure)."""
    budget = ctx.new_budget("io")
    count, threads, seconds = ctx.count(5000, 2000), 200, 0.05
    runs = []
    for i in range(ctx.runs):
        if runs and not budget.allows(_estimate(runs, 10)):
            break
        ctx.db.reset()
        ctx.db.insert_pending(count, sleep_payload(seconds))
        run = drain(ctx, threads, count, timeout=max(10.0, budget.remaining()), sample_rss=True, label="io")
        runs.append(run)
        ctx.say(f"  run {i + 1}: {_fmt_rate(run['rate'])} jobs/s ({run['finished']} jobs in {run['span_s']:.2f}s), "
                f"peak RSS {run['peak_rss_mb']} MB, up to {run['max_executing_rows_seen']} rows executing at once; "
                f"{run['reserve_statements']} reserves of {run['jobs_per_reserve']} jobs on average)")
    ideal = threads / seconds
    ctx.record("io", {"count": count, "threads": threads, "sleep_s": seconds, "ideal_rate": ideal, "runs": runs,
                      "budget_overrun": budget.overrun})
    ctx.figure("io", f"IO concurrency ({threads} greenlets, {seconds * 1000:g} ms sleeps; ideal {ideal:,.0f})",
               "jobs/s", harness.summary([r["rate"] for r in runs]), target=(">=", 3600), throughput=True,
               partial=any(r["partial"] for r in runs))
    ctx.figure("memory", f"worker peak RSS, {threads} busy greenlets", "MB",
               harness.summary([r["peak_rss_mb"] for r in runs]), target=("<", 100))


FILLER_QUEUE = "filler"


def fill_big_table(db, rows):
    """`rows` finished jobs (98 % completed, 1 % failed, 1 % discarded) in one INSERT ... SELECT; the insert
    trigger is off meanwhile (none of them is pending, and its transition table would only cost time)."""
    db.execute("ALTER TABLE exekutor_jobs DISABLE TRIGGER exekutor_jobs_notify_insert")
    try:
        db.execute(
            "INSERT INTO exekutor_jobs (queue, payload, status, attempts, enqueued_at, scheduled_at, started_at, "
            "finished_at, runtime) "
            "SELECT %s, %s::jsonb, CASE i %% 100 WHEN 0 THEN 'f' WHEN 1 THEN 'd' ELSE 'c' END, 1, t, t, t, "
            "t + interval '1 millisecond', 0.001 "
            "FROM (SELECT i, now() - i * interval '10 milliseconds' AS t FROM generate_series(1, %s) AS i) AS s",
            (FILLER_QUEUE, NOOP_PAYLOAD, rows))
    finally:
        db.execute("ALTER TABLE exekutor_jobs ENABLE TRIGGER exekutor_jobs_notify_insert")
    db.vacuum()


BIG_DATABASE = harness.BENCH_DATABASE + "_big"


def scenario_bigtable(ctx):
    """The no-op drain with 1,000,000 finished jobs in the table, as a ratio to the empty table.

    The big table lives in a second database (`exekutor_bench_big`, created, migrated and dropped here), so
    that empty-table and big-table runs can alternate: on a shared machine the load drifts within minutes,
    and only runs made side by side compare. The ratio is taken per pair (big run / the empty run just
    before it), then median/min/max over the pairs."""
    budget = ctx.new_budget("bigtable")
    threads = ctx.best_threads or ctx.threads_candidates[0]
    count = ctx.count(20000, 5000)
    filler = ctx.count(1_000_000, 200_000)
    big_db = harness.BenchDatabase(ctx.db.admin, BIG_DATABASE)
    ctx.extra_databases.append(big_db)
    big_db.create()
    try:
        started = time.monotonic()
        fill_big_table(big_db, filler)
        fill_s = time.monotonic() - started
        size = big_db.scalar("SELECT pg_size_pretty(pg_total_relation_size('exekutor_jobs'))")
        ctx.say(f"  filled {filler:,} finished jobs in {fill_s:.1f}s (table with indexes: {size})")
        measure_listing(ctx, big_db, filler)
        where = f"queue <> '{FILLER_QUEUE}'"
        empty_runs, runs = [], []
        for i in range(ctx.runs):
            if runs and not budget.allows(2 * _estimate(runs + empty_runs, 15)):
                break
            empty_runs.append(_run_noop(ctx, threads, count, budget))
            big_db.execute(f"DELETE FROM exekutor_jobs WHERE {where}")
            big_db.insert_pending(count, NOOP_PAYLOAD)
            runs.append(drain(ctx, threads, count, timeout=max(10.0, budget.remaining()), where=where,
                              label="bigtable", db=big_db))
            ctx.say(f"  pair {i + 1}: empty table {_fmt_rate(empty_runs[-1]['rate'])} jobs/s, big table "
                    f"{_fmt_rate(runs[-1]['rate'])} jobs/s")
        measure_housekeeping(ctx, big_db)
    finally:
        big_db.drop()
        ctx.extra_databases.remove(big_db)
    big = harness.summary([r["rate"] for r in runs])
    empty = harness.summary([r["rate"] for r in empty_runs])
    ratio = harness.summary([b["rate"] / e["rate"] for b, e in zip(runs, empty_runs) if b["rate"] and e["rate"]])
    ctx.record("bigtable", {"filler_rows": filler, "fill_s": round(fill_s, 1), "table_size": size,
                            "threads": threads, "count": count, "runs": runs, "empty_table_runs": empty_runs,
                            "budget_overrun": budget.overrun})
    ctx.figure("bigtable", f"no-op with {filler:,} finished jobs in the table (--threads {threads})", "jobs/s",
               big, throughput=True, partial=any(r["partial"] for r in runs))
    ctx.figure("bigtable_empty", f"  the same, empty table, runs alternating with those (--threads {threads})",
               "jobs/s", empty, throughput=True, partial=any(r["partial"] for r in empty_runs))
    ctx.figure("bigtable_ratio", "big table / empty table (no-op), per pair", "ratio", ratio, target=(">=", 0.90))
    ctx.db.reset()


def _fmt_rate(rate):
    return f"{rate:,.0f}" if rate else "-"
