"""`python -m benchmarks peers`: exekutor and PgQueuer 1.6 (asyncpg + uvloop) side by side, same workloads.

Not part of `all`. PgQueuer runs from its own virtualenv and database (benchmarks/peer_env.py); its worker is its own
CLI, `pgq run benchmarks.peers.pgq_app:main` (benchmarks/peers/), with the options in PGQ_WORKER_OPTIONS;
exekutor's no-op worker runs at the best --threads of the no-op sweep when that ran in the same suite, else at
the one --threads value given, else 100. Each repetition runs every workload on both, the order of the two
alternating from one repetition to the next, so that drift on a shared machine hits both alike; each figure is the
median over the repetitions (`--runs`, default 3 here; 1 with --quick), and the ratio is exekutor's median over
PgQueuer's.

- no-op drain: N pending no-op jobs inserted beforehand by one INSERT ... SELECT (PgQueuer's with the 'queued' log
  rows its enqueue writes), VACUUM ANALYZE, then the worker process is exec'd. Rate from the exec (placed in the
  server's clock, harness.ServerClock) to the last completion the database recorded (exekutor's `finished_at`,
  PgQueuer's 'successful' log row), and from the first pickup to it. Jobs per CPU-second: the worker process's
  user + system CPU (psutil) when the drain is seen done, start-up included; and after start-up (from when the
  driver, polling every 10 ms, first sees a completion).
- IO-bound: the same with N jobs that each sleep 50 ms cooperatively (gevent.sleep / asyncio.sleep), 200 at once
  (exekutor `--threads 200`, PgQueuer `--max-concurrent-tasks 200`): jobs/s and % of the ideal 4,000/s, from the
  exec and from the first pickup ("from ready").
- pickup latency: an idle worker, a producer process enqueuing 500 jobs one at a time 5 ms apart (exekutor:
  benchmarks/producer.py, `perform_later`; PgQueuer: `Queries.enqueue` on asyncpg, benchmarks/peers/pgq_client.py);
  latency = the job's pickup (exekutor `started_at`, PgQueuer's 'picked' log row) - the producer's wall clock just
  before its call.
- enqueue one at a time: exekutor `noop.perform_later(i)` in autocommit (this process, the pooled connection), and
  `noop.set(connection=conn).perform_later(i)` + `conn.commit()` on the application's own psycopg2 connection (one
  transaction per job); PgQueuer `Queries.enqueue("noop", payload)` on one asyncpg connection, autocommit and one
  transaction per job. Each after three warm-up jobs, in 6 rounds of a sixth of the jobs (2 with --quick) that
  alternate between the two: the rate hangs on every round trip, so a burst of other work on the machine would
  otherwise fall on one side only. The rate is all the jobs over the time of all the rounds.
- bulk: exekutor `enqueue_many` of requests built with `noop.job(i)` (both timed) vs PgQueuer's batch
  `Queries.enqueue(entrypoints, payloads, priorities)` (building the lists and the call).
"""
import json
import subprocess
import time

from benchmarks import harness, latency, peer_env
from benchmarks.jobs import NOOP_PAYLOAD, sleep_payload

SLEEP_S = 0.05
IO_CONCURRENCY = 200
LATENCY_INTERVAL = 0.005
# PgQueuer's worker: its CLI (asyncpg, uvloop) with its documented --batch-size at 100 instead of its default 10:
# in a trial here (10, 50, 100; two rounds) 100 drained no-op jobs fastest, 1.3-1.8x its default, and the IO
# workload no slower. Quiet as exekutor's --quiet. The IO workload caps it at 200 running jobs
# (--max-concurrent-tasks, which must be at least twice the batch size), its equivalent of exekutor's --threads 200.
PGQ_BATCH_SIZE = 100
PGQ_WORKER_OPTIONS = ("--log-level", "WARNING", "--batch-size", str(PGQ_BATCH_SIZE))
PGQ_IO_OPTIONS = ("--max-concurrent-tasks", str(IO_CONCURRENCY))
DEFAULT_RUNS = 3
NOOP_THREADS = 100  # exekutor's no-op --threads when no sweep chose one


