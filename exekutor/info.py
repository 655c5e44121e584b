"""What `exekutor-gevent info` shows: the workers per host, the unfinished jobs per queue and the recent failures;
and the tables of `exekutor-gevent jobs list` and `jobs show`.

`collect()` reads both in one snapshot (ages are computed by the database, so the clock of the machine that
runs `info` does not matter); `render()` turns them into aligned tables whose warnings are styled (the CLI
strips the styles when stdout is not a terminal), and `to_json()` into what scripts read.
"""
import datetime as dt
import json

import click

from exekutor import config
from exekutor.display import printable
from exekutor.operations import error_headline, failure_summary, job_arguments
from exekutor.queue_control import flow_fields, queue_settings
from exekutor.queue_stats import executing_by_queue, held_back_by_queue, no_pending, pending_by_queue

_WORKER_COLUMNS = """
SELECT w.id::text, w.hostname, w.pid, w.identifier, w.status, w.queues, w.min_priority, w.max_priority,
       w.min_threads, w.max_threads, w.info, w.started_at, w.last_heartbeat_at,
       extract(epoch FROM now() - w.last_heartbeat_at)::float8 AS heartbeat_age,
       (SELECT count(*) FROM exekutor_jobs j WHERE j.worker_id = w.id AND j.status = 'e')::int AS executing
"""
_WORKERS = _WORKER_COLUMNS + "FROM exekutor_workers w ORDER BY w.hostname, w.started_at, w.id"
# A page of workers, newest first (the dashboard's): the page is picked before its executing jobs are counted.
WORKERS_PAGE = _WORKER_COLUMNS + """FROM (SELECT * FROM exekutor_workers ORDER BY started_at DESC, id
                                      LIMIT %(limit)s OFFSET %(offset)s) AS w
ORDER BY w.started_at DESC, w.id"""
STATUS_NAMES = {"i": "starting", "r": "running", "s": "stopping", "c": "crashed"}
FAILURES_SINCE = 24 * 3600  # seconds of failures `info` shows
MAX_FAILURES_SINCE = 100 * 365 * 86400


def collect(conn, failures_since=FAILURES_SINCE):
    """{'workers': [...], 'queues': [...], 'totals': {...}, 'failures': {...}} with warning flags from the
    configuration: a heartbeat is late after two heartbeat_intervals and the worker presumed dead after
    worker_timeout; a queue is overdue when a due job has waited longer than polling_interval (the poll should
    have found it). Failures are those of the last `failures_since` seconds (see operations.failure_summary)."""
    late, dead = 2 * config.get("heartbeat_interval"), config.get("worker_timeout")
    overdue = config.get("polling_interval")
    with conn.cursor() as cursor:
        cursor.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")  # one snapshot for all
        workers, queues = _fetch(cursor, _WORKERS), queue_overview(cursor)
    failures = failure_summary(conn, failures_since)
    conn.rollback()
    schedules = collect_schedules(conn)
    for worker in workers:
        worker["status"] = STATUS_NAMES.get(worker["status"], worker["status"])
        worker["heartbeat_late"] = worker["heartbeat_age"] > late
        worker["presumed_dead"] = worker["heartbeat_age"] > dead
    for queue in queues:
        queue["overdue"] = (queue["overdue_for"] or 0) > overdue
    totals = {"workers": len(workers), "hosts": len({w["hostname"] for w in workers}),
              **{key: sum(q[key] for q in queues) for key in ("pending", "due", "executing", "held_back_total")},
              **{key: any(q[key] for q in queues) for key in ("estimated", "due_estimated", "held_back_estimated")},
              "paused_queues": sum(q["paused"] for q in queues)}
    totals.update({key: sum(q[key] for q in failures["queues"]) for key in ("failed", "discarded", "cancelled")})
    return {"workers": workers, "queues": queues, "totals": totals, "failures": failures, "schedules": schedules}


def collect_schedules(conn):
    """The recurring jobs (exekutor.schedule_overview): the table's and the config file's, with last and next run."""
    from exekutor.schedule_overview import overview
    from exekutor.schedules import active_schedules

    try:
        return overview(conn, active_schedules(config.get("schedules")))
    finally:
        conn.rollback()


SCHEDULE_COLUMNS = [("SCHEDULE", "<"), ("JOB", "<"), ("WHEN", "<"), ("LAST RUN", "<"), ("NEXT RUN", "<")]


