"""The limit: the worker's own reserve and complete statements driven by a bare psycopg2 loop.

No gevent, no pool, no job machinery: one autocommit connection runs RESERVE_JOBS (limit = batch), then
the completion of the ids it got, until the queue is empty. The statements are exekutor's own (imported
from exekutor.db.queries and the worker's completer), so this is what the database allows *for the SQL the
worker sends*; every throughput figure is also printed as a ratio to it (the batch equal to the worker's
best --threads).
"""
import json
import queue
import re
import threading
import time
import uuid

from benchmarks import harness
from benchmarks.jobs import NOOP_PAYLOAD
from exekutor.db.queries import REGISTER_WORKER, RESERVE_JOBS
from exekutor.execution import COMPLETED, Outcome
from exekutor.worker.completer import completion
from exekutor.worker.floors import ReservationFloors


def statement_params(sql, available):
    """The named parameters `sql` uses, taken from `available`: the statements are exekutor's and may
    change; a parameter this loop does not know fails loudly instead of measuring something else."""
    names = set(re.findall(r"%\((\w+)\)s", sql))
    unknown = names - set(available)
    if unknown:
        raise RuntimeError(f"the statement needs parameters the bare loop does not know: {sorted(unknown)}; "
                           "update benchmarks/limit.py to match exekutor/db/queries.py")
    return {name: available[name] for name in names}


def reserve_params(worker_id, batch, floors=None):
    """RESERVE_JOBS' parameters; without `floors`, the walk starts at the index's start (as after a reset)."""
    floors = floors or ReservationFloors(1, 32767)
    return statement_params(RESERVE_JOBS, {"worker_id": worker_id, "queues": None, "min_priority": 1,
                                           "max_priority": 32767, "limit": batch, **floors.params()})


def reserve(cursor, worker_id, batch, floors):
    """One reservation as the worker's provider makes it: from its floors, which the walk's account raises (no
    notification can come here, and none is needed: every job was inserted before the loop began)."""
    floors.begin()
    cursor.execute(RESERVE_JOBS, reserve_params(worker_id, batch, floors))
    return floors.settle(cursor.fetchall(), batch)


def _array(items):
    """One array literal ('{a,b,c}'), as the worker's completer sends each column: psycopg2 would turn a Python
    list into ARRAY[...] with one constant per element, which costs the planner more than the update."""
    return "{" + ",".join(items) + "}"


def complete_statement(worker_id, ids):
    """(sql, params) of what the worker's completer sends for a batch of completed no-op jobs (first attempts)."""
    return completion([Outcome(job_id, COMPLETED, 0.0, attempts=1) for job_id in ids], worker_id, json.dumps)


def register(cursor, worker_id, batch, identifier):
    """A worker row for the loop (a running worker's heartbeat would otherwise take its jobs for orphans)."""
    cursor.execute(REGISTER_WORKER, statement_params(REGISTER_WORKER, {
        "id": worker_id, "hostname": "bench", "pid": 0, "identifier": identifier, "status": "r", "queues": None,
        "min_priority": 1, "max_priority": 32767, "min_threads": batch, "max_threads": batch, "info": "{}"}))


def bare_loop(db, batch, count, timeout):
    db.reset()
    db.insert_pending(count, NOOP_PAYLOAD)
    worker_id = str(uuid.uuid4())
    conn = harness.connect(db.url)
    try:
        with conn.cursor() as cursor:
            register(cursor, worker_id, batch, "bare-loop")
            floors = ReservationFloors(1, 32767)
            cursor.execute("SELECT pg_backend_pid()")
            backend = cursor.fetchone()[0]
            backend_cpu0, cpu0 = harness.cpu_seconds(backend), time.process_time()
            done, rounds, partial = 0, 0, False
            reserve_s = complete_s = 0.0
            clock = time.perf_counter
            started = clock()
            deadline = started + timeout
            while True:
                t0 = clock()
                rows = reserve(cursor, worker_id, batch, floors)
                t1 = clock()
                reserve_s += t1 - t0
                if not rows:
                    break
                n = len(rows)
                cursor.execute(*complete_statement(worker_id, [row[0] for row in rows]))
                cursor.fetchone()
                complete_s += clock() - t1
                done += n
                rounds += 1
                if time.perf_counter() > deadline:
                    partial = True
                    break
            wall = time.perf_counter() - started
            client_cpu = time.process_time() - cpu0
            backend_cpu1 = harness.cpu_seconds(backend)
            server_cpu = backend_cpu1 - backend_cpu0 if backend_cpu0 is not None and backend_cpu1 is not None else None
    finally:
        conn.close()
    count_done, span, bad = db.drain_span()
    return {"batch": batch, "expected": count, "finished": count_done, "not_completed": bad, "rounds": rounds,
            "partial": partial, "span_s": round(span, 4), "rate": count_done / span if span > 0 else None,
            "wall_s": round(wall, 3), "wall_rate": done / wall if wall > 0 else None,
            "reserve_ms_per_round": round(reserve_s / max(rounds, 1) * 1000, 3),
            "complete_ms_per_round": round(complete_s / max(rounds, 1) * 1000, 3),
            "client_cpu_us_per_job": round(client_cpu / max(done, 1) * 1e6, 1),
            "postgres_cpu_us_per_job": round(server_cpu / max(done, 1) * 1e6, 1) if server_cpu is not None else None}


