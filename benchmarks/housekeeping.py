"""The worker's housekeeping queries at a big backlog (inside `python -m benchmarks bigtable`): the timer's
"next scheduled job" (NEXT_SCHEDULED) and the per-queue figures of /metrics, `info` and the dashboard
(exekutor.queue_stats), each timed (median of ROUNDS) and its plan printed (EXPLAIN ANALYZE), at 1,000,000 due
and 200,000 scheduled pending jobs over four queues (--quick: a tenth).

Target: each under 5 ms, as index lookups (no sequential scan in the plans).
"""
import time

import psycopg2

from benchmarks import harness
from benchmarks.jobs import NOOP_PAYLOAD
from exekutor.db.queries import NEXT_SCHEDULED
from exekutor.queue_stats import EXACT_COUNT_LIMIT, PENDING_BY_QUEUE, EstimateCache, pending_by_queue

ROUNDS = 20
QUEUES = ("default", "mail", "reports", "webhooks")


def fill_backlog(database, due, later):
    """`due` jobs due for up to an hour and `later` scheduled over the next hours, over QUEUES; the insert trigger
    is off meanwhile (its transition table would only cost time), then VACUUM ANALYZE."""
    names = "ARRAY[" + ", ".join(f"'{name}'" for name in QUEUES) + "]"
    database.execute("ALTER TABLE exekutor_jobs DISABLE TRIGGER exekutor_jobs_notify_insert")
    try:
        for count, start, step in ((due, "now() - interval '1 hour'", "3 ms"), (later, "now() + interval '1 hour'",
                                                                              "50 ms")):
            database.execute(f"INSERT INTO exekutor_jobs (queue, payload, scheduled_at) SELECT ({names})[1 + i %% "
                             f"{len(QUEUES)}], %s::jsonb, {start} + i * interval '{step}' "
                             "FROM generate_series(1, %s) AS i", (NOOP_PAYLOAD, count))
    finally:
        database.execute("ALTER TABLE exekutor_jobs ENABLE TRIGGER exekutor_jobs_notify_insert")
    database.vacuum()


def measure_housekeeping(ctx, database):
    due, later = ctx.count(1_000_000, 100_000), ctx.count(200_000, 20_000)
    started = time.monotonic()
    fill_backlog(database, due, later)
    ctx.say(f"  housekeeping: {due:,} due and {later:,} scheduled pending jobs in {time.monotonic() - started:.1f}s")
    conn = psycopg2.connect(database.url)
    conn.autocommit = True
    # A worker of every queue asks about the queues it knows to have future jobs at each poll, and finds them all
    # (queues NULL: the loose scan) only at its start and when it may have missed notifications.
    every_queue = {"queues": list(QUEUES), "min_priority": 1, "max_priority": 32767}
    discovery = dict(every_queue, queues=None)
    one_queue = dict(every_queue, queues=["mail"])
    estimates = EstimateCache()  # what /metrics keeps between scrapes
    try:
        with conn.cursor() as cursor:
            timings = {
                "next_scheduled": _timed(lambda: cursor.execute(NEXT_SCHEDULED, every_queue)),
                "next_scheduled_queue": _timed(lambda: cursor.execute(NEXT_SCHEDULED, one_queue)),
                "next_scheduled_discovery": _timed(lambda: cursor.execute(NEXT_SCHEDULED, discovery)),
                "queue_figures_first": _timed(lambda: pending_by_queue(cursor)),
                "queue_figures": _timed(lambda: pending_by_queue(cursor, estimates=estimates)),
            }
            at_a_poll = "NEXT_SCHEDULED (a worker of every queue, at a poll)"
            for title, sql, params in ((at_a_poll, NEXT_SCHEDULED, every_queue),
                                       ("queue_stats.PENDING_BY_QUEUE", PENDING_BY_QUEUE,
                                        {"limit": EXACT_COUNT_LIMIT + 1})):
                cursor.execute("EXPLAIN (ANALYZE, COSTS OFF) " + cursor.mogrify(sql, params).decode())
                ctx.say(f"  plan of {title}:\n" + "\n".join("    " + row[0] for row in cursor.fetchall()))
    finally:
        conn.close()
    ctx.record("housekeeping", {"due": due, "scheduled": later, **timings})
    backlog = f"{due:,} due + {later:,} scheduled"
    ctx.figure("next_scheduled", f"next scheduled job (the timer at each poll), every queue, {backlog}", "ms",
               timings["next_scheduled"], target=("<=", 5))
    ctx.figure("next_scheduled_queue", "  the same, a worker of one queue", "ms", timings["next_scheduled_queue"],
               target=("<=", 5))
    ctx.figure("next_scheduled_discovery", "  the same, finding the queues with future jobs (a worker of every queue, "
               "at its start and after a reconnect)", "ms", timings["next_scheduled_discovery"])
    ctx.figure("queue_figures_first", f"per-queue figures with fresh estimates (info, dashboard, a /metrics scrape "
               f"every 30 s), {len(QUEUES)} queues", "ms", timings["queue_figures_first"], target=("<=", 5))
    ctx.figure("queue_figures", "  the other /metrics scrapes (the planner's estimates kept 30 s)", "ms",
               timings["queue_figures"], target=("<=", 5))


def _timed(call):
    call()  # the first call reads the pages in
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        call()
        times.append((time.perf_counter() - started) * 1000)
    return harness.summary(times)
