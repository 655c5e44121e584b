"""Soak: a steady mixed load for minutes, to see whether any cost grows with time.

    python -m benchmarks.soak                      # 3 minutes at 600 jobs/s
    python -m benchmarks.soak --minutes 20         # what the README quotes
    python -m benchmarks.soak --snapshot           # with a session holding a snapshot the whole time
    python -m benchmarks.soak --cleanup-rows 200000  # also a cleanup of that many finished rows halfway

One worker process (`--threads 100`, health port for /metrics) on a fresh database `exekutor_bench_soak` whose
autovacuum is off for exekutor_jobs (as on a server where it lags behind, or cannot clean because of a held
snapshot). A producer in this process enqueues every 100 ms a batch of `rate / 10` jobs with `enqueue_many`:
70 % no-op, 20 % IO (a 50 ms cooperative sleep), 5 % failing (no retry), 5 % running past a 50 ms
execution_timeout. Every window (30 s) it reports the jobs finished, the pickup p50/p99 (started_at - enqueued_at,
both the database's clock), the mean completion and reservation statement times as the worker times them (its
own counters from /metrics: the round trip and its event loop's turns included), the completion statement's time
on the server (EXPLAIN ANALYZE of the worker's completion statement for as many executing jobs as the worker's
mean batch in the window, inserted for it, in a transaction rolled back; the median of five), dead
rows and the table's size, and the worker's RSS. At the end it drains and reconciles every job: each ended with the
status its kind must give, at attempt 1 (a job run twice would be at attempt 2); none is lost.
"""
import argparse
import contextlib
import json
import random
import socket
import statistics
import sys
import threading
import time
import urllib.request
import uuid

from benchmarks import harness

DATABASE = harness.BENCH_DATABASE + "_soak"
WINDOW = 30.0
PROBES = 5  # completion probes per window (their median counts)
KINDS = (("noop", 0.70, "c"), ("io", 0.20, "c"), ("fails", 0.05, "f"), ("times_out", 0.05, "d"))


def main(argv=None):
    args = _parse(argv)
    harness.install_signal_handlers()
    db = harness.BenchDatabase(name=DATABASE)
    db.create()
    try:
        run(db, args)
    finally:
        harness._stop_all_children()
        db.drop()


