"""Soak: a steady mixed load for minutes, to see whether any cost grows with time.

    python -m benchmarks.soak                      # 3 minutes at 600 jobs/s
    python -m benchmarks.soak --minutes 20         # what the README quotes
    python -m benchmarks.soak --snapshot           # with a session holding a snapshot the whole time
    python -m benchmarks.soak --cleanup-rows 200000  # also a cleanup of that many finished rows halfway
    python -m benchmarks.soak --database exekutor_bench_soak2 --minutes 1  # a trial beside a running soak

One worker process (`--threads 100`, health port for /metrics) on a fresh database `exekutor_bench_soak` (or
`--database NAME`, which must start with `exekutor_bench`: it is dropped if it exists, and at the end) whose
autovacuum is off for exekutor_jobs (as on a server where it lags behind, or cannot clean because of a held
snapshot). A producer in this process enqueues every 100 ms a batch of `rate / 10` jobs with `enqueue_many`:
70 % no-op, 20 % IO (a 50 ms cooperative sleep), 5 % failing (no retry), 5 % running past a 50 ms
execution_timeout. Every window (30 s) prints one line:

- jobs/s: the jobs finished in the window, and the jobs the producer enqueued in it (the offered rate), per second;
- pickup p50/p99: started_at - enqueued_at of the jobs finished in the window (both the database's clock);
- completion: the mean completion statement time as the worker times it (its own counters from /metrics, the
  round trip and its event loop's turns included), then its time on the server (EXPLAIN ANALYZE, planning
  included, of the worker's completion statement for as many executing jobs as the worker's mean batch in the
  window, inserted for it, in a transaction rolled back; the median of five);
- reservation: the mean reservation statement time as the worker times it (/metrics) and how many it sent in the
  window; then the reservation statement on the server, twice (below): planning + execution time, the shared
  buffers it hit and, of those, the ones its walk hit (its scans of the pending index), each the median of five;
- dead rows of exekutor_jobs (n_dead_tup; the probes' rolled-back rows count too, a few thousand a window at
  most), the size of the table (pg_relation_size), of all its indexes (pg_indexes_size) and of the pending index
  (exekutor_jobs_pending_idx, the one a reservation walks) alone, and the worker's RSS;
- BEHIND when the worker fell behind in the window: its pickup p50 exceeded 1 s, or the jobs it finished fell below
  90 % of those offered (enqueued by the producer) in the window.

The reservation probe: EXPLAIN (ANALYZE, BUFFERS) of the worker's RESERVE_JOBS, limit = --threads, kept to rows of
its own as the completion probe is. In a transaction that is rolled back it inserts as many pending jobs as the
worker's mean reservation in the window (jobs finished / reservation statements, at most --threads), at the soak's
priority, in a queue of its own, due at the transaction's now() (the end of the index's due part), and the
statement asks for that queue only. So it walks every entry a worker's walk visits (the dead entries, and the
worker's ready jobs, which its queue filter passes over before any row lock: the worker never finds one of its jobs
held by the probe, and no floor of the worker rises past one), then reserves its own jobs: the walk of a worker that
keeps up (a reservation that finds fewer jobs than its limit walks to the end of the due entries). The queue goes
in as a sub-select, which the planner cannot fold into a seek of the pending-by-queue index: the plan is the
worker's, with a filter on the queue (the last window's, with floors, is printed at the end). Twice:

- floors: the floors of a worker in steady state, approximated. The running worker's are not visible (not in
  /metrics), and a probe that rolls back proves nothing to raise floors with; so they are built as the worker
  builds them, ReservationFloors(1, 32767) raised by a reservation at the probe's now() minus 1 s that found fewer
  jobs than its limit, having reserved jobs of the soak's priority (every floor at that time, that priority a range
  of its own). A worker that keeps up raises its floors at every reservation (many a second), and notifications
  lower them only to the enqueue time of the batch they announce (100 ms apart here): this walk covers about a
  second of the load's entries, more than a worker's: an upper bound on the steady state, which must not grow.
- from start: floors at minus infinity. The walk of every reservation before floors existed, and of a worker's first
  reservation after a reset (listener reconnection, failed reservation); it grows with the dead entries.

At the end it drains and reconciles every job: each ended with the status its kind must give, at attempt 1 (a job
run twice would be at attempt 2); none is lost. The summary: the reconciliation; the median pickup p99 of the first
three full windows and of the last three and their ratio (the goal: at most 2); whether the worker ever fell behind
(above) and in which windows; the statement times first and last; the dead rows, table and index sizes after the
drain (the worker stopped, its statistics flushed) against the first window's; the worker's RSS.
"""
import argparse
import contextlib
import json
import random
import re
import socket
import statistics
import sys
import threading
import time
import urllib.request
import uuid

