"""What the dashboard's pages show, read through exekutor.operations and the queries of exekutor.info.

Every page must stay well under 200 ms on a table of a million finished and a hundred thousand pending jobs
(`python -m benchmarks dashboard`). Unfinished jobs per queue come from exekutor.queue_stats, as for `info` and
`/metrics` (index lookups per queue, a few ms at a million pending jobs; counts above its exact limit are
estimates, shown with "~"); the workers and the failures from info's and operations' queries. One read is the
dashboard's own:

- Jobs finished per minute over the last hour (the charts): a busy hour is hundreds of thousands of rows, which
  no index answers per queue (the queue is not in the finished-jobs index), so a process counts each minute once:
  minutes that have ended are kept (a finished job stays finished, and cleanup deleting it later does not undo
  that it finished then), and each request counts only the minutes since. Only a process's first request pays
  for the whole hour.
"""
import collections
import contextlib
import dataclasses
import heapq
import logging
import threading

import psycopg2
import psycopg2.errors

from exekutor import config, info, operations
from exekutor.db.pool import default_pool
from exekutor.queue_control import flow_fields, queue_settings
from exekutor.queue_stats import (
    EstimateCache,
    executing_by_queue,
    held_back_by_queue,
    longest_waiting,
    no_pending,
    pending_by_queue,
    pending_queue_names,
    pending_totals,
)
from exekutor.queue_stats import _plan as plan_of

logger = logging.getLogger("exekutor.dashboard")
CHART_MINUTES = 60
# Failed and discarded jobs stay until cleanup deletes them: the overview counts all of them, not a recent window.
ALL_TIME = info.MAX_FAILURES_SINCE
# A minute is final this long after it ended: a job's finished_at is its completing statement's now(), which may
# commit (and become visible) a little later.
SETTLE_SECONDS = 60
# Queues and workers a page lists at most (the rest are a link away): with 20,000 queues the overview was 12 MB of
# rows and charts and took 3 s, refreshed every 5 s.
PAGE_QUEUES = 50
PAGE_WORKERS = 50

_NOW_MINUTE = "SELECT extract(epoch FROM date_trunc('minute', now()))::bigint AS minute"
# One branch per status: each is a range scan of the finished-jobs index (status, finished_at, id); with
# `status IN (...)` the planner scans the whole table instead, even for the last two minutes. Failed counts the
# failed, discarded and cancelled jobs (the red part of the charts). Pickup latency (started_at - scheduled_at) is
# counted in buckets (LATENCY_EDGES, seconds; a job cancelled before it started has none): percentiles of merged
# buckets cost nothing per request, and a bucket's upper edge is what a page says ("p99 <= 50 ms").
LATENCY_EDGES = (0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 30, 60, 300, 900, 3600)
_FINISHED_PER_MINUTE = """
SELECT extract(epoch FROM date_trunc('minute', finished_at))::bigint AS minute, queue,
       width_bucket(extract(epoch FROM started_at - scheduled_at)::float8, %(edges)s::float8[]) AS bucket,
       count(*)::int AS count, count(*) FILTER (WHERE failed)::int AS failed
FROM (SELECT finished_at, queue, started_at, scheduled_at, false AS failed FROM exekutor_jobs
      WHERE status = 'c' AND finished_at >= to_timestamp(%(since)s)
      UNION ALL
      SELECT finished_at, queue, started_at, scheduled_at, true FROM exekutor_jobs
      WHERE status = 'f' AND finished_at >= to_timestamp(%(since)s)
      UNION ALL
      SELECT finished_at, queue, started_at, scheduled_at, true FROM exekutor_jobs
      WHERE status = 'd' AND finished_at >= to_timestamp(%(since)s)
     ) AS finished
GROUP BY 1, 2, 3
"""


@contextlib.contextmanager
def connection():
    """An autocommit connection from the process's pool (the one enqueueing uses): operations act in batches
    that commit on their own.

    A pooled connection the server has dropped since (a restart, pg_terminate_backend, an idle timeout) only
    fails on its next statement, so it is tried first with `SELECT 1`: a dropped one is given back (the pool then
    closes it) with the other idle connections, most likely dropped with it, and the request goes on with a fresh
    one. A second failure is the database's, and the page says so."""
    pool = default_pool()
    with contextlib.ExitStack() as stack:
        conn = stack.enter_context(pool.connection())
        if not _alive(conn):
            logger.info("dashboard: the database had closed a pooled connection; reconnecting")
            stack.close()
            pool.close()
            conn = stack.enter_context(pool.connection())
        yield conn


