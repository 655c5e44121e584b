"""What `exekutor-gevent schedules`, `info` and the dashboard show of the recurring jobs: the rows the workers
wrote to exekutor_schedules with the schedules this process knows (config file, `@exekutor.periodic`), with their
last and next run. The schedules themselves, and when they tick, are exekutor.schedules'.
"""
from exekutor.definitions import registry as jobs
from exekutor.operations import status_name
from exekutor.schedules import from_definition, shorten

# A timestamptz Python cannot hold (a year past 9999, written by hand) reads as NULL rather than failing the listing.
_READABLE = "CASE WHEN {0} BETWEEN '0001-01-01 00:00+00' AND '9999-12-31 23:59:59.999999+00' THEN {0} END"
_OVERVIEW = f"""
SELECT s.name, s.definition, CASE WHEN s.last_enqueued_at IS NOT NULL THEN {_READABLE.format('s.last_tick')} END,
       {_READABLE.format('s.last_tick')}, s.paused_at, s.last_job_id::text, j.status, j.cancel_requested_at
FROM exekutor_schedules s LEFT JOIN exekutor_jobs j ON j.id = s.last_job_id
ORDER BY s.name
"""


def overview(conn, configured=None):
    """[{name, job, when, catch_up, source, last_run, next_run, in_database, problem, paused_at, last_job_id,
    last_outcome}] from the table plus `configured` ({name: Schedule}, e.g. exekutor.schedules.active_schedules(...)),
    in name order. Times are the database's.

    `problem` (else None) says on one line why a schedule is not run as listed: it cannot be computed (any row
    the table may hold is listed), or it names a job this process has not registered (checked when this process
    has registered any: `--app`, the application around the dashboard). A missing table raises UndefinedTable:
    the callers' "run migrate"."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT now()")
        now = cursor.fetchone()[0]
        cursor.execute(_OVERVIEW)
        stored = {row[0]: row for row in cursor.fetchall()}
    registered = set(jobs.names()) or None
    return [_overview_entry(name, (configured or {}).get(name), stored.get(name), now, registered)
            for name in sorted(set(stored) | set(configured or {}))]


def _overview_entry(name, schedule, row, now, registered):
    problem = None
    if schedule is None:
        schedule, problem = from_definition(name, row[1])
    last, seen = (row[2], row[3]) if row else (None, None)
    next_run = None
    if schedule is not None:
        try:
            next_run = schedule.next_after(seen or now)
        except Exception as error:  # noqa: BLE001 - any stored tick or definition: the listing goes on
            problem = f"{type(error).__name__}: {error}"
    job = schedule.job if schedule else row[1].get("job") if isinstance(row[1], dict) else None
    if problem:
        problem = shorten(f"cannot be computed, workers skip it: {problem}", 200)
    elif registered is not None and job not in registered:
        problem = f"job {shorten(repr(job))} is not registered here; a worker without it skips this schedule"
    paused_at, last_job_id, status, cancel_requested_at = row[4:8] if row else (None, None, None, None)
    return {
        "name": name, "job": job if isinstance(job, str) else None,
        "when": schedule.when if schedule else "?", "catch_up": schedule.catch_up if schedule else None,
        "source": schedule.source if schedule else "database", "in_database": row is not None,
        "last_run": last, "next_run": next_run, "problem": problem, "paused_at": paused_at,
        "last_job_id": last_job_id, "last_outcome": _outcome(last_job_id, status, cancel_requested_at),
    }


def _outcome(job_id, status, cancel_requested_at):
    """The status of the last job (operations' names), "gone" once cleanup deleted it, None without one."""
    if job_id is None:
        return None
    if status is None:
        return "gone"
    return status_name({"status": status, "cancel_requested_at": cancel_requested_at})