class ExekutorSide:
    name = "exekutor"

    def __init__(self, ctx):
        self.db = ctx.db
        self.noop_threads = ctx.best_threads or NOOP_THREADS

    def prepare(self, workload, count):
        self.db.reset()
        self.db.insert_pending(count, NOOP_PAYLOAD if workload == "noop" else sleep_payload(SLEEP_S))

    def start(self, workload):
        return harness.start_worker(self.db.url, self.noop_threads if workload == "noop" else IO_CONCURRENCY)

    def finished(self):
        return self.db.scalar("SELECT count(*) FROM exekutor_jobs WHERE status IN ('c', 'f', 'd')")

    def moments(self):
        """(completed, first pickup epoch, last completion epoch, not completed)."""
        return tuple(self.db.execute(
            "SELECT count(*) FILTER (WHERE status = 'c'), extract(epoch FROM min(started_at))::float8, "
            "extract(epoch FROM max(finished_at))::float8, count(*) FILTER (WHERE status <> 'c') "
            "FROM exekutor_jobs WHERE status IN ('c', 'f', 'd')")[0])


class PgqSide:
    name = "PgQueuer"

    def __init__(self, db):
        self.db = db

    def prepare(self, workload, count):
        self.db.reset()
        self.db.insert_pending(count, workload)

    def start(self, workload):
        options = PGQ_WORKER_OPTIONS + (PGQ_IO_OPTIONS if workload == "sleep" else ())
        return self.spawn(["-m", "pgqueuer", "run", "benchmarks.peers.pgq_app:main", *options], "pgq-worker")

    def spawn(self, args, log_name):
        return harness.spawn(args, self.db.url, log_name, python=peer_env.PYTHON,
                             extra_env=peer_env.peer_env(self.db.url))

    def finished(self):
        return self.db.scalar("SELECT count(*) FROM pgqueuer_log WHERE status = 'successful'")

    def moments(self):
        return tuple(self.db.execute(
            "SELECT count(*) FILTER (WHERE status = 'successful'), "
            "extract(epoch FROM min(created) FILTER (WHERE status = 'picked'))::float8, "
            "extract(epoch FROM max(created) FILTER (WHERE status = 'successful'))::float8, "
            "count(*) FILTER (WHERE status NOT IN ('successful', 'picked', 'queued')) FROM pgqueuer_log")[0])

    def client(self, *args, timeout):
        """benchmarks/peers/pgq_client.py in the peers' virtualenv; its JSON answer."""
        result = subprocess.run([peer_env.PYTHON, "-m", "benchmarks.peers.pgq_client", *map(str, args)],
                                cwd=harness.REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                                env=harness.child_env(self.db.url) | peer_env.peer_env(self.db.url))
        if result.returncode != 0:
            raise RuntimeError(f"pgq_client {' '.join(map(str, args))} failed:\n{result.stderr[-2000:]}")
        return json.loads(result.stdout.strip().splitlines()[-1])


# --- worker workloads ------------------------------------------------------------------------------------------

def drain(side, workload, count, timeout):
    """Exec a worker on `count` prepared jobs, wait until it has finished them, stop it; a run record."""
    side.prepare(workload, count)
    clock = harness.ServerClock(side.db)
    exec_perf = time.perf_counter()
    proc = side.start(workload)
    exec_at = clock.at(exec_perf)
    first_seen, partial = None, False  # (CPU, jobs finished) when a finished job is first seen
    deadline = time.monotonic() + timeout
    try:
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"the {side.name} worker exited with status {proc.returncode}:\n"
                                   f"{harness.log_tail(proc)}")
            if first_seen is None:
                cpu = harness.cpu_seconds(proc.pid)  # before the count: the jobs it counts cost no CPU after it
                finished = side.finished()
                first_seen = (cpu, finished) if finished else None
            elif not side.db.unfinished():
                break
            if time.monotonic() > deadline:
                partial = True
                break
            time.sleep(0.01 if first_seen is None else 0.1)
        cpu = harness.cpu_seconds(proc.pid)
    finally:
        harness.stop_process(proc)
    done, first, last, bad = side.moments()
    return _drain_record(count, done, bad, exec_at, first, last, cpu, first_seen, partial)