def _alive(conn):
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT 1")
        return True
    except psycopg2.OperationalError:
        if conn.closed:
            return False
        raise


def _fetch(conn, sql, params=None):
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        columns = [column.name for column in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]


# --- workers and queues -----------------------------------------------------------------------------------------

def workers(conn, page=0, limit=PAGE_WORKERS):
    """One page of workers, newest first, with info's status names and lateness flags; and how many there are."""
    late, dead = 2 * config.get("heartbeat_interval"), config.get("worker_timeout")
    rows = _fetch(conn, info.WORKERS_PAGE, {"limit": limit, "offset": page * limit})
    for worker in rows:
        worker["status"] = info.STATUS_NAMES.get(worker["status"], worker["status"])
        worker["heartbeat_late"] = worker["heartbeat_age"] > late
        worker["presumed_dead"] = worker["heartbeat_age"] > dead
    return rows


def worker_count(conn, queue=None):
    """Workers in all, or those taking `queue` (no queue list: every queue)."""
    return _fetch(conn, "SELECT count(*)::int AS n FROM exekutor_workers "
                        "WHERE %(q)s::text IS NULL OR queues IS NULL OR %(q)s = ANY(queues)", {"q": queue})[0]["n"]


def queue_rows(conn, names, series, failures, executing):
    """Per queue of `names`: pending (due), scheduled, executing, failed, discarded, oldest pending age, its
    chart, and its flow control (paused, limits, held-back jobs by reason: queue_control.flow_fields). The pending
    figures and the queue rows are looked up for these queues only; the held-back figures walk the limits that
    hold jobs back (queue_stats.held_back_by_queue: bounded, whatever the backlog)."""
    with conn.cursor() as cursor:
        pending = {row["queue"]: row for row in pending_by_queue(cursor, queues=names)}
        states, held = queue_settings(cursor, names), held_back_by_queue(cursor, estimates=_held_estimates)
    overdue = config.get("polling_interval")
    rows = []
    for name in names:
        waiting, failed = pending.get(name) or no_pending(name), failures.get(name, {})
        rows.append({"queue": name, "pending": waiting["due"], "scheduled": waiting["scheduled"],
                     "pending_estimated": waiting["due_estimated"],
                     "scheduled_estimated": waiting["scheduled_estimated"],
                     "executing": executing.get(name, 0), "failed": failed.get("failed", 0),
                     "discarded": failed.get("discarded", 0) + failed.get("cancelled", 0),
                     "oldest_pending": waiting["overdue_for"],
                     "overdue": (waiting["overdue_for"] or 0) > overdue,
                     "per_minute": series.of(name), "failed_per_minute": series.of(name, failed=True),
                     "latency": series.latency(name),
                     **flow_fields(states.get(name), held.get(name))})
    return rows


# The planner's estimates of the held-back counts past their walk, shared by the requests of a process (each page
# refreshes every few seconds; the estimates change only as fast as the table's statistics).
_held_estimates = EstimateCache()


def busiest(waiting, executing, finished, limit=PAGE_QUEUES):
    """The `limit` queues to show first: those whose oldest due job is overdue, longest wait first, then the
    most active (executing jobs and jobs finished, failed included, in the last hour), then by name. Tuples, not
    a key function: with 20,000 queues a key function per queue cost 100 ms."""
    overdue = config.get("polling_interval")
    late = [name for _, name in heapq.nsmallest(limit, ((-wait, name) for name, wait in waiting.items()
                                                         if wait is not None and wait > overdue))]
    activity = collections.Counter(executing)
    activity.update(finished)
    activity.update(dict.fromkeys(waiting, 0))  # waiting but not overdue: shown when there is room
    shown = set(late)
    rest = heapq.nsmallest(limit, ((-jobs, name) for name, jobs in activity.items() if name not in shown))
    return (late + [name for _, name in rest])[:limit]


def totals(conn, executing, failures):
    """Every queue's pending, scheduled, executing, failed and discarded jobs, and the workers."""
    with conn.cursor() as cursor:
        pending = pending_totals(cursor)
    failed = {key: sum(row[key] for row in failures.values()) for key in ("failed", "discarded", "cancelled")}
    return {"workers": worker_count(conn), "pending": pending["due"], "scheduled": pending["scheduled"],
            "pending_estimated": pending["due_estimated"], "scheduled_estimated": pending["scheduled_estimated"],
            "executing": sum(executing.values()), "failed": failed["failed"],
            "discarded": failed["discarded"] + failed["cancelled"]}