from psycopg2.extensions import AsIs

from benchmarks import harness

DATABASE = harness.BENCH_DATABASE + "_soak"
WINDOW = 30.0
PROBES = 5  # probes of each statement per window (their median counts)
KINDS = (("noop", 0.70, "c"), ("io", 0.20, "c"), ("fails", 0.05, "f"), ("times_out", 0.05, "d"))
PROBE_QUEUE = "soak-probe"  # the reservation probe's own jobs: no job of the load is ever in it
FLOOR_AGE = 1.0  # seconds: the steady-state floors the reservation probe starts from (see the docstring)
BEHIND_P50_MS = 1000.0  # a window whose pickup p50 exceeds this fell behind...
BEHIND_SHARE = 0.9  # ...and one that finished fewer than this share of the jobs offered in it
GOAL_RATIO = 2.0  # pickup p99, last three windows over the first three


def main(argv=None):
    args = _parse(argv)
    harness.install_signal_handlers()
    db = harness.BenchDatabase(name=args.database)
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
    parser.add_argument("--database", default=DATABASE,
                        help=f"the database to create, use and drop (default {DATABASE}; must start with "
                             f"{harness.BENCH_DATABASE})")
    args = parser.parse_args(argv)
    if not re.fullmatch(harness.BENCH_DATABASE + r"\w*", args.database):
        parser.error(f"--database must start with {harness.BENCH_DATABASE} (letters, digits, _): it is dropped")
    return args


def run(db, args):
    db.execute("ALTER TABLE exekutor_jobs SET (autovacuum_enabled = false)")
    holder = _hold_snapshot(db) if args.snapshot else None
    port = _free_port()
    worker = harness.start_worker(db.url, args.threads, extra=("--healthcheck-port", str(port)))
    harness.wait_worker_listening(db, worker)
    print(f"soak: {args.minutes:g} min at {args.rate} jobs/s on {db.name}, worker pid {worker.pid}, --threads "
          f"{args.threads}{', a snapshot held' if holder else ''}; {harness.machine_info()}", flush=True)
    priorities = sorted({_request(kind).priority for kind, _, _ in KINDS})
    stop, offered = threading.Event(), [0]
    producer = threading.Thread(target=_produce, args=(db.url, args.rate, stop, offered), daemon=True)
    producer.start()
    windows, started = [], time.monotonic()
    end = started + args.minutes * 60
    cleanup_at = started + args.minutes * 30 if args.cleanup_rows else None
    metrics = _statement_counters(port)
    try:
        while time.monotonic() < end:
            window_start, offered_before = db.scalar("SELECT now()"), offered[0]
            time.sleep(min(WINDOW, max(0.0, end - time.monotonic())))
            if cleanup_at and time.monotonic() >= cleanup_at:
                _cleanup(db, args.cleanup_rows)
                cleanup_at = None
            counters = _statement_counters(port)
            w = _window(db, worker, window_start, offered[0] - offered_before)
            w["completion_ms"] = _mean_ms(metrics["completion"], counters["completion"])
            w["reservation_ms"] = _mean_ms(metrics["reservation"], counters["reservation"])
            completions = counters["completion"][0] - metrics["completion"][0]
            w["reservations"] = reservations = round(counters["reservation"][0] - metrics["reservation"][0])
            metrics = counters
            # The probes' batches are the window's means: finished jobs per completion (per reservation) statement.
            w["batch"] = max(1, round(w["finished"] / completions)) if completions else 1
            w["server_completion_ms"], completion_plan = _median(
                [_server_completion(db, w["batch"]) for _ in range(PROBES)])[:2]
            w["reserve_batch"] = min(args.threads, max(1, round(w["finished"] / reservations)) if reservations else 1)
            floors, start = [], []
            for _ in range(PROBES):  # alternated, so that both see the same table
                floors.append(_server_reservation(db, args.threads, w["reserve_batch"], priorities, FLOOR_AGE))
                start.append(_server_reservation(db, args.threads, w["reserve_batch"], priorities, None))
            w["floors_ms"], reservation_plan, w["floors_hit"], w["floors_walk"] = _median(floors)
            w["start_ms"], _, w["start_hit"], w["start_walk"] = _median(start)
            w["full"] = time.monotonic() < end  # the last one is cut short
            w["behind"] = _behind(w)
            windows.append(w)
            _print_window(len(windows), w)
    finally:
        stop.set()
        producer.join(10)
    drained = _drain(db, 120)
    harness.stop_process(worker)
    final = _sizes(db)  # the worker has exited: its statistics are flushed
    if windows:
        print("  plan of the last probe's completion statement:\n"
              + "\n".join("    " + line for line in completion_plan))
        print("  plan of the last probe's reservation statement (with floors):\n"
              + "\n".join("    " + line for line in reservation_plan))
    _report(windows, final, _reconcile(db, drained))
    if holder is not None:
        holder.close()