def _drain_record(count, done, bad, exec_at, first, last, cpu, first_seen, partial):
    from_exec = done / (last - exec_at) if done and last else None
    from_first = done / (last - first) if done and last and last > first else None
    running = None
    if cpu is not None and first_seen and first_seen[0] is not None and cpu > first_seen[0]:
        running = (done - first_seen[1]) / (cpu - first_seen[0])
    return {"jobs": count, "completed": done, "not_completed": bad, "partial": partial,
            "exec_to_first_pickup_s": round(first - exec_at, 4) if first else None,
            "exec_to_last_s": round(last - exec_at, 4) if last else None,
            "rate_from_exec": from_exec, "rate_from_first": from_first,
            "cpu_s": cpu, "first_completion_seen": first_seen,
            "jobs_per_cpu_s": done / cpu if cpu else None, "jobs_per_cpu_s_running": running}


def pgq_latency(pgq, count, budget):
    """PgQueuer's pickup latency on an idle worker (the exekutor side is latency._one_run)."""
    pgq.db.reset()
    worker = pgq.start("noop")
    try:
        _wait_pgq_idle(pgq, worker)
        time.sleep(0.5)  # as for exekutor: an idle worker, not one finishing its start
        records = latency.run_producer(["-m", "benchmarks.peers.pgq_client", "produce", str(count),
                                        str(LATENCY_INTERVAL)], pgq.db.url, budget, python=peer_env.PYTHON,
                                       extra_env=peer_env.peer_env(pgq.db.url))
        latency.wait_drained(pgq.db)
    finally:
        harness.stop_process(worker)
    picked = dict(pgq.db.execute("SELECT job_id, extract(epoch FROM created)::float8 FROM pgqueuer_log "
                                 "WHERE status = 'picked' AND job_id = ANY(%s)", ([r[0] for r in records],)))
    return latency.latency_figures(records, picked)


def _wait_pgq_idle(pgq, worker, timeout=30):
    """Until the worker has run one job (it listens before its first dequeue): it is up and waiting."""
    pgq.db.insert_pending(1, "noop")
    deadline = time.monotonic() + timeout
    while pgq.db.unfinished():
        if worker.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the PgQueuer worker did not start:\n{harness.log_tail(worker)}")
        time.sleep(0.02)


# --- enqueueing ---------------------------------------------------------------------------------------------------

def exekutor_one_by_one(ctx, count, transaction):
    """perform_later `count` times: autocommit on the pooled connection, or each in a transaction of the
    application's own psycopg2 connection."""
    from benchmarks import jobs

    ctx.db.reset()
    conn = harness.connect(ctx.db.url, autocommit=False) if transaction else None
    try:
        for n in range(3):  # warm-up: the pool's (or the set()'s) first use
            (jobs.noop.set(connection=conn) if conn else jobs.noop).perform_later(n)
            if conn:
                conn.commit()
        started = time.perf_counter()
        if conn is None:
            for n in range(count):
                jobs.noop.perform_later(n)
        else:
            for n in range(count):
                jobs.noop.set(connection=conn).perform_later(n)
                conn.commit()
        seconds = time.perf_counter() - started
    finally:
        if conn is not None:
            conn.close()
    return {"jobs": count, "seconds": seconds, "rate": count / seconds}


def exekutor_bulk(ctx, count):
    import exekutor
    from benchmarks import jobs

    ctx.db.reset()
    exekutor.enqueue_many([jobs.noop.job(n) for n in range(3)])  # warm-up
    started = time.perf_counter()
    requests = [jobs.noop.job(n) for n in range(count)]
    built = time.perf_counter()
    exekutor.enqueue_many(requests)
    done = time.perf_counter()
    return {"jobs": count, "build_s": built - started, "insert_s": done - built, "seconds": done - started,
            "rate": count / (done - started), "insert_rate": count / (done - built)}


# --- the scenario -----------------------------------------------------------------------------------------------