def render_schedules(entries):
    """The table of `exekutor-gevent schedules` and of info's "Schedules:"; an overdue next run is a warning."""
    late = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)  # no worker claimed it for a minute
    rows = [[entry["name"], entry["job"] or "-", entry["when"] + (" catch-up" if entry["catch_up"] else ""),
             _when(entry["last_run"]),
             (_when(entry["next_run"]), WARN if entry["next_run"] and entry["next_run"] < late else None)]
            for entry in entries]
    warnings = [click.style(f"warning: schedule {printable(entry['name'])}: {printable(entry['problem'])}", **WARN)
                for entry in entries if entry.get("problem")]
    return table(SCHEDULE_COLUMNS, rows) + warnings


def queue_overview(cursor):
    """The queues with pending or executing jobs or a row in exekutor_queues (paused, limited, or once so), with
    their flow control: paused, limits, held-back jobs by reason (exekutor.queue_stats: big counts are
    estimates). What `info` and `queues list` show."""
    pending = {queue["queue"]: queue for queue in pending_by_queue(cursor)}
    executing = executing_by_queue(cursor)
    states, held = queue_settings(cursor), held_back_by_queue(cursor)
    return [{**(pending.get(name) or no_pending(name)), "executing": executing.get(name, 0),
             **flow_fields(states.get(name), held.get(name))}
            for name in sorted(set(pending) | set(executing) | set(states) | set(held))]


def _fetch(cursor, sql):
    cursor.execute(sql)
    columns = [column.name for column in cursor.description]
    return [dict(zip(columns, row)) for row in cursor.fetchall()]


def to_json(data, database):
    def default(value):
        if isinstance(value, dt.datetime):
            return value.isoformat()
        raise TypeError(f"cannot serialize {type(value).__name__}")

    return json.dumps({"database": database, **data}, indent=2, default=default)


# ---------------------------------------------------------------------------------------------------------------
# Text

WARN = {"fg": "yellow"}
ALARM = {"fg": "red", "bold": True}


def render(data, database):
    """The lines of the report; warning cells carry ANSI styles."""
    workers, queues, totals = data["workers"], data["queues"], data["totals"]
    lines = [f"Database: {database}", ""]
    hosts = f"{totals['hosts']} host" + ("s" if totals["hosts"] != 1 else "")
    lines.append(click.style(f"Workers: {totals['workers']} on {hosts}", bold=True) if workers else
                 click.style("Workers: none running", **(ALARM if totals["due"] else {"bold": True})))
    if workers:
        lines += table(WORKER_COLUMNS, _worker_rows(workers))
    lines.append("")
    pending, due = ("~" if totals.get(key) else "" for key in ("estimated", "due_estimated"))
    held = "~" if totals.get("held_back_estimated") else ""
    summary = (f"Jobs: {pending}{totals['pending']} pending ({due}{totals['due']} due"
               + (f", {held}{totals['held_back_total']} held back" if totals.get("held_back_total") else "")
               + f"), {totals['executing']} executing"
               + (f"; {totals['paused_queues']} queue(s) paused" if totals.get("paused_queues") else ""))
    lines.append(click.style(summary if queues else "Jobs: none pending or executing", bold=True))
    if queues:
        lines += table(QUEUE_COLUMNS, [_queue_row(queue) for queue in queues])
    lines.append("")
    lines += _failure_lines(data["failures"], totals)
    if data.get("schedules"):
        lines += ["", click.style(f"Schedules: {len(data['schedules'])}", bold=True)]
        lines += render_schedules(data["schedules"])
    return lines


def _failure_lines(failures, totals):
    seconds = int(failures["seconds"])
    period = (f"{seconds // 86400}d" if seconds % 86400 == 0 and seconds > 86400 else
              f"{seconds // 3600}h" if seconds % 3600 == 0 else duration(seconds))
    if not failures["queues"]:
        return [click.style(f"Failures in the last {period}: none", bold=True)]
    summary = (f"Failures in the last {period}: {totals['failed']} failed, {totals['discarded']} discarded, "
               f"{totals['cancelled']} cancelled")
    lines = [click.style(summary, **(ALARM if totals["failed"] else {"bold": True}))]
    lines += table(FAILURE_COLUMNS, [[queue["queue"], (str(queue["failed"]), WARN if queue["failed"] else None),
                                      str(queue["discarded"]), str(queue["cancelled"])]
                                     for queue in failures["queues"]])
    lines += ["", click.style("Newest failures ('exekutor-gevent jobs show ID' for the traceback):", bold=True)]
    lines += table(NEWEST_COLUMNS, [[job["id"], job["job"] or "-", job["queue"], job["status"],
                                     timestamp(job["finished_at"]), _error_summary(job)]
                                    for job in failures["newest"]])
    return lines