def _hold_snapshot(db):
    conn = harness.connect(db.url, autocommit=False)
    with conn.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        cursor.execute("SELECT count(*) FROM exekutor_workers")  # takes the snapshot
    return conn


def _produce(url, rate, stop, offered):
    """Every 100 ms, rate/10 jobs in one enqueue_many (its own commit); `offered[0]` counts them."""
    import exekutor
    from benchmarks import jobs  # noqa: F401 - registers the jobs

    exekutor.configure(database_url=url)
    per_tick, tick = max(1, rate // 10), 0.1
    kinds = [name for name, share, _ in KINDS for _ in range(round(share * 100))]
    next_tick = time.monotonic()
    while not stop.is_set():
        requests = [_request(random.choice(kinds)) for _ in range(per_tick)]
        exekutor.enqueue_many(requests)
        offered[0] += len(requests)
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
    """(ms, plan lines, shared buffers hit, 0): the worker's completion statement for `batch` executing jobs of an
    unknown worker, as the server runs it on the table as it is now (EXPLAIN ANALYZE: planning and execution), all
    rolled back."""
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
            return _explain(cursor, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) " + cursor.mogrify(sql, params).decode())
    finally:
        conn.rollback()
        conn.close()


def _server_reservation(db, limit, batch, priorities, floor_age):
    """(ms, plan lines, shared buffers hit, of which by the walk): the worker's reservation statement (limit
    `limit`) as the server runs it on the table as it is now, all rolled back. It reserves `batch` jobs of its own
    (PROBE_QUEUE, the soak's priority, due at the transaction's now()), walking every entry of the pending index a
    worker's walk would from its floors: all of them at now() - `floor_age` (the soak's priorities with a range of
    their own), or from the index's start with `floor_age` None. See the module's docstring."""
    from benchmarks.limit import statement_params
    from exekutor.db.queries import RESERVE_JOBS
    from exekutor.definitions import MAX_PRIORITY, MIN_PRIORITY
    from exekutor.enqueue import new_job_id
    from exekutor.worker.floors import ReservationFloors

    ids = [str(new_job_id()) for _ in range(batch)]
    conn = harness.connect(db.url, autocommit=False)
    try:
        with conn.cursor() as cursor:
            # Due at now() (the column's default, clock_timestamp(), is later than this transaction's now()).
            cursor.execute("INSERT INTO exekutor_jobs (id, queue, priority, payload, scheduled_at) "
                           "SELECT id, %s, %s, '{\"job\": \"probe\"}', now() FROM unnest(%s::uuid[]) AS id",
                           (PROBE_QUEUE, priorities[0], ids))
            floors = ReservationFloors(MIN_PRIORITY, MAX_PRIORITY)
            if floor_age is not None:
                now = float(_db_now(cursor))
                floors.begin()
                floors.end(now - floor_age, 0, limit, None, None, priorities)
            # A sub-select: a constant array would let the planner seek the pending-by-queue index instead.
            params = statement_params(RESERVE_JOBS, {
                "worker_id": str(uuid.uuid4()), "queues": AsIs(f"(SELECT ARRAY['{PROBE_QUEUE}'])"),
                "min_priority": MIN_PRIORITY, "max_priority": MAX_PRIORITY, "limit": limit, **floors.params()})
            probe = _explain(cursor, "EXPLAIN (ANALYZE, BUFFERS, COSTS OFF) "
                             + cursor.mogrify(RESERVE_JOBS, params).decode())
        if not any("Scan using exekutor_jobs_pending_idx" in line for line in probe[1]):
            raise RuntimeError("the reservation probe's plan does not walk the pending index, as the worker's does: "
                               "it would measure another plan\n" + "\n".join(probe[1]))
        return probe
    finally:
        conn.rollback()
        conn.close()


def _db_now(cursor):
    """The transaction's now() in epoch seconds (what the statement's now() will be)."""
    cursor.execute("SELECT extract(epoch FROM now())::float8")
    return cursor.fetchone()[0]


def _explain(cursor, statement):
    """(ms, plan lines, shared buffers hit, of which by the walk) of an EXPLAIN (ANALYZE, BUFFERS): planning +
    execution time; the buffers the top node hit (its children's included; planning's are not), and those the scans
    of the pending index hit (the reservation's walk; 0 in a completion)."""
    cursor.execute(statement)
    plan = [row[0] for row in cursor.fetchall()]
    times = [float(line.split(":")[1].split()[0]) for line in plan
             if line.startswith(("Planning Time:", "Execution Time:"))]
    return sum(times), plan, _hits(plan, 0), sum(_hits(plan, index + 1) for index, line in enumerate(plan)
                                                 if "Scan using exekutor_jobs_pending_idx" in line)


def _hits(plan, start):
    """The shared buffers hit of the plan node whose lines start at `start` (its first Buffers line, before any
    child node's)."""
    for line in plan[start:]:
        if line.lstrip().startswith("->") or line.startswith(("Planning", "Execution")):
            return 0
        match = re.search(r"Buffers: shared hit=(\d+)", line)
        if match:
            return int(match.group(1))
    return 0


def _median(probes):
    """The probe of median time among `probes` ((ms, ...) tuples)."""
    return sorted(probes, key=lambda probe: probe[0])[len(probes) // 2]


def _mean_ms(before, after):
    """The mean time (ms) of the statements counted between two readings of one (statements, seconds) pair."""
    statements = after[0] - before[0]
    return (after[1] - before[1]) / statements * 1000 if statements else None


def _window(db, worker, since, offered):
    finished, p50, p99 = db.execute(
        "SELECT count(*), percentile_cont(0.5) WITHIN GROUP (ORDER BY pickup), "
        "percentile_cont(0.99) WITHIN GROUP (ORDER BY pickup) FROM (SELECT extract(epoch FROM started_at - "
        "enqueued_at) * 1000 AS pickup FROM exekutor_jobs "
        # On the index of finished rows: a scan of the whole growing table would load the machine it measures.
        "WHERE status IN ('c', 'f', 'd') AND finished_at >= %s) AS w", (since,))[0]
    seconds = float(db.scalar("SELECT extract(epoch FROM now() - %s)", (since,)))
    return {"finished": finished, "finished_per_s": finished / seconds, "offered": offered,
            "offered_per_s": offered / seconds, "pickup_p50_ms": p50, "pickup_p99_ms": p99, **_sizes(db),
            "worker_rss_mb": harness.rss_bytes(worker.pid) / 2**20}


def _sizes(db):
    dead, table, indexes, pending = db.execute(
        "SELECT n_dead_tup, pg_relation_size('exekutor_jobs'), pg_indexes_size('exekutor_jobs'), "
        "pg_relation_size('exekutor_jobs_pending_idx') FROM pg_stat_user_tables WHERE relname = 'exekutor_jobs'")[0]
    return {"dead_rows": dead, "table_mb": table / 2**20, "indexes_mb": indexes / 2**20,
            "pending_idx_mb": pending / 2**20}


def _behind(w):
    """Why the worker fell behind in this window (see the docstring), or None."""
    reasons = []
    if w["pickup_p50_ms"] is not None and w["pickup_p50_ms"] > BEHIND_P50_MS:
        reasons.append(f"pickup p50 over {BEHIND_P50_MS / 1000:g} s")
    if w["finished"] < BEHIND_SHARE * w["offered"]:
        reasons.append(f"finished {w['finished']:,} < {BEHIND_SHARE:.0%} of {w['offered']:,} offered")
    return "; ".join(reasons) or None


def _print_window(number, w):
    print(f"  window {number:3}: {w['finished_per_s']:5.0f} of {w['offered_per_s']:4.0f} jobs/s  pickup p50 "
          f"{_ms(w['pickup_p50_ms'])} p99 {_ms(w['pickup_p99_ms'])} | completion {_ms(w['completion_ms'])} (server "
          f"{_ms(w['server_completion_ms'])}, {w['batch']} jobs) | reservation {_ms(w['reservation_ms'])} x "
          f"{w['reservations']:,} (server, {w['reserve_batch']} jobs: floors {_ms(w['floors_ms'])} "
          f"{w['floors_hit']:,} hit (walk {w['floors_walk']:,}), from start {_ms(w['start_ms'])} "
          f"{w['start_hit']:,} hit (walk {w['start_walk']:,})) | dead rows "
          f"{w['dead_rows']:,}  table {w['table_mb']:.1f} MB  indexes {w['indexes_mb']:.1f} MB  pending idx "
          f"{w['pending_idx_mb']:.2f} MB | worker {w['worker_rss_mb']:.0f} MB"
          + (f" | BEHIND: {w['behind']}" if w["behind"] else ""), flush=True)


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


def _report(windows, final, reconciliation):
    if not windows:
        print("no window completed")
        return
    # The last window is cut short by the end of the run: only full windows compare, three at each end (one window
    # can hold a checkpoint's or a vacuum's stall).
    full = [w for w in windows if w["full"]] or windows
    first, last = full[:3], full[-3:]
    print(f"\nsoak: {reconciliation['jobs']:,} jobs, "
          + ("every one reconciled (its kind's status, one run)" if not reconciliation["problems"] else
             "PROBLEMS: " + "; ".join(reconciliation["problems"])))
    p99_first, p99_last = (_median_of(ws, "pickup_p99_ms") for ws in (first, last))
    if p99_first and p99_last is not None:
        ratio = p99_last / p99_first
        print(f"  pickup p99, median of the first full windows ({len(first)}) {_ms(p99_first)}, of the last "
              f"({len(last)}) {_ms(p99_last)}: ratio {ratio:.2f} (goal <= {GOAL_RATIO:g}: "
              f"{'met' if ratio <= GOAL_RATIO else 'NOT MET'})")
    behind = [(number, w["behind"]) for number, w in enumerate(windows, 1) if w["behind"]]
    print("  fell behind (a window with pickup p50 over "
          f"{BEHIND_P50_MS / 1000:g} s, or finishing under {BEHIND_SHARE:.0%} of the jobs offered in it): "
          + ("never" if not behind else "in " + "; ".join(f"window {n} ({why})" for n, why in behind)))
    means = [w["completion_ms"] for w in windows if w["completion_ms"] is not None]
    if means:
        print(f"  completion statement as the worker times it (its event loop included), mean over the windows "
              f"{statistics.mean(means):.2f} ms, worst window {max(means):.2f} ms (target < 2 ms)")
    servers = [w["server_completion_ms"] for w in windows]
    print(f"  completion statement on the server (a batch of the window's mean size, planning included), mean over "
          f"the windows {statistics.mean(servers):.2f} ms, first window {servers[0]:.2f} ms, worst {max(servers):.2f} "
          f"ms, last {servers[-1]:.2f} ms (target < 2 ms)")
    reservations = [w["reservation_ms"] for w in full if w["reservation_ms"] is not None]
    if reservations:
        print(f"  reservation statement as the worker times it, mean: first window {reservations[0]:.2f} ms, last "
              f"{reservations[-1]:.2f} ms, worst {max(reservations):.2f} ms")
    for key, title in (("floors", "from steady-state floors"), ("start", "from the index's start")):
        first_w, last_w = windows[0], windows[-1]
        print(f"  reservation statement on the server {title}: first window {first_w[key + '_ms']:.2f} ms "
              f"({first_w[key + '_hit']:,} buffers hit, {first_w[key + '_walk']:,} by the walk), last "
              f"{last_w[key + '_ms']:.2f} ms ({last_w[key + '_hit']:,} hit, {last_w[key + '_walk']:,} by the walk), "
              f"worst {max(w[key + '_ms'] for w in windows):.2f} ms")
    start = windows[0]
    print(f"  after the drain: dead rows {final['dead_rows']:,}; first window -> end: table {start['table_mb']:.1f} -> "
          f"{final['table_mb']:.1f} MB, indexes {start['indexes_mb']:.1f} -> {final['indexes_mb']:.1f} MB, pending "
          f"index {start['pending_idx_mb']:.2f} -> {final['pending_idx_mb']:.2f} MB; worker RSS "
          f"{_median_of(first, 'worker_rss_mb'):.0f} -> {last[-1]['worker_rss_mb']:.0f} MB")
    if reconciliation["problems"]:
        sys.exit(1)


def _median_of(windows, key):
    values = [w[key] for w in windows if w[key] is not None]
    return statistics.median(values) if values else None


def _free_port():
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


if __name__ == "__main__":
    main()