# (key, label, unit, workload, field, goal on the ratio exekutor / PgQueuer, or on exekutor's own figure)
ROWS = (
    ("noop", "no-op drain of {noop}, process start to last completion", "jobs/s", "noop", "rate_from_exec",
     ("ratio", ">=", 1.6)),
    ("noop_span", "  the same, first pickup to last completion", "jobs/s", "noop", "rate_from_first", None),
    ("noop_start", "  of which: process exec to the first pickup", "s", "noop", "exec_to_first_pickup_s", None),
    ("noop_cpu", "no-op jobs per worker CPU-second (whole process)", "jobs/CPU-s", "noop", "jobs_per_cpu_s",
     ("ratio", ">=", 2.0)),
    ("noop_cpu_running", "  the same, after start-up (jobs and CPU from the first completion seen)", "jobs/CPU-s",
     "noop", "jobs_per_cpu_s_running", None),
    ("io", "IO-bound {io} x 50 ms, 200 at once, process start to last completion", "jobs/s", "sleep",
     "rate_from_exec", None),
    ("io_ideal", "  % of ideal (4,000/s) from process start", "%", "sleep", "ideal_pct_from_exec", None),
    ("io_ready", "  % of ideal from ready (first pickup)", "%", "sleep", "ideal_pct_from_first",
     ("exekutor", ">=", 95.0)),
    ("latency_p50", "pickup latency p50, idle worker, {latency} jobs 5 ms apart", "ms", "latency", "p50_ms", None),
    ("latency_p99", "pickup latency p99", "ms", "latency", "p99_ms", ("ratio", "<=", 0.7)),
    ("enqueue_one", "enqueue one at a time, autocommit ({one} jobs)", "jobs/s", "enqueue_one", "rate",
     ("ratio", ">=", 1.2)),
    ("enqueue_tx", "enqueue one at a time, one transaction each", "jobs/s", "enqueue_tx", "rate",
     ("ratio", ">=", 1.2)),
    ("bulk", "bulk enqueue of {bulk} (building + the call)", "jobs/s", "bulk", "rate", ("ratio", ">=", 1.3)),
)
WORKLOADS = ("noop", "sleep", "latency", "enqueue_one", "enqueue_tx", "bulk")
ROUNDS_OF = ("enqueue_one", "enqueue_tx")  # measured in alternating rounds (_in_rounds)
ENQUEUE_ROUNDS = 6


def scenario_peers(ctx):
    version = peer_env.ensure_venv(ctx.say)
    ctx.say(f"  PgQueuer {version} in {peer_env.VENV}")
    budget = ctx.new_budget("peers")
    counts = {"noop": ctx.count(20000, 5000), "io": ctx.count(5000, 2000), "latency": ctx.count(500, 200),
              "one": ctx.count(3000, 500), "bulk": ctx.count(20000, 5000)}
    runs = ctx.runs if ctx.quick or ctx.runs_given else DEFAULT_RUNS
    pgq_db = peer_env.PgqDatabase(ctx.db.admin)
    ctx.extra_databases.append(pgq_db)
    pgq_db.create()
    sides = (ExekutorSide(ctx), PgqSide(pgq_db))
    results = {workload: {side.name: [] for side in sides} for workload in WORKLOADS}
    try:
        for repetition in range(runs):
            if repetition and not budget.allows(budget.spent() / repetition):
                break
            order = sides if repetition % 2 == 0 else sides[::-1]
            for workload in WORKLOADS:
                if workload in ROUNDS_OF:
                    records = _in_rounds(ctx, order, workload, counts, ctx.count(ENQUEUE_ROUNDS, 2), budget)
                else:
                    records = {side.name: _run(ctx, side, workload, counts, budget) for side in order}
                for name, record in records.items():
                    results[workload][name].append(record)
            ctx.say(f"  repetition {repetition + 1}: " + _progress(results))
    finally:
        pgq_db.drop()
        ctx.extra_databases.remove(pgq_db)
        from exekutor.db.pool import reset_default_pool

        reset_default_pool()
        ctx.db.reset()
    comparison = _compare(ctx, results, counts)
    ctx.record("peers", {"pgqueuer_version": version, "counts": counts, "repetitions": runs,
                         "exekutor_noop_threads": sides[0].noop_threads, "pgq_worker_options": PGQ_WORKER_OPTIONS,
                         "pgq_io_options": PGQ_IO_OPTIONS, "runs": results, "comparison": comparison,
                         "budget_overrun": budget.overrun})