FAILURE_COLUMNS = [("QUEUE", "<"), ("FAILED", ">"), ("DISCARDED", ">"), ("CANCELLED", ">")]
NEWEST_COLUMNS = [("ID", "<"), ("JOB", "<"), ("QUEUE", "<"), ("STATUS", "<"), ("FINISHED", "<"), ("ERROR", "<")]
ERROR_WIDTH = 70


def _error_summary(job):
    """The error's headline, cut to ERROR_WIDTH."""
    text = error_headline(job) or "-"
    return text if len(text) <= ERROR_WIDTH else text[:ERROR_WIDTH - 1] + "…"


# ---------------------------------------------------------------------------------------------------------------
# `exekutor-gevent jobs list` and `jobs show`

_FINISHED = ("completed", "failed", "discarded", "cancelled")
_MAY_WAIT = (None, "pending", "scheduled")  # the listings that may hold pending jobs


def render_jobs(jobs, status):
    """The table of a page of jobs; the time column is the one the listing is ordered by."""
    title, column = (("FINISHED", "finished_at") if status in _FINISHED else ("STARTED", "started_at")
                     if status == "executing" else ("SCHEDULED", "scheduled_at") if status in ("pending", "scheduled")
                     else ("ENQUEUED", "enqueued_at"))
    columns = [("ID", "<"), ("JOB", "<"), ("QUEUE", "<"), ("PRIORITY", ">"), ("STATUS", "<"), ("ATTEMPTS", ">"),
               (title, "<"), ("ERROR", "<")]
    rows = [[job["id"], job["job"] or "-", job["queue"], str(job["priority"]), job["status"], str(job["attempts"]),
             timestamp(job[column]) if job[column] else "-", _error_summary(job)] for job in jobs]
    if status in _MAY_WAIT:  # pending jobs may be listed: why each waits (a limit holds it back), before ERROR
        columns.insert(-1, ("WAITING", "<"))
        for row, job in zip(rows, jobs):
            row.insert(-1, job["waiting"] or "-")
    return table(columns, rows)


def render_job(job):
    """The lines of `jobs show`: the job's fields, then each error record with its traceback."""
    # "waiting" only for a job a limit holds back: why it has not started (flow control).
    waiting = [("waiting", job["waiting"])] if job.get("waiting") else []
    fields = [("job", job["job"] or "-"), ("status", job["status"]), *waiting, ("queue", job["queue"]),
              ("priority", job["priority"]), ("attempts", _attempts(job)),
              ("enqueued", _when(job["enqueued_at"])), ("scheduled", _when(job["scheduled_at"])),
              ("started", _when(job["started_at"])), ("finished", _when(job["finished_at"])),
              ("runtime", f"{job['runtime']:.3f}s" if job["runtime"] is not None else "-"),
              ("worker", job["worker_id"] or "-"), ("cancel requested", _when(job["cancel_requested_at"])),
              ("unique key", job["unique_key"] or "-"),
              ("arguments", _compact(job_arguments(job["payload"]))), ("options", _compact(job["options"]))]
    lines = [click.style(f"Job {job['id']}", bold=True)]
    lines += [f"  {name + ':':<18}{printable(str(value))}" for name, value in fields]
    errors = job["errors"]
    lines += ["", click.style(f"Errors: {len(errors)}" if errors else "Errors: none", bold=True)]
    for error in errors:
        lines.append(f"  attempt {error['attempt'] or '-'} at {_when(error['created_at'])}: "
                     f"{printable(error['type'] or '?')}: {printable(error['message'] or '')}")
        # Split on newlines only: printable escapes every other separator, so no row can end a line early.
        traceback = (error["traceback"] or "").rstrip()
        lines += ["      " + line for line in printable(traceback, multiline=True).split("\n")] if traceback else []
    return lines


def _when(value):
    return timestamp(value) if value else "-"


def _attempts(job):
    """Attempts, with how many of them were releases (lost connections), which its Retry policy does not count."""
    releases = job.get("releases")
    return f"{job['attempts']} ({releases} released)" if releases else job["attempts"]


def _compact(value):
    return json.dumps(value, ensure_ascii=False, default=str) if value else "-"