def _failures(conn, queues=None, newest=5):
    """({queue: failure counts} for `queues` (None: every queue; key None: all the others together), the newest
    failures)."""
    summary = operations.failure_summary(conn, ALL_TIME, newest=newest, queues=queues)
    return {row["queue"]: row for row in summary["queues"]}, summary["newest"]


def _executing(conn):
    with conn.cursor() as cursor:
        return executing_by_queue(cursor)


# --- throughput -------------------------------------------------------------------------------------------------

class _Minutes:
    """Finished jobs per (minute, queue) of the minutes that are final, shared by the requests of a process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.final = {}  # minute (epoch seconds) -> {queue: (jobs, failed jobs, pickup latency buckets)}
        self.final_until = None  # the minutes before this one are all in `final`

    def series(self, conn):
        """The Throughput of the last CHART_MINUTES minutes."""
        with self.lock:  # one request counts a stretch, the others wait for it rather than count it too
            current = _fetch(conn, _NOW_MINUTE)[0]["minute"]
            first = current - (CHART_MINUTES - 1) * 60
            settled = current - SETTLE_SECONDS
            since = max(first, self.final_until or first)
            fresh = {}
            for row in _fetch(conn, _FINISHED_PER_MINUTE, {"since": since, "edges": list(LATENCY_EDGES)}):
                counts = fresh.setdefault(row["minute"], {})
                jobs, failed, buckets = counts.get(row["queue"], (0, 0, (0,) * (len(LATENCY_EDGES) + 1)))
                if row["bucket"] is not None:
                    buckets = buckets[:row["bucket"]] + (buckets[row["bucket"]] + row["count"],) + \
                        buckets[row["bucket"] + 1:]
                counts[row["queue"]] = (jobs + row["count"], failed + row["failed"], buckets)
            for minute in range(since, settled, 60):
                self.final[minute] = fresh.get(minute, {})
            self.final_until = max(settled, since)
            self.final = {minute: counts for minute, counts in self.final.items() if minute >= first}
            minutes = {**self.final, **{minute: counts for minute, counts in fresh.items() if minute >= settled}}
        return Throughput(first, minutes)


class Throughput:
    """Jobs finished (and, of them, failed) per minute and queue over the chart's hour: a page draws the charts of
    the queues it shows only (with 20,000 queues, building every queue's series took longer than the page's
    budget)."""

    def __init__(self, first, minutes):
        self.first = first
        self.minutes = minutes  # minute (epoch seconds) -> {queue: (jobs, failed jobs, pickup latency buckets)}

    def of(self, queue, failed=False):
        """[jobs of `queue` finished (or, with `failed`, failed) per minute, oldest first]."""
        return self._series(lambda counts: counts.get(queue, (0, 0))[failed])

    def total(self, failed=False):
        """The per-minute sums over every queue."""
        return self._series(lambda counts: sum(pair[failed] for pair in counts.values()))

    def latency(self, queue=None):
        """(p50, p99) of the pickup latency of the hour's finished jobs of `queue` (None: every queue), each the
        upper edge of its bucket in seconds (inf: above the last edge); None without a job that started."""
        merged = [0] * (len(LATENCY_EDGES) + 1)
        for counts in self.minutes.values():
            for name, (_, _, buckets) in counts.items():
                if queue is None or name == queue:
                    merged = [a + b for a, b in zip(merged, buckets)]
        total = sum(merged)
        return (_percentile(merged, total, 0.5), _percentile(merged, total, 0.99)) if total else None

    def finished(self):
        """{queue: jobs finished in the hour}."""
        jobs = collections.Counter()
        for counts in self.minutes.values():
            jobs.update({queue: pair[0] for queue, pair in counts.items()})
        return jobs

    def _series(self, count):
        values = [0] * CHART_MINUTES
        for minute, counts in self.minutes.items():
            index = (minute - self.first) // 60
            if 0 <= index < CHART_MINUTES:
                values[index] += count(counts)
        return values


def _percentile(buckets, total, share):
    """The upper edge of the bucket in which `share` of the `total` jobs are reached (width_bucket's bucket i holds
    the values from edge i-1 to edge i; the last one, those above every edge)."""
    seen = 0
    for index, count in enumerate(buckets):
        seen += count
        if seen >= share * total:
            return LATENCY_EDGES[index] if index < len(LATENCY_EDGES) else float("inf")
    return float("inf")


_minutes = _Minutes()


def throughput(conn):
    return _minutes.series(conn)


# --- pages ------------------------------------------------------------------------------------------------------

def overview(conn):
    """The totals, the PAGE_QUEUES busiest queues, the newest failures."""
    series, executing = throughput(conn), _executing(conn)
    with conn.cursor() as cursor:
        waiting = longest_waiting(cursor)
        names = busiest(waiting, executing, series.finished())
        # Room left (a small installation): the other queues with pending jobs, by name, as many as fit.
        others = pending_queue_names(cursor, limit=PAGE_QUEUES) if len(names) < PAGE_QUEUES else []
    names += [name for name in others if name not in names][:PAGE_QUEUES - len(names)]
    failures, newest = _failures(conn, names)
    rows = queue_rows(conn, names, series, failures, executing)
    return {"queues": rows, "warnings": warnings(conn, rows, waiting),
            "totals": totals(conn, executing, failures), "total": series.total(),
            "total_failed": series.total(failed=True), "latency": series.latency(), "newest": newest}


def queue_list(conn, after=""):
    """Every queue with jobs or a row in exekutor_queues (paused, limited), by name, PAGE_QUEUES a page after
    `after`; and the name the next page starts after."""
    series, executing = throughput(conn), _executing(conn)
    failures, _ = _failures(conn, newest=1)
    with conn.cursor() as cursor:
        pending = pending_queue_names(cursor, after, PAGE_QUEUES + 1)
        rows = queue_settings(cursor)  # a paused queue without jobs is listed too: it can be resumed from here
    known = (name for name in set(executing) | set(failures) | set(series.finished()) | set(rows) if name > after)
    names = sorted(set(pending) | set(known))[:PAGE_QUEUES + 1]
    more = len(names) > PAGE_QUEUES
    names = names[:PAGE_QUEUES]
    return {"queues": queue_rows(conn, names, series, failures, executing),
            "next_after": names[-1] if more else None}


# --- warnings ---------------------------------------------------------------------------------------------------

# Queues among the named ones with due jobs that no live worker takes (a worker without a queue list takes every
# queue; a stopping or crashed one, or one past worker_timeout, takes none).
_UNSERVED = """
WITH live AS (SELECT queues FROM exekutor_workers
              WHERE status IN ('i', 'r') AND last_heartbeat_at > now() - %(dead)s * interval '1 second')