def _run(ctx, side, workload, counts, budget):
    timeout = max(20.0, budget.remaining())
    if workload in ("noop", "sleep"):
        record = drain(side, workload, counts["noop" if workload == "noop" else "io"], timeout)
        if workload == "sleep":
            ideal = IO_CONCURRENCY / SLEEP_S
            for key in ("exec", "first"):
                rate = record[f"rate_from_{key}"]
                record[f"ideal_pct_from_{key}"] = rate / ideal * 100 if rate else None
        return record
    if workload == "latency":
        if side.name == "exekutor":
            return latency._one_run(ctx, ctx.best_threads or ctx.threads_candidates[0], counts["latency"],
                                    LATENCY_INTERVAL, budget)
        return pgq_latency(side, counts["latency"], budget)
    transaction = workload == "enqueue_tx"
    if side.name == "exekutor":
        if workload == "bulk":
            return exekutor_bulk(ctx, counts["bulk"])
        return exekutor_one_by_one(ctx, counts["one"], transaction)
    side.db.reset()
    if workload == "bulk":
        return side.client("bulk", counts["bulk"], timeout=timeout)
    return side.client("one", counts["one"], *(["--transaction"] if transaction else []), timeout=timeout)


def _in_rounds(ctx, order, workload, counts, rounds, budget):
    """One-by-one enqueueing in `rounds` alternating rounds of a share of the jobs each: its rate hangs on every
    round trip, so a burst of other work on the machine would otherwise fall on one side only. The record is the
    total: jobs / the seconds of all its rounds."""
    share = {**counts, "one": max(1, counts["one"] // rounds)}
    parts = {side.name: [] for side in order}
    for number in range(rounds):
        for side in order if number % 2 == 0 else order[::-1]:
            parts[side.name].append(_run(ctx, side, workload, share, budget))
    return {name: {"jobs": sum(r["jobs"] for r in runs), "seconds": sum(r["seconds"] for r in runs),
                   "rate": sum(r["jobs"] for r in runs) / sum(r["seconds"] for r in runs),
                   "round_rates": [r["rate"] for r in runs]} for name, runs in parts.items()}


def _progress(results):
    def last(workload, name, field):
        runs = results[workload][name]
        value = runs[-1].get(field) if runs else None
        return f"{value:,.0f}" if value else "-"

    return "; ".join(f"{workload} exekutor {last(workload, 'exekutor', field)} / PgQueuer "
                     f"{last(workload, 'PgQueuer', field)}"
                     for workload, field in (("noop", "rate_from_exec"), ("sleep", "rate_from_exec"),
                                             ("enqueue_one", "rate"), ("enqueue_tx", "rate"), ("bulk", "rate")))


def _compare(ctx, results, counts):
    """The figures of both (rows of the main table) and the side-by-side comparison, with the goals."""
    from benchmarks.report import passes

    comparison = []
    for key, label, unit, workload, field, goal in ROWS:
        label = label.format(noop=f"{counts['noop']:,}", io=f"{counts['io']:,}", latency=counts["latency"],
                             one=f"{counts['one']:,}", bulk=f"{counts['bulk']:,}")
        stats = {name: harness.summary([r.get(field) for r in runs]) for name, runs in results[workload].items()}
        mine, theirs = stats["exekutor"]["median"], stats["PgQueuer"]["median"]
        ratio = mine / theirs if mine is not None and theirs else None
        on, target = (goal[0], goal[1:]) if goal else (None, None)
        partial = any(r.get("partial") for runs in results[workload].values() for r in runs)
        ctx.figure(f"peers_{key}_pgqueuer", f"{label}: PgQueuer", unit, stats["PgQueuer"], partial=partial)
        ctx.figure(f"peers_{key}_exekutor", f"{label}: exekutor", unit, stats["exekutor"],
                   target=target if on == "exekutor" else None, partial=partial)
        per_pair = [a / b for a, b in zip(stats["exekutor"]["values"], stats["PgQueuer"]["values"]) if b]
        ctx.figure(f"peers_{key}_ratio", "  ratio exekutor / PgQueuer", "ratio",
                   {**harness.summary(per_pair), "median": ratio}, target=target if on == "ratio" else None)
        judged = ratio if on == "ratio" else mine
        comparison.append({"key": key, "label": label, "unit": unit, "pgqueuer": theirs, "exekutor": mine,
                           "ratio": ratio, "goal": f"{'ratio' if on == 'ratio' else 'exekutor'} {target[0]} "
                                                   f"{target[1]:g}" if goal else "",
                           "pass": passes(target, judged) if goal else None})
    return comparison
