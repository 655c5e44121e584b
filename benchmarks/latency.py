"""Latency: from just before the producer's INSERT to the job's start, on an idle listening worker.

The producer (benchmarks/producer.py, another process) enqueues 500 no-op jobs one at a time with
`perform_later` (autocommit, so its insert and commit are inside the figure), 5 ms apart, noting the wall
time just before each call. A job's start is its `started_at` column, set to now() by the reservation
statement that took it. Both clocks are this machine's. p50 / p95 / p99 per run, then median/min/max over
the runs.
"""
import json
import os
import subprocess
import tempfile
import time

from benchmarks import harness


def _one_run(ctx, threads, count, interval, budget):
    db = ctx.db
    db.reset()
    worker = harness.start_worker(db.url, threads)
    try:
        harness.wait_worker_listening(db, worker)
        time.sleep(0.5)  # let the start-up poll finish: measure an idle worker
        idle_rss = harness.rss_bytes(worker.pid)
        records = run_producer(["-m", "benchmarks.producer", str(count), str(interval)], db.url, budget)
        wait_drained(db)
    finally:
        harness.stop_process(worker)
    started = dict(db.execute("SELECT id::text, extract(epoch FROM started_at)::float8 FROM exekutor_jobs "
                              "WHERE id = ANY(%s::uuid[])", ([r[0] for r in records],)))
    return {"threads": threads, **latency_figures(records, started), "idle_rss_mb": round((idle_rss or 0) / 2**20, 1)}


def run_producer(args, url, budget, python=None, extra_env=None):
    """Runs a producer process (`args` + the output file it writes) to its end, within what is left of the
    budget; returns its records: [job id, wall time before the enqueue call, wall time after it]."""
    out = tempfile.NamedTemporaryFile(prefix="exekutor-bench-latency-", suffix=".json", delete=False)
    out.close()
    try:
        producer = harness.spawn([*args, out.name], url, "producer", python=python, extra_env=extra_env)
        try:
            producer.wait(max(10.0, budget.remaining()))
        except subprocess.TimeoutExpired:
            pass
        if producer.returncode != 0:
            tail = harness.log_tail(producer)
            harness.stop_process(producer)
            raise RuntimeError(f"the producer failed or overran its budget:\n{tail}")
        harness.stop_process(producer)
        with open(out.name, encoding="utf-8") as handle:
            return json.load(handle)
    finally:
        os.unlink(out.name)


def wait_drained(db, timeout=10):
    """Until the worker has taken every job (at most `timeout` seconds: a missing start is reported)."""
    deadline = time.monotonic() + timeout
    while db.unfinished() and time.monotonic() < deadline:
        time.sleep(0.05)


def latency_figures(records, started):
    """Percentiles of a producer's records against each job's start (`started`: job id -> epoch seconds)."""
    latencies, calls, waits, missing = [], [], [], 0
    for job_id, before, after in records:
        calls.append((after - before) * 1000)
        if started.get(job_id) is None:
            missing += 1
            continue
        latencies.append((started[job_id] - before) * 1000)
        waits.append((started[job_id] - after) * 1000)  # the worker's share: from the call's return
    latencies.sort()
    calls.sort()
    waits.sort()
    pct = harness.percentile
    return {"jobs": len(records), "not_started": missing,
            "p50_ms": pct(latencies, 0.50), "p95_ms": pct(latencies, 0.95), "p99_ms": pct(latencies, 0.99),
            "max_ms": latencies[-1] if latencies else None, "min_ms": latencies[0] if latencies else None,
            "enqueue_call_p50_ms": pct(calls, 0.50), "enqueue_call_p99_ms": pct(calls, 0.99),
            "after_call_p50_ms": pct(waits, 0.50), "after_call_p99_ms": pct(waits, 0.99)}


def scenario_latency(ctx):
    budget = ctx.new_budget("latency")
    threads = ctx.best_threads or ctx.threads_candidates[0]
    count, interval = ctx.count(500, 200), 0.005
    runs = []
    for i in range(ctx.runs):
        if runs and not budget.allows(count * interval + 5):
            break
        run = _one_run(ctx, threads, count, interval, budget)
        runs.append(run)
        ctx.say(f"  run {i + 1}: p50 {run['p50_ms']:.2f} ms, p95 {run['p95_ms']:.2f} ms, p99 {run['p99_ms']:.2f} ms "
                f"(the perform_later call: p50 {run['enqueue_call_p50_ms']:.2f} ms, "
                f"p99 {run['enqueue_call_p99_ms']:.2f} ms; "
                f"from its return to the job's start: p50 {run['after_call_p50_ms']:.2f} ms, "
                f"p99 {run['after_call_p99_ms']:.2f} ms; {run['not_started']} not started)")
    ctx.db.reset()
    ctx.record("latency", {"count": count, "interval_s": interval, "threads": threads, "runs": runs,
                           "budget_overrun": budget.overrun})
    for key, target in (("p50", ("<=", 2.0)), ("p95", None), ("p99", ("<=", 5.0))):
        ctx.figure(f"latency_{key}", f"latency {key}, enqueue commit to job start", "ms",
                   harness.summary([r[f"{key}_ms"] for r in runs]), target=target,
                   partial=any(r["not_started"] for r in runs))
    ctx.figure("latency_enqueue_call", "  of which the perform_later call (p50)", "ms",
               harness.summary([r["enqueue_call_p50_ms"] for r in runs]))
    ctx.figure("latency_enqueue_call_p99", "  of which the perform_later call (p99)", "ms",
               harness.summary([r["enqueue_call_p99_ms"] for r in runs]))
    ctx.figure("latency_after_call_p50", "  from perform_later's return to the job's start (p50)", "ms",
               harness.summary([r["after_call_p50_ms"] for r in runs]))
    ctx.figure("latency_after_call_p99", "  from perform_later's return to the job's start (p99)", "ms",
               harness.summary([r["after_call_p99_ms"] for r in runs]))
    ctx.figure("idle_rss", "worker RSS, idle", "MB", harness.summary([r["idle_rss_mb"] for r in runs]))
