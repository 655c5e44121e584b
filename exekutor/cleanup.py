"""Purging finished jobs and dead workers: `exekutor.Cleanup` and `exekutor-gevent cleanup`.

    cleanup = exekutor.Cleanup()
    cleanup.cleanup_workers(timeout=4)                     # hours; also "90m", a timedelta or a cut-off datetime
    cleanup.cleanup_jobs(before="48h", status="failed")    # or before=datetime(...)

Pending and executing jobs are never deleted, whatever the arguments: only completed, failed and discarded
ones are. Deleting a worker row puts the jobs it was executing back to pending (a trigger does it).
"""
import contextlib
import datetime as dt
import time

from exekutor import config
from exekutor.db.connection import connect

DEFAULT_WORKER_TIMEOUT = 4  # hours without a heartbeat
DEFAULT_JOB_TIMEOUT = 48  # hours since a job was scheduled and finished
# Only finished jobs may be deleted; the names are what `--job_status` and `status=` accept.
FINISHED_STATUSES = {"completed": "c", "failed": "f", "discarded": "d"}
_UNFINISHED = {"pending": "p", "executing": "e"}
# Rows per DELETE, so a large purge never holds one huge transaction, and the pause after each batch, as a share of
# the time the batch took: the purge then uses at most half of the database's time for itself and the workers'
# statements never queue behind it for long (a purge in one go doubled the job latency while it ran).
BATCH_SIZE = 1000
PAUSE_RATIO = 1.0
MAX_PAUSE = 1.0  # seconds

_DELETE_WORKERS = """
DELETE FROM exekutor_workers WHERE last_heartbeat_at < %(before)s
RETURNING id::text, hostname, pid, identifier, last_heartbeat_at
"""
# `status IN ('c', 'f', 'd')` is repeated on purpose: it is the guarantee that unfinished jobs survive any
# argument, and it lets the planner use the partial index on finished jobs (status, finished_at), oldest first.
# Only a hand-made finished row lacks finished_at; its scheduled_at decides.
_DELETE_JOBS = """
DELETE FROM exekutor_jobs WHERE id IN (
    SELECT id FROM exekutor_jobs
    WHERE status IN ('c', 'f', 'd') AND status = ANY(%(statuses)s::char(1)[])
      AND (finished_at < %(before)s OR finished_at IS NULL) AND scheduled_at < %(before)s
    LIMIT %(limit)s)
"""


def cutoff(value, now=None):
    """The moment before which things are old: `value` is a datetime, or an age (hours, a duration string like
    '90m' or '2d', or a timedelta). A naive datetime is taken as UTC."""
    now = now or dt.datetime.now(dt.timezone.utc)
    if isinstance(value, dt.datetime):
        return value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    if isinstance(value, dt.timedelta):
        age = value.total_seconds()
    else:
        age = config.parse_duration(value, "h") * 3600  # ValueError for anything that is not a duration
    if age < 0:
        raise ValueError(f"a timeout cannot be negative: {value!r}")
    return now - dt.timedelta(seconds=age)


def job_statuses(status=None):
    """Status letters from names or letters ('failed', 'f', ['completed', 'd'], 'c,f'); default: all finished."""
    if status is None:
        return sorted(FINISHED_STATUSES.values())
    names = [status] if isinstance(status, str) else list(status)
    names = [part.strip().lower() for name in names for part in str(name).split(",") if part.strip()]
    letters = set()
    for name in names:
        if name in _UNFINISHED or name in _UNFINISHED.values():
            raise ValueError(f"cleanup never deletes {name} jobs; choose from completed, failed, discarded")
        letter = FINISHED_STATUSES.get(name, name)
        if letter not in FINISHED_STATUSES.values():
            raise ValueError(f"unknown job status {name!r}; choose from completed, failed, discarded")
        letters.add(letter)
    if not letters:
        raise ValueError("no job status given; choose from completed, failed, discarded")
    return sorted(letters)


class Cleanup:
    """Deletes workers without a recent heartbeat and old finished jobs."""

    def __init__(self, database_url=None):
        self.database_url = database_url

    def _connect(self):
        return contextlib.closing(connect(self.database_url, application_name="exekutor cleanup", autocommit=True))

    def cleanup_workers(self, timeout=DEFAULT_WORKER_TIMEOUT):
        """Delete the workers whose last heartbeat is older than `timeout` (hours, a duration, a timedelta, or
        the cut-off datetime itself); their executing jobs go back to pending. Returns the deleted workers.

        A timeout shorter than `worker_timeout` is refused: it could delete live workers, whose jobs would then
        run a second time. Running workers already remove dead ones after `worker_timeout` by themselves.
        """
        now = dt.datetime.now(dt.timezone.utc)
        before = cutoff(timeout, now)
        age, floor = (now - before).total_seconds(), config.get("worker_timeout")
        if age < floor:
            raise ValueError(f"a worker timeout of {age:g}s is shorter than worker_timeout ({floor:g}s): live "
                             f"workers could be deleted and their jobs run twice")
        with self._connect() as conn, conn.cursor() as cursor:
            cursor.execute(_DELETE_WORKERS, {"before": before})
            columns = [column.name for column in cursor.description]
            return [dict(zip(columns, row)) for row in cursor.fetchall()]

    def cleanup_jobs(self, before=DEFAULT_JOB_TIMEOUT, status=None):
        """Delete finished jobs (with their errors) scheduled and finished before `before` (a datetime, or an age
        in hours, a duration or a timedelta). `status` narrows the statuses (names or letters; default all of
        completed, failed, discarded); pending and executing jobs are never deleted. Returns the number deleted."""
        params = {"before": cutoff(before), "statuses": job_statuses(status), "limit": BATCH_SIZE}
        deleted = 0
        with self._connect() as conn, conn.cursor() as cursor:
            while True:
                started = time.monotonic()
                cursor.execute(_DELETE_JOBS, params)
                deleted += cursor.rowcount
                if cursor.rowcount < BATCH_SIZE:
                    return deleted
                time.sleep(min(MAX_PAUSE, PAUSE_RATIO * (time.monotonic() - started)))
