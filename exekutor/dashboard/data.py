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
import contextlib
import logging
import threading

import psycopg2

from exekutor import config, info, operations
from exekutor.db.pool import default_pool
from exekutor.queue_stats import executing_by_queue, no_pending, pending_by_queue

logger = logging.getLogger("exekutor.dashboard")
CHART_MINUTES = 60
# Failed and discarded jobs stay until cleanup deletes them: the overview counts all of them, not a recent window.
ALL_TIME = info.MAX_FAILURES_SINCE
# A minute is final this long after it ended: a job's finished_at is its completing statement's now(), which may
# commit (and become visible) a little later.
SETTLE_SECONDS = 60

_NOW_MINUTE = "SELECT extract(epoch FROM date_trunc('minute', now()))::bigint AS minute"
# One branch per status: each is a range scan of the finished-jobs index (status, finished_at, id); with
# `status IN (...)` the planner scans the whole table instead, even for the last two minutes.
_FINISHED_PER_MINUTE = """
SELECT extract(epoch FROM date_trunc('minute', finished_at))::bigint AS minute, queue, count(*)::int AS count
FROM (SELECT finished_at, queue FROM exekutor_jobs WHERE status = 'c' AND finished_at >= to_timestamp(%(since)s)
      UNION ALL
      SELECT finished_at, queue FROM exekutor_jobs WHERE status = 'f' AND finished_at >= to_timestamp(%(since)s)
      UNION ALL
      SELECT finished_at, queue FROM exekutor_jobs WHERE status = 'd' AND finished_at >= to_timestamp(%(since)s)
     ) AS finished
GROUP BY 1, 2
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

def workers(conn):
    """info's workers query, with its status names and the same lateness flags as `info`."""
    late, dead = 2 * config.get("heartbeat_interval"), config.get("worker_timeout")
    rows = _fetch(conn, info._WORKERS)
    for worker in rows:
        worker["status"] = info.STATUS_NAMES.get(worker["status"], worker["status"])
        worker["heartbeat_late"] = worker["heartbeat_age"] > late
        worker["presumed_dead"] = worker["heartbeat_age"] > dead
    return rows


def queue_rows(conn, series, failures, only=None):
    """Per queue: pending (due), scheduled, executing, failed, discarded, oldest pending age, its chart; every
    queue with unfinished, failed or discarded jobs, or jobs finished in the last hour."""
    with conn.cursor() as cursor:
        pending = {row["queue"]: row for row in pending_by_queue(cursor)}
        executing = executing_by_queue(cursor)
    failures = {row["queue"]: row for row in failures["queues"]}
    overdue = config.get("polling_interval")
    names = sorted(set(pending) | set(executing) | set(failures) | set(series))
    rows = []
    for name in names if only is None else [only]:
        waiting, failed = pending.get(name) or no_pending(name), failures.get(name, {})
        rows.append({"queue": name, "pending": waiting["due"], "scheduled": waiting["scheduled"],
                     "pending_estimated": waiting["due_estimated"],
                     "scheduled_estimated": waiting["scheduled_estimated"],
                     "executing": executing.get(name, 0), "failed": failed.get("failed", 0),
                     "discarded": failed.get("discarded", 0) + failed.get("cancelled", 0),
                     "oldest_pending": waiting["overdue_for"],
                     "overdue": (waiting["overdue_for"] or 0) > overdue,
                     "per_minute": series.get(name, [0] * CHART_MINUTES)})
    return rows


def totals(rows, workers_count):
    keys = ("pending", "scheduled", "executing", "failed", "discarded")
    return {"workers": workers_count, **{key: sum(row[key] for row in rows) for key in keys},
            **{f"{key}_estimated": any(row[f"{key}_estimated"] for row in rows) for key in ("pending", "scheduled")}}


# --- throughput -------------------------------------------------------------------------------------------------

class _Minutes:
    """Finished jobs per (minute, queue) of the minutes that are final, shared by the requests of a process."""

    def __init__(self):
        self.lock = threading.Lock()
        self.final = {}  # minute (epoch seconds) -> {queue: jobs}
        self.final_until = None  # the minutes before this one are all in `final`

    def series(self, conn):
        """{queue: [jobs finished per minute, oldest first]} over the last CHART_MINUTES minutes."""
        with self.lock:  # one request counts a stretch, the others wait for it rather than count it too
            current = _fetch(conn, _NOW_MINUTE)[0]["minute"]
            first = current - (CHART_MINUTES - 1) * 60
            settled = current - SETTLE_SECONDS
            since = max(first, self.final_until or first)
            fresh = {}
            for row in _fetch(conn, _FINISHED_PER_MINUTE, {"since": since}):
                fresh.setdefault(row["minute"], {})[row["queue"]] = row["count"]
            for minute in range(since, settled, 60):
                self.final[minute] = fresh.get(minute, {})
            self.final_until = max(settled, since)
            self.final = {minute: counts for minute, counts in self.final.items() if minute >= first}
            minutes = {**self.final, **{minute: counts for minute, counts in fresh.items() if minute >= settled}}
        series = {}
        for minute, counts in minutes.items():
            index = (minute - first) // 60
            if 0 <= index < CHART_MINUTES:
                for queue, jobs in counts.items():
                    series.setdefault(queue, [0] * CHART_MINUTES)[index] += jobs
        return series


_minutes = _Minutes()


def throughput(conn):
    return _minutes.series(conn)


def total_series(series):
    """The per-minute sums of several queues' series."""
    return [sum(values) for values in zip(*series.values())] if series else [0] * CHART_MINUTES


# --- pages ------------------------------------------------------------------------------------------------------

def overview(conn):
    series, failures = throughput(conn), operations.failure_summary(conn, ALL_TIME)
    rows = queue_rows(conn, series, failures)
    return {"queues": rows, "totals": totals(rows, len(workers(conn))), "total": total_series(series),
            "newest": failures["newest"]}


def queue_page(conn, name, limit=10):
    """The counts of one queue, its chart, the next jobs to run, the running ones, the newest failures."""
    failures = operations.failure_summary(conn, ALL_TIME, newest=1)  # its counts (the page lists failures itself)
    row = queue_rows(conn, throughput(conn), failures, only=name)[0]
    lists = {status: operations.list_jobs(conn, operations.JobFilter(status=status, queue=name), limit=limit).jobs
             for status in ("pending", "executing", "failed")}
    serving = [worker for worker in workers(conn) if not worker["queues"] or name in worker["queues"]]
    return {"row": row, "series": row["per_minute"], "lists": lists, "workers": serving}