def _parse(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.soak", description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=3.0)
    parser.add_argument("--rate", type=int, default=600, help="jobs per second (default 600)")
    parser.add_argument("--threads", type=int, default=100)
    parser.add_argument("--snapshot", action="store_true", help="hold a snapshot open for the whole run")
    parser.add_argument("--cleanup-rows", type=int, default=0, help="delete this many finished rows halfway")
    return parser.parse_args(argv)


def run(db, args):
    db.execute("ALTER TABLE exekutor_jobs SET (autovacuum_enabled = false)")
    holder = _hold_snapshot(db) if args.snapshot else None
    port = _free_port()
    worker = harness.start_worker(db.url, args.threads, extra=("--healthcheck-port", str(port)))
    harness.wait_worker_listening(db, worker)
    print(f"soak: {args.minutes:g} min at {args.rate} jobs/s, worker pid {worker.pid}, --threads {args.threads}"
          f"{', a snapshot held' if holder else ''}; {harness.machine_info()}", flush=True)
    stop = threading.Event()
    producer = threading.Thread(target=_produce, args=(db.url, args.rate, stop), daemon=True)
    producer.start()
    windows, started = [], time.monotonic()
    end = started + args.minutes * 60
    cleanup_at = started + args.minutes * 30 if args.cleanup_rows else None
    metrics = _statement_counters(port)
    try:
        while time.monotonic() < end:
            window_start = db.scalar("SELECT now()")
            time.sleep(min(WINDOW, max(0.0, end - time.monotonic())))
            if cleanup_at and time.monotonic() >= cleanup_at:
                _cleanup(db, args.cleanup_rows)
                cleanup_at = None
            counters = _statement_counters(port)
            statements = counters["completion"][0] - metrics["completion"][0]
            windows.append(_window(db, worker, window_start, _mean_ms(metrics["completion"], counters["completion"])))
            windows[-1]["reservation_ms"] = _mean_ms(metrics["reservation"], counters["reservation"])
            metrics = counters
            # The probe's batch is the window's mean batch: finished jobs per completion statement.
            batch = max(1, round(windows[-1]["finished"] / statements)) if statements else 1
            probes = [_server_completion(db, batch) for _ in range(PROBES)]
            windows[-1]["server_completion_ms"], plan = sorted(probes, key=lambda probe: probe[0])[PROBES // 2]
            windows[-1]["batch"] = batch
            windows[-1]["full"] = time.monotonic() < end  # the last one is cut short
            _print_window(len(windows), windows[-1])
    finally:
        stop.set()
        producer.join(10)
    drained = _drain(db, 120)
    harness.stop_process(worker)
    if windows:
        print("  plan of the last probe's completion statement:\n" + "\n".join("    " + line for line in plan))
    _report(windows, _reconcile(db, drained))
    if holder is not None:
        holder.close()


def _hold_snapshot(db):
    conn = harness.connect(db.url, autocommit=False)
    with conn.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("SELECT count(*) FROM exekutor_workers")  # takes the snapshot
    return conn


def _produce(url, rate, stop):
    """Every 100 ms, rate/10 jobs in one enqueue_many (its own commit)."""
    import exekutor
    from benchmarks import jobs  # noqa: F401 - registers the jobs

    exekutor.configure(database_url=url)
    per_tick, tick = max(1, rate // 10), 0.1
    kinds = [name for name, share, _ in KINDS for _ in range(round(share * 100))]
    next_tick = time.monotonic()
    while not stop.is_set():
        requests = [_request(random.choice(kinds)) for _ in range(per_tick)]
        exekutor.enqueue_many(requests)
        next_tick += tick
        time.sleep(max(0.0, next_tick - time.monotonic()))


def _request(kind):
    from benchmarks import jobs

    if kind == "noop":
        return jobs.noop.set(queue="noop").job()
    if kind == "io":
        return jobs.sleep.set(queue="io").job(0.05)
    if kind == "fails":
        return jobs.fails.set(queue="fails").job()
    return jobs.sleep.set(queue="times_out", execution_timeout=0.05).job(1.0)


def _statement_counters(port):
    """{"completion" | "reservation": (statements, seconds)} from the worker's /metrics."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        text = response.read().decode()
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name.startswith(("exekutor_completion_statement", "exekutor_reservation_statement")):
            values[name] = float(value)
    return {kind: (values.get(f"exekutor_{kind}_statements_total", 0.0),
                   values.get(f"exekutor_{kind}_statement_seconds_total", 0.0))
            for kind in ("completion", "reservation")}


def _server_completion(db, batch):
    """(ms, plan lines): the worker's completion statement for `batch` executing jobs of an unknown worker, as the
    server runs it on the table as it is now (EXPLAIN ANALYZE: planning and execution), all rolled back."""
    from exekutor.enqueue import new_job_id
    from exekutor.execution import Outcome
    from exekutor.worker.completer import completion

    worker_id, ids = str(uuid.uuid4()), [str(new_job_id()) for _ in range(batch)]  # time-ordered, as enqueue's
    conn = harness.connect(db.url, autocommit=False)
    try:
        with conn.cursor() as cursor:
            cursor.execute("INSERT INTO exekutor_jobs (id, queue, payload, status, worker_id, attempts, started_at) "
                           "SELECT id, 'probe', '{\"job\": \"probe\"}', 'e', %s, 1, now() "
                           "FROM unnest(%s::uuid[]) AS id RETURNING id::text", (worker_id, ids))
            outcomes = [Outcome(row[0], "c", 0.001, attempts=1) for row in cursor.fetchall()]
            sql, params = completion(outcomes, worker_id, json.dumps)
            cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + cursor.mogrify(sql, params).decode())
            plan = [row[0] for row in cursor.fetchall()]
        times = [float(line.split(":")[1].split()[0]) for line in plan if line.startswith(("Planning", "Execution"))]
        return sum(times), plan
    finally:
        conn.rollback()
        conn.close()


def _mean_ms(before, after):
    """The mean time (ms) of the statements counted between two readings of one (statements, seconds) pair."""
    statements = after[0] - before[0]
    return (after[1] - before[1]) / statements * 1000 if statements else None


def _window(db, worker, since, completion_ms):
    finished, p50, p99 = db.execute(
        "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY pickup), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY pickup) FROM (SELECT extract(epoch FROM started_at - "
        "enqueued_at) * 1000 AS pickup FROM exekutor_jobs "
        # On the index of finished rows: a scan of the whole growing table would load the machine it measures.
        "WHERE status IN ('c', 'f', 'd') AND finished_at >= %s) AS w", (since,))[0]
    dead, size = db.execute(
        "SELECT n_dead_tup, pg_total_relation_size('exekutor_jobs') FROM pg_stat_user_tables "
        "WHERE relname = 'exekutor_jobs'")[0]
    seconds = db.scalar("SELECT extract(epoch FROM now() - %s)", (since,))
    return {"finished": finished, "finished_per_s": finished / float(seconds), "pickup_p50_ms": p50,
            "pickup_p99_ms": p99,
            "completion_ms": completion_ms, "dead_rows": dead, "table_mb": size / 2**20,
            "worker_rss_mb": harness.rss_bytes(worker.pid) / 2**20}


def _print_window(number, w):
    print(f"  window {number:3}: {w['finished_per_s']:7.0f} jobs/s  pickup p50 {_ms(w['pickup_p50_ms'])}  p99 "
          f"{_ms(w['pickup_p99_ms'])}  completion {_ms(w['completion_ms'])} (server "
          f"{_ms(w['server_completion_ms'])}, {w['batch']} jobs)  reservation {_ms(w['reservation_ms'])}  "
          f"dead rows {w['dead_rows']:,}  "
          f"table {w['table_mb']:.0f} MB  worker {w['worker_rss_mb']:.0f} MB", flush=True)


def _ms(value):
    return f"{value:7.2f} ms" if value is not None else "      - ms"


def _cleanup(db, rows):
    from exekutor.cleanup import Cleanup

    started = time.monotonic()
    oldest = db.scalar("SELECT finished_at FROM exekutor_jobs WHERE status IN ('c', 'f', 'd') ORDER BY finished_at "
                       "OFFSET %s LIMIT 1", (rows,))
    deleted = Cleanup(db.url).cleanup_jobs(before=oldest) if oldest else 0
    print(f"  cleanup: deleted {deleted:,} finished jobs in {time.monotonic() - started:.1f}s", flush=True)


def _drain(db, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not db.scalar("SELECT count(*) FROM exekutor_jobs WHERE status IN ('p', 'e')"):
            return True
        time.sleep(0.5)
    return False


def _reconcile(db, drained):
    """Every job ended with the status its kind (its queue) must give, at attempt 1 (a job run twice is at 2)."""
    expected = {name: status for name, _, status in KINDS}
    rows = db.execute("SELECT queue, status, attempts = 1, count(*) FROM exekutor_jobs GROUP BY 1, 2, 3")
    problems = [] if drained else ["jobs still pending or executing 120 s after the load stopped"]
    for queue, status, once, count in rows:
        if status != expected.get(queue):
            problems.append(f"{count} {queue} job(s) {status!r} instead of {expected.get(queue)!r}")
        if not once:
            problems.append(f"{count} {queue} job(s) ran more than once")
    return {"jobs": sum(row[3] for row in rows), "problems": problems}


def _report(windows, reconciliation):
    if not windows:
        print("no window completed")
        return
    # The last window is cut short by the end of the run: only full windows compare, three at each end (one window
    # can hold a checkpoint's or a vacuum's stall).
    full = [w for w in windows if w["full"]] or windows
    first = {key: statistics.median(w[key] for w in full[:3]) for key in ("pickup_p99_ms", "worker_rss_mb")}
    last = {**full[-1], "pickup_p99_ms": statistics.median(w["pickup_p99_ms"] for w in full[-3:])}
    means = [w["completion_ms"] for w in windows if w["completion_ms"] is not None]
    print(f"\nsoak: {reconciliation['jobs']:,} jobs, "
          + ("every one reconciled (its kind's status, one run)" if not reconciliation["problems"] else
             "PROBLEMS: " + "; ".join(reconciliation["problems"])))
    print(f"  pickup p99, median of the first three windows {_ms(first['pickup_p99_ms'])}, of the last three "
          f"{_ms(last['pickup_p99_ms'])} "
          f"(ratio {last['pickup_p99_ms'] / first['pickup_p99_ms']:.2f}; target <= 1.5)")
    if means:
        print(f"  completion statement as the worker times it (its event loop included), mean over the windows "
              f"{statistics.mean(means):.2f} ms, worst window "
              f"{max(means):.2f} ms (target < 2 ms)")
    reservations = [w["reservation_ms"] for w in full if w["reservation_ms"] is not None]
    if reservations:
        print(f"  reservation statement as the worker times it, mean: first window {reservations[0]:.2f} ms, last "
              f"{reservations[-1]:.2f} ms, worst {max(reservations):.2f} ms")
    servers = [w["server_completion_ms"] for w in windows]
    print(f"  completion statement on the server (a batch of the window's mean size, planning included), mean over "
          f"the windows "
          f"{statistics.mean(servers):.2f} ms, first window {servers[0]:.2f} ms, worst {max(servers):.2f} ms, last "
          f"{servers[-1]:.2f} ms (target < 2 ms)")
    print(f"  dead rows at the end {last['dead_rows']:,}, table {last['table_mb']:.0f} MB, worker RSS "
          f"{first['worker_rss_mb']:.0f} -> {last['worker_rss_mb']:.0f} MB")
    if reconciliation["problems"]:
        sys.exit(1)


def _free_port():
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