def pipelined_loop(db, batch, count, timeout):
    """The same statements on two connections, as the worker runs them: one thread reserves batch after batch
    while another completes the previous ones (psycopg2 releases the GIL while it waits for the server)."""
    db.reset()
    db.insert_pending(count, NOOP_PAYLOAD)
    worker_id = str(uuid.uuid4())
    reserver, completer = harness.connect(db.url), harness.connect(db.url)
    batches = queue.Queue(maxsize=2)  # at most two batches reserved ahead of their completion
    errors = []

    def complete():
        try:
            with completer.cursor() as cursor:
                while True:
                    ids = batches.get()
                    if ids is None:
                        return
                    cursor.execute(*complete_statement(worker_id, ids))
                    cursor.fetchone()
        except Exception as error:  # noqa: BLE001 - reported by the reserving thread
            errors.append(error)

    thread = threading.Thread(target=complete, name="bare-completer", daemon=True)
    partial = False
    try:
        with reserver.cursor() as cursor:
            register(cursor, worker_id, batch, "bare-loop-pipelined")
            floors = ReservationFloors(1, 32767)
            thread.start()
            started = time.perf_counter()
            deadline = started + timeout
            while not errors:
                rows = reserve(cursor, worker_id, batch, floors)
                if not rows:
                    break
                batches.put([row[0] for row in rows])
                if time.perf_counter() > deadline:
                    partial = True
                    break
            batches.put(None)
            thread.join(timeout + 30)
            wall = time.perf_counter() - started
    finally:
        reserver.close()
        completer.close()
    if errors:
        raise errors[0]
    count_done, span, bad = db.drain_span()
    return {"batch": batch, "connections": 2, "expected": count, "finished": count_done, "not_completed": bad,
            "partial": partial, "span_s": round(span, 4), "rate": count_done / span if span > 0 else None,
            "wall_s": round(wall, 3), "wall_rate": count_done / wall if wall > 0 else None}


def scenario_limit(ctx):
    """The bare loop with batch = the worker's best --threads, and with batch 1."""
    budget = ctx.new_budget("limit")
    best = ctx.best_threads or ctx.threads_candidates[0]
    plans = [(best, ctx.count(20000, 5000)), (1, ctx.count(2000, 1000))]
    results = {}
    for batch, count in plans:
        runs = []
        for i in range(ctx.runs):
            if runs and not budget.allows(max(r["wall_s"] for r in runs) + 2):
                break
            run = bare_loop(ctx.db, batch, count, timeout=max(5.0, budget.remaining() / 2))
            runs.append(run)
            ctx.say(f"  batch {batch:>4} run {i + 1}: {run['rate']:,.0f} jobs/s ({run['finished']} jobs in "
                    f"{run['span_s']:.2f}s, {run['rounds']} rounds; reserve {run['reserve_ms_per_round']:.2f} ms + "
                    f"complete {run['complete_ms_per_round']:.2f} ms per round; CPU per job: client "
                    f"{run['client_cpu_us_per_job']} us, postgres {run['postgres_cpu_us_per_job']} us)")
        results[batch] = runs
    pipelined = []
    for i in range(ctx.runs):
        if pipelined and not budget.allows(max(r["wall_s"] for r in pipelined) + 2):
            break
        run = pipelined_loop(ctx.db, best, plans[0][1], timeout=max(5.0, budget.remaining()))
        pipelined.append(run)
        ctx.say(f"  batch {best:>4}, 2 connections, run {i + 1}: {run['rate']:,.0f} jobs/s ({run['finished']} jobs in "
                f"{run['span_s']:.2f}s)")
    ctx.db.reset()
    best_runs = results[best]
    ctx.bare = harness.summary([r["rate"] for r in best_runs])
    ctx.bare_batch = best
    ctx.record("limit", {"runs": {str(k): v for k, v in results.items()}, "pipelined_runs": pipelined,
                         "best_batch": best,
                         "budget_overrun": budget.overrun})
    ctx.figure("limit", f"bare loop, batch {best} (the limit)", "jobs/s", ctx.bare, throughput=True,
               reference="pgbench 100-row: 45,000-75,000", partial=any(r["partial"] for r in best_runs))
    ctx.figure("limit_pipelined", f"bare loop, batch {best}, reserve and complete overlapped on 2 connections",
               "jobs/s", harness.summary([r["rate"] for r in pipelined]), throughput=True,
               partial=any(r["partial"] for r in pipelined))
    ctx.figure("limit_1", "bare loop, batch 1", "jobs/s", harness.summary([r["rate"] for r in results[1]]),
               throughput=True, reference="pgbench 1-row: 1,300-3,700",
               partial=any(r["partial"] for r in results[1]))