SELECT q.name FROM unnest(%(names)s::text[]) AS q(name)
WHERE NOT EXISTS (SELECT FROM live WHERE queues IS NULL)
  AND NOT EXISTS (SELECT FROM live WHERE q.name = ANY(queues))
ORDER BY q.name
"""
# Workers whose heartbeat is late (twice heartbeat_interval) but that are not yet presumed dead, and those past
# worker_timeout that housekeeping has not removed yet; a few of their names.
_LATE_WORKERS = """
SELECT hostname || ':' || pid AS name, last_heartbeat_at <= now() - %(dead)s * interval '1 second' AS dead
FROM exekutor_workers
WHERE status <> 'c' AND last_heartbeat_at <= now() - %(late)s * interval '1 second'
ORDER BY last_heartbeat_at
"""
WARNING_NAMES = 5  # names a warning lists (then "and N more")


def warnings(conn, rows, waiting):
    """What an operator must not miss, worst first: [{"kind", "text", "names": [(label, queue or None)],
    "more"}]. `rows` are the overview's queues (their due jobs and paused state), `waiting` every queue's oldest
    due wait (queue_stats.longest_waiting)."""
    dead, late = config.get("worker_timeout"), 2 * config.get("heartbeat_interval")
    overdue = config.get("polling_interval")
    paused = {row["queue"] for row in rows if row["paused"]}
    with conn.cursor() as cursor:
        settings = queue_settings(cursor)
    paused |= {name for name, state in settings.items() if state["paused"]}
    due = [row["queue"] for row in rows if row["pending"] and row["queue"] not in paused]
    unserved = [row["name"] for row in _fetch(conn, _UNSERVED, {"names": due, "dead": dead})] if due else []
    workers = _fetch(conn, _LATE_WORKERS, {"late": late, "dead": dead})
    waits = sorted(((wait, name) for name, wait in waiting.items()
                    if wait is not None and wait > overdue and name not in paused), reverse=True)
    found = [
        ("alarm", "no live worker takes these queues, which have due jobs", [(name, name) for name in unserved]),
        ("alarm", "presumed dead (no heartbeat for worker_timeout)",
         [(row["name"], None) for row in workers if row["dead"]]),
        ("warn", f"due jobs waited longer than polling_interval ({info.duration(overdue)})",
         [(f"{name}: {info.duration(wait)}", name) for wait, name in waits]),
        ("warn", "late heartbeat (more than twice heartbeat_interval)",
         [(row["name"], None) for row in workers if not row["dead"]]),
        ("warn", "paused (none of its jobs starts until it is resumed)", [(name, name) for name in sorted(paused)]),
    ]
    return [{"kind": kind, "text": text, "names": names[:WARNING_NAMES], "more": len(names) - WARNING_NAMES}
            for kind, text, names in found if names]


# --- counts per status ------------------------------------------------------------------------------------------

STATUS_COUNT_EXACT = 1000
# A count the planner expects to cost more than this (its cost units; a sequential scan of 1,000,000 jobs is
# about 40,000) is not run: its estimate is shown. The timeout is the guard against a plan that was wrong.
STATUS_COUNT_MAX_COST = 5000
STATUS_COUNT_TIMEOUT_MS = 60


def status_counts(conn, job_filter):
    """{status: (jobs, estimated)} for each status of operations.STATUSES with the filter's other fields: exact up
    to STATUS_COUNT_EXACT where counting is cheap, else PostgreSQL's estimate (`estimated` True, shown "~")."""
    questions = {status: dataclasses.replace(job_filter, status=status).where() for status in operations.STATUSES}
    counted = {}
    with conn.cursor() as cursor:
        planned = {status: plan_of(cursor, _bounded_count(condition), params)
                   for status, (condition, params) in questions.items()}
        cheap = [status for status, node in planned.items() if node["Total Cost"] <= STATUS_COUNT_MAX_COST]
        if cheap:
            counted = _exact_counts(cursor, {status: questions[status][0] for status in cheap},
                                    questions[cheap[0]][1])
    result = {}
    for status in operations.STATUSES:
        jobs = counted.get(status)
        if jobs is not None and jobs <= STATUS_COUNT_EXACT:
            result[status] = (jobs, False)
        else:
            estimate = _planned_jobs(planned[status])
            result[status] = (max(estimate, STATUS_COUNT_EXACT + 1) if jobs is not None else estimate, True)
    return result