WORKER_COLUMNS = [("HOST", "<"), ("ID", "<"), ("IDENTIFIER", "<"), ("PID", ">"), ("STATUS", "<"),
                  ("QUEUES", "<"), ("PRIORITIES", "<"), ("THREADS", ">"), ("EXECUTING", ">"), ("STARTED", "<"),
                  ("LAST HEARTBEAT", "<")]
QUEUE_COLUMNS = [("QUEUE", "<"), ("PENDING", ">"), ("DUE", ">"), ("EXECUTING", ">"), ("NEXT SCHEDULED", "<"),
                 ("OLDEST OVERDUE", "<"), ("HELD BACK", "<"), ("FLOW CONTROL", "<")]


def _worker_rows(workers):
    rows, previous_host = [], None
    for worker in workers:
        host = worker["hostname"] if worker["hostname"] != previous_host else ""  # grouped by host
        previous_host = worker["hostname"]
        heartbeat = (f"{duration(worker['heartbeat_age'])} ago",
                     ALARM if worker["presumed_dead"] else WARN if worker["heartbeat_late"] else None)
        status = (worker["status"], None if worker["status"] == "running" else WARN)
        rows.append([host, worker["id"], worker["identifier"] or "-", str(worker["pid"]), status,
                     ", ".join(worker["queues"]) if worker["queues"] else "all",
                     f"{worker['min_priority'] or 1}-{worker['max_priority'] or 32767}",
                     f"{worker['min_threads']}-{worker['max_threads']}", str(worker["executing"]),
                     timestamp(worker["started_at"]), heartbeat])
    return rows


def _queue_row(queue):
    style = ALARM if queue["overdue"] else None
    next_scheduled = (f"in {duration(queue['next_in'])} ({timestamp(queue['next_scheduled_at'])})"
                      if queue["next_scheduled_at"] else "-")
    overdue = duration(queue["overdue_for"]) if queue["oldest_due_at"] else "-"
    pending, due = ("~" if estimated else "" for estimated in (queue["estimated"], queue["due_estimated"]))
    return [(queue["queue"], style), f"{pending}{queue['pending']}", f"{due}{queue['due']}", str(queue["executing"]),
            next_scheduled, (overdue, style), held_back_text(queue), flow_text(queue)]


def held_back_text(queue):
    """'12 (10 concurrency, 2 paused)': a queue's pending jobs that limits hold back, by reason; '-' for none."""
    if not queue["held_back_total"]:
        return "-"
    mark = "~" if queue["held_back_estimated"] else ""
    reasons = ", ".join(f"{count} {reason}" for reason, count in queue["held_back"].items() if count)
    return f"{mark}{queue['held_back_total']} ({reasons})"


def flow_text(queue):
    """'paused since 2026-12-06 08:00:00, concurrency 5, rate 100/m' (a warning while paused); '-' for none."""
    parts = [f"paused since {timestamp(queue['paused_at'])}"] if queue["paused"] else []
    parts += [f"concurrency {queue['concurrency']}"] if queue["concurrency"] else []
    parts += [f"rate {queue['rate_limit']}"] if queue["rate_limit"] else []
    return (", ".join(parts), WARN if queue["paused"] else None) if parts else "-"


def table(columns, rows):
    """Aligned lines (header first); a cell is text or (text, style). Styles are applied after padding, so
    escape codes never count towards a column's width."""
    # Queue names, hostnames and identifiers come from table rows: escaped, so they cannot restyle the terminal or
    # forge a line.
    rows = [[(printable(cell[0]), cell[1]) if isinstance(cell, tuple) else (printable(cell), None) for cell in row]
            for row in rows]
    widths = [max([len(title)] + [len(row[i][0]) for row in rows]) for i, (title, _) in enumerate(columns)]

    def line(cells):
        parts = []
        for (text, style), width, (_, align) in zip(cells, widths, columns):
            padding = " " * (width - len(text))
            text = click.style(text, **style) if style else text
            parts.append(text + padding if align == "<" else padding + text)
        return "  " + "  ".join(parts).rstrip()

    return [line([(title, {"bold": True}) for title, _ in columns])] + [line(row) for row in rows]


def duration(seconds):
    """12s, 4m 05s, 3h 02m, 2d 03h."""
    seconds = max(0, int(seconds))
    for unit, size, sub_unit, sub_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60), ("m", 60, "s", 1)):
        if seconds >= size:
            return f"{seconds // size}{unit} {seconds % size // sub_size:02d}{sub_unit}"
    return f"{seconds}s"


def timestamp(value):
    """Local time, to the second."""
    return value.astimezone().strftime("%Y-%m-%d %H:%M:%S")