def _bounded_count(condition):
    return (f"SELECT count(*) FROM (SELECT FROM exekutor_jobs WHERE {condition} "
            f"LIMIT {STATUS_COUNT_EXACT + 1}) AS c")


def _planned_jobs(node):
    """The rows the planner expects below the count and its LIMIT: what the filter would match."""
    while node.get("Plans") and node["Node Type"] in ("Aggregate", "Limit", "Subquery Scan"):
        node = node["Plans"][0]
    return int(node.get("Plan Rows", 0))


def _exact_counts(cursor, conditions, params):
    """The bounded counts of `conditions` in one statement, under a timeout; {} when it ran out."""
    columns = ", ".join(f"({_bounded_count(condition)}) AS \"{status}\"" for status, condition in conditions.items())
    try:
        with time_limit(cursor.connection, STATUS_COUNT_TIMEOUT_MS):
            cursor.execute(f"SELECT {columns}", params)
            return dict(zip(conditions, cursor.fetchone()))
    except psycopg2.errors.QueryCanceled:
        return {}


@contextlib.contextmanager
def time_limit(conn, milliseconds):
    """Reads on `conn` (autocommit) that PostgreSQL cancels after `milliseconds` each (QueryCanceled): a
    transaction of their own, for SET LOCAL, rolled back after (they only read)."""
    with conn.cursor() as cursor:
        cursor.execute("BEGIN")
        try:
            cursor.execute("SET LOCAL statement_timeout = %s", (int(milliseconds),))
            yield
        finally:
            if not conn.closed:
                cursor.execute("ROLLBACK")


def queue_page(conn, name, limit=10):
    """The counts of one queue, its chart, the next jobs to run, the running ones, the newest failures."""
    failures, _ = _failures(conn, [name], newest=1)  # its counts (the page lists its failures itself)
    row = queue_rows(conn, [name], throughput(conn), failures, _executing(conn))[0]
    lists = {status: operations.list_jobs(conn, operations.JobFilter(status=status, queue=name), limit=limit).jobs
             for status in ("pending", "executing", "failed")}
    return {"row": row, "series": row["per_minute"], "failed_series": row["failed_per_minute"], "lists": lists,
            "workers": worker_count(conn, name)}
