"""Operating the queue (DESIGN §10): find jobs, read one with its errors, retry and cancel them.

The one layer that `exekutor-gevent jobs`, `info`, `JobRequest(job_id)` and the dashboard use. Every function
takes a psycopg2 connection in autocommit mode (each action batch commits on its own, so a retry of a million jobs
never holds one huge transaction).

Listing is keyset-paginated: a page ends with an opaque cursor naming the last row's sort key, and the next page
starts after it, so page 1,000 costs what page 1 does. The order depends on the status asked for:

- finished (completed, failed, discarded, cancelled): newest finished first, on the index (status, finished_at, id);
- pending and scheduled: next to run first (priority, scheduled_at, enqueued_at), on the pending index;
- executing: longest running first (there are at most as many as the workers' greenlets);
- any status: newest enqueued first, on the primary key (job ids are time-ordered UUIDs).

Retry puts failed or discarded jobs back to pending with the same id: their error records stay, their attempts
count on, and they get a fresh retry budget (the attempt they had reached is kept in their options as
`retry_base`, and its count of releases starts again; the worker counts a Retry policy's attempts from there). A
retry is an enqueue again: enqueued_at and scheduled_at are reset, so queue_timeout counts from it (or from `at`).
A unique job takes its key back if it is free; it never waits long for an application's transaction that is
enqueueing the same key (see `retry`).

Cancel records the request in the row (`cancel_requested_at`). A pending job ends at once (a trigger discards it
with a JobCancelled record); an executing one is announced to its worker on the `exekutor::job_cancelled`
channel, and the worker also finds the request in the row at each poll, so a lost notification does not lose it.
"""
import base64
import binascii
import datetime as dt
import difflib
import json
import re
import uuid
from dataclasses import dataclass

import psycopg2.errors

from exekutor.db.queries import CANCEL_CHANNEL
from exekutor.definitions import check_job_name, check_queue
from exekutor.flow import describe
from exekutor.serialization import text_problem

STATUS_LETTERS = {"p": "pending", "e": "executing", "c": "completed", "f": "failed", "d": "discarded"}
STATUSES = ("pending", "scheduled", "executing", "completed", "failed", "discarded", "cancelled")
RETRYABLE = ("failed", "discarded", "cancelled")
CANCELLABLE = ("pending", "scheduled", "executing")
MAX_PAGE = 1000
DEFAULT_PAGE = 50
ACTION_BATCH = 5000  # rows per retry/cancel statement
NOTIFY_CHUNK = 100  # job ids per cancel notification: far below PostgreSQL's 8000-byte payload limit
CANCELLED_TYPE = "exekutor.errors.JobCancelled"
MAX_SHOWN_RECORD = 10_000  # characters of an odd error record shown as its message (error_records' own limit)

# Per status: the SQL condition, the sort key (all columns sorted the same way, so a row comparison continues a
# page) and its direction, and the time column --since applies to.
_FINISHED = ("(finished_at, id)", "DESC", "finished_at")
_ORDERS = {
    "pending": ("status = 'p'", "(priority, scheduled_at, enqueued_at, id)", "ASC", "enqueued_at"),
    "scheduled": ("status = 'p' AND scheduled_at > now()", "(priority, scheduled_at, enqueued_at, id)", "ASC",
                  "enqueued_at"),
    "executing": ("status = 'e'", "(started_at, id)", "ASC", "started_at"),
    "completed": ("status = 'c'", *_FINISHED),
    "failed": ("status = 'f'", *_FINISHED),
    "discarded": ("status = 'd'", *_FINISHED),
    "cancelled": ("status = 'd' AND cancel_requested_at IS NOT NULL", *_FINISHED),
    None: ("true", "(id)", "DESC", "enqueued_at"),
}
_KEY_TYPES = {"priority": "int", "scheduled_at": "time", "enqueued_at": "time", "started_at": "time",
              "finished_at": "time", "id": "uuid"}

_COLUMNS = """
j.id::text AS id, j.payload->>'job' AS job, j.queue, j.priority, j.status, j.attempts, j.releases, j.enqueued_at,
j.scheduled_at, j.started_at, j.finished_at, j.runtime, j.worker_id::text AS worker_id, j.cancel_requested_at,
j.unique_key, j.blocked_on"""
# In a one-element array, so that a record stored as JSON null stays apart from "no record"; only an object has a
# traceback to leave out (`-` on a string or number raises "cannot delete from scalar").
_LAST_ERROR = """
(SELECT jsonb_build_array(CASE WHEN jsonb_typeof(e.error) = 'object' THEN e.error - 'traceback' ELSE e.error END)
 FROM exekutor_job_errors e WHERE e.job_id = j.id ORDER BY e.created_at DESC, e.id DESC LIMIT 1) AS last_error"""


class OperationError(ValueError):
    """Bad input to an operation (an unknown status, a malformed id or cursor): nothing was done."""


@dataclass(frozen=True)
class JobFilter:
    """Which jobs: a status (see STATUSES), a queue, a job name, and a time they were enqueued (finished, for
    finished statuses) at or after (`since`) and before (`until`). The search fields (the dashboard's) narrow it
    further: an id prefix (hex digits, hyphens ignored: a range of the primary key), and text that the job name,
    an error record's type or message, or the arguments' JSON contain (case-insensitive). None means any."""
    status: str = None
    queue: str = None
    job: str = None
    since: dt.datetime = None
    until: dt.datetime = None
    id_prefix: str = None
    job_contains: str = None
    error_contains: str = None
    arguments_contain: str = None

    def __post_init__(self):
        if self.status not in _ORDERS:
            raise OperationError(f"unknown status {self.status!r}: expected one of {', '.join(STATUSES)}")
        if self.queue is not None:
            try:
                check_queue(self.queue)
            except ValueError as error:
                raise OperationError(str(error)) from None
        if self.job is not None:
            try:
                if not isinstance(self.job, str) or not self.job:
                    raise ValueError(f"invalid job name {self.job!r}: expected a non-empty string")
                check_job_name(self.job)  # NUL, lone surrogates: no name can hold them
            except ValueError as error:
                raise OperationError(str(error)) from None
        for name in ("since", "until"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, dt.datetime) or value.tzinfo is None):
                raise OperationError(f"invalid {name} {value!r}: expected a timezone-aware datetime")
        for name in _SEARCH_TEXTS:
            _check_search_text(name, getattr(self, name))
        if self.id_prefix is not None:
            _id_range(self.id_prefix)

    def where(self, extra_status=None):
        """(SQL condition, params) for the filter; `extra_status` narrows it to statuses an action may touch."""
        condition, _, _, since_column = _ORDERS[self.status]
        parts, params = [condition], {}
        if extra_status:
            parts.append(extra_status)
        if self.queue is not None:
            parts.append("queue = %(queue)s")
            params["queue"] = self.queue
        if self.job is not None:
            parts.append("payload->>'job' = %(job)s")
            params["job"] = self.job
        if self.since is not None:
            parts.append(f"{since_column} >= %(since)s")
            params["since"] = self.since
        if self.until is not None:
            parts.append(f"{since_column} < %(until)s")
            params["until"] = self.until
        if self.id_prefix is not None:
            parts.append("id BETWEEN %(id_low)s::uuid AND %(id_high)s::uuid")
            params["id_low"], params["id_high"] = _id_range(self.id_prefix)
        for name, condition in _SEARCH_TEXTS.items():
            if getattr(self, name) is not None:
                parts.append(condition.format(f"%({name})s"))
                params[name] = "%" + _like_escape(getattr(self, name)) + "%"
        return " AND ".join(parts), params


# What each search text is looked for in (ILIKE, its wildcards escaped). Neither has an index: a search scans the
# rows the other fields leave (status, queue, time range, the page's LIMIT stops it early when matches are common).
_SEARCH_TEXTS = {
    "job_contains": "payload->>'job' ILIKE {}",
    # A semi-join with no alias of the jobs' table: the listing names it j, the actions and counts do not.
    "error_contains": "id IN (SELECT job_id FROM exekutor_job_errors "
                      "WHERE error->>'message' ILIKE {0} OR error->>'type' ILIKE {0})",
    "arguments_contain": "jsonb_build_array(payload->'args', payload->'kwargs')::text ILIKE {}",
}
MAX_SEARCH_TEXT = 200


def _check_search_text(name, value):
    if value is None:
        return
    if not isinstance(value, str) or not value or len(value) > MAX_SEARCH_TEXT:
        raise OperationError(f"invalid {name} {str(value)[:80]!r}: expected 1 to {MAX_SEARCH_TEXT} characters")
    problem = text_problem(value)  # NUL, lone surrogates: PostgreSQL cannot take them, and no row holds them
    if problem:
        raise OperationError(f"invalid {name} {value[:80]!r}: {problem}")


def _like_escape(text):
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _id_range(prefix):
    """(lowest, highest) job id that starts with `prefix` (hex digits; hyphens ignored)."""
    digits = prefix.replace("-", "").lower() if isinstance(prefix, str) else ""
    if not re.fullmatch(r"[0-9a-f]{1,32}", digits):
        raise OperationError(f"invalid id prefix {str(prefix)[:80]!r}: expected 1 to 32 hex digits")
    return tuple(str(uuid.UUID(digits + fill * (32 - len(digits)))) for fill in "0f")


@dataclass
class Page:
    jobs: list
    next_cursor: str = None  # None: this is the last page


# --- reading ----------------------------------------------------------------------------------------------------

def list_jobs(conn, job_filter=None, limit=DEFAULT_PAGE, after=None):
    """A page of jobs matching `job_filter`, after the page that ended with cursor `after`."""
    job_filter = job_filter or JobFilter()
    limit = _check_limit(limit)
    condition, params = job_filter.where()
    _, key, direction, _ = _ORDERS[job_filter.status]
    columns = _key_columns(key)
    # Qualified: in ORDER BY a bare name would mean the output column (id is selected as text).
    qualified = [f"j.{column}" for column in columns]
    if after is not None:
        values = decode_cursor(after, job_filter.status)
        placeholders = ", ".join(f"%(after_{i})s::{_sql_type(column)}" for i, column in enumerate(columns))
        condition += f" AND ({', '.join(qualified)}) {'>' if direction == 'ASC' else '<'} ({placeholders})"
        params.update({f"after_{i}": value for i, value in enumerate(values)})
    order = ", ".join(f"{column} {direction}" for column in qualified)
    params["limit"] = limit + 1  # one more says whether another page exists
    rows = _fetch(conn, f"SELECT {_COLUMNS}, {_LAST_ERROR} FROM exekutor_jobs j WHERE {condition} "
                        f"ORDER BY {order} LIMIT %(limit)s", params)
    jobs = [_job(row) for row in rows[:limit]]
    more = len(rows) > limit
    return Page(jobs, encode_cursor(jobs[-1], job_filter.status) if more else None)


def get_job(conn, job_id):
    """One job with its arguments, options and every error record (oldest first), or None if there is none."""
    job_id = check_job_id(job_id)
    rows = _fetch(conn, f"SELECT {_COLUMNS}, j.payload, j.options FROM exekutor_jobs j WHERE j.id = %(id)s",
                  {"id": job_id})
    if not rows:
        return None
    job = _job(rows[0])
    job["errors"] = job_errors(conn, job_id)
    return job


def job_errors(conn, job_id):
    """The error records of a job, oldest first: [{"created_at", "attempt", "type", "message", "traceback"}]."""
    rows = _fetch(conn, "SELECT created_at, attempt, error FROM exekutor_job_errors WHERE job_id = %(id)s "
                        "ORDER BY created_at, id", {"id": check_job_id(job_id)})
    return [{"created_at": row["created_at"], "attempt": row["attempt"], **_error_fields(row["error"])}
            for row in rows]


def count_jobs(conn, job_filter=None, action=None, job_ids=None):
    """How many jobs match the filter (or are among `job_ids`); with `action` ("retry" or "cancel"), how many of
    them it would touch."""
    extra = {"retry": _RETRY_SCOPE, "cancel": _CANCEL_SCOPE, None: None}[action]
    if job_ids is not None:
        condition = " AND ".join(filter(None, ["id = ANY(%(ids)s::uuid[])", extra]))
        params = {"ids": [check_job_id(job_id) for job_id in job_ids]}
    else:
        condition, params = (job_filter or JobFilter()).where(extra)
    return _fetch(conn, f"SELECT count(*) AS n FROM exekutor_jobs WHERE {condition}", params)[0]["n"]


# Failures per queue and the newest failures, for `info` and the dashboard.
_FAILURE_COUNTS = """
SELECT CASE WHEN %(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]) THEN queue END AS queue,
       count(*) FILTER (WHERE status = 'f')::int AS failed,
       count(*) FILTER (WHERE status = 'd' AND cancel_requested_at IS NULL)::int AS discarded,
       count(*) FILTER (WHERE status = 'd' AND cancel_requested_at IS NOT NULL)::int AS cancelled
FROM exekutor_jobs
WHERE status IN ('f', 'd') AND finished_at >= now() - %(seconds)s * interval '1 second'
GROUP BY 1 ORDER BY 1
"""


def failure_summary(conn, seconds=24 * 3600, newest=5, queues=None):
    """{"queues": [{queue, failed, discarded, cancelled}], "newest": [jobs]} over the last `seconds`. With
    `queues` (a page that shows a few of many), a row for each of those with failures, and one with queue None
    for all the others together: a row per queue of 20,000 took 50 ms to group and fetch."""
    since = _fetch(conn, "SELECT now() - %(s)s * interval '1 second' AS t", {"s": seconds})[0]["t"]
    queues = _fetch(conn, _FAILURE_COUNTS, {"seconds": seconds, "queues": queues})
    newest_failed = list_jobs(conn, JobFilter(status="failed", since=since), limit=newest).jobs
    newest_discarded = list_jobs(conn, JobFilter(status="discarded", since=since), limit=newest).jobs
    latest = sorted(newest_failed + newest_discarded, key=lambda job: job["finished_at"], reverse=True)[:newest]
    return {"seconds": seconds, "queues": queues, "newest": latest}


# --- acting -----------------------------------------------------------------------------------------------------

_RETRY_SCOPE = "status IN ('f', 'd')"
_CANCEL_SCOPE = "status IN ('p', 'e') AND cancel_requested_at IS NULL"

_RETRY = """
WITH picked AS (
    SELECT id FROM exekutor_jobs WHERE {condition} ORDER BY id LIMIT %(batch)s FOR UPDATE SKIP LOCKED
), retried AS (
    UPDATE exekutor_jobs j SET status = 'p', worker_id = NULL, started_at = NULL, finished_at = NULL,
        runtime = NULL, cancel_requested_at = NULL, enqueued_at = now(),
        unique_key = CASE WHEN %(keep_keys)s THEN j.unique_key END,
        scheduled_at = coalesce(%(at)s::timestamptz, now()),
        options = coalesce(j.options, '{{}}'::jsonb) || jsonb_build_object('retry_base', j.attempts), releases = 0
    FROM picked WHERE j.id = picked.id AND j.status IN ('f', 'd')
    RETURNING j.id, j.queue, j.priority, j.scheduled_at
), counted AS (
    UPDATE exekutor_operator_actions SET jobs = jobs + (SELECT count(*) FROM retried) WHERE action = 'retry'
)
SELECT coalesce(array_agg(id::text), '{{}}'),
       exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer), array_agg(scheduled_at))
FROM retried
"""
# How long a retry may wait for a lock before its batch goes back without unique keys (see retry()): the wait is
# for an application's transaction that enqueues one of the keys, or, rarely, for another operator's action on the
# counter row (then keys are given up that need not have been; the jobs still go back).
RETRY_LOCK_TIMEOUT = "1s"
_UNIQUE_KEY_CONFLICTS = (psycopg2.errors.LockNotAvailable, psycopg2.errors.UniqueViolation)

# FOR UPDATE without SKIP LOCKED: a job its worker is completing right now is waited for, not skipped (its
# outcome then decides: finished jobs keep it, a job sent back to pending is discarded by the trigger).
# A running job gives up its unique key at once (it never runs again), so the key can be enqueued while its
# worker interrupts it; a pending one leaves the unique index as the trigger discards it.
_CANCEL = """
WITH picked AS (
    SELECT id FROM exekutor_jobs WHERE {condition} ORDER BY id LIMIT %(batch)s FOR UPDATE
), cancelled AS (
    UPDATE exekutor_jobs j SET cancel_requested_at = now(),
        unique_key = CASE WHEN j.status = 'e' THEN NULL ELSE j.unique_key END
    FROM picked WHERE j.id = picked.id AND j.status IN ('p', 'e') AND j.cancel_requested_at IS NULL
    RETURNING j.id, j.status, j.worker_id
), counted AS (
    UPDATE exekutor_operator_actions SET jobs = jobs + (SELECT count(*) FROM cancelled) WHERE action = 'cancel'
), notified AS (
    SELECT count(pg_notify('{channel}', json_build_object('w', worker_id, 'j', ids)::text)) AS n
    FROM (SELECT worker_id, json_agg(id) AS ids
          FROM (SELECT id, worker_id, row_number() OVER (PARTITION BY worker_id) AS position
                FROM cancelled WHERE status = 'e') AS executing
          GROUP BY worker_id, (position - 1) / {chunk}) AS per_worker
)
SELECT coalesce(array_agg(id::text) FILTER (WHERE status = 'd'), '{{}}'),
       coalesce(array_agg(id::text) FILTER (WHERE status = 'e'), '{{}}'),
       (SELECT n FROM notified)
FROM cancelled
"""


@dataclass
class RetryResult:
    retried: list  # ids put back to pending


@dataclass
class CancelResult:
    cancelled: list  # ids of pending jobs, now discarded
    interrupting: list  # ids of executing jobs whose workers were told to interrupt them


def retry(conn, job_ids=None, job_filter=None, at=None):
    """Put failed and discarded jobs (by id, or all that match a filter) back to pending, at once or at `at`.

    A unique job goes back with its key if no other job holds it (a trigger drops it otherwise). Taking the key
    back waits for an application's transaction that is enqueueing the same key right now, and fails if that one
    commits: then, or after RETRY_LOCK_TIMEOUT, the batch goes back without its keys instead."""
    if at is not None and (not isinstance(at, dt.datetime) or at.tzinfo is None):
        raise OperationError(f"invalid retry time {at!r}: expected a timezone-aware datetime")
    retried = []
    for statement, params in _action_batches(_RETRY, _RETRY_SCOPE, job_ids, job_filter):
        params["at"] = at
        row = _run_with_lock_timeout(conn, statement, {**params, "keep_keys": True})
        ids, _ = row or _run_action(conn, statement, {**params, "keep_keys": False})
        retried += ids
        if len(ids) < ACTION_BATCH or job_ids is not None:
            break
    return RetryResult(retried)


def cancel(conn, job_ids=None, job_filter=None):
    """Cancel pending and executing jobs (by id, or all that match a filter); see the module's docstring."""
    result = CancelResult([], [])
    for statement, params in _action_batches(_CANCEL, _CANCEL_SCOPE, job_ids, job_filter):
        pending, executing, _ = _run_action(conn, statement, params)
        result.cancelled += pending
        result.interrupting += executing
        if pending and conn.autocommit:
            _run_action(conn, _UNBLOCK_CANCELLED, {"ids": pending})
        if len(pending) + len(executing) < ACTION_BATCH or job_ids is not None:
            break
    return result


# Flow control (0011): a pending job promoted into a free slot holds it (`holds`); discarded by a cancel, it gives
# the slot up, and the next job its limit holds back gets it now (else it waited for a worker's poll sweep, a minute
# by default). After the cancel's statement, so that the promotion sees the slot free; not in a caller's
# transaction, which would hold the limits' locks (and stall every reservation of them) until it commits, and in
# which the slot is not free for anyone else yet: there the workers' poll sweep promotes.
_UNBLOCK_CANCELLED = """
SELECT exekutor_unblock(ARRAY(SELECT DISTINCT k FROM exekutor_jobs, unnest(holds) AS k
                              WHERE id = ANY(%(ids)s::uuid[]) AND holds IS NOT NULL ORDER BY k))
"""


def _action_batches(template, scope, job_ids, job_filter):
    """The statement and parameters of each batch (re-run until a batch comes back short)."""
    if (job_ids is None) == (job_filter is None):
        raise OperationError("give either job ids or a filter")
    if job_ids is not None:
        condition = f"id = ANY(%(ids)s::uuid[]) AND {scope}"
        params = {"ids": [check_job_id(job_id) for job_id in job_ids]}
    else:
        condition, params = job_filter.where(scope)
    statement = template.format(condition=condition, channel=CANCEL_CHANNEL, chunk=NOTIFY_CHUNK)
    while True:
        yield statement, {**params, "batch": ACTION_BATCH}


def _run_action(conn, statement, params):
    with conn.cursor() as cursor:
        cursor.execute(statement, params)
        return cursor.fetchone()


def _run_with_lock_timeout(conn, statement, params):
    """The statement's row, or None (and nothing done) when it waited longer than RETRY_LOCK_TIMEOUT for a lock or
    met a unique violation. In the caller's transaction (a connection not in autocommit) only the statement is
    undone, and the caller's lock_timeout is kept."""
    inside = not conn.autocommit
    undo = "ROLLBACK TO SAVEPOINT exekutor_retry" if inside else "ROLLBACK"
    with conn.cursor() as cursor:
        cursor.execute("SAVEPOINT exekutor_retry" if inside else "BEGIN")
        try:
            cursor.execute("SELECT current_setting('lock_timeout')")
            previous = cursor.fetchone()[0]
            cursor.execute("SELECT set_config('lock_timeout', %s, true)", (RETRY_LOCK_TIMEOUT,))
            cursor.execute(statement, params)
            row = cursor.fetchone()
            if inside:
                cursor.execute("SELECT set_config('lock_timeout', %s, true)", (previous,))
        except _UNIQUE_KEY_CONFLICTS:
            cursor.execute(undo)
            return None
        except BaseException:
            _quietly(cursor, undo)  # leave the connection usable (or the caller's transaction as it was)
            raise
        cursor.execute("RELEASE SAVEPOINT exekutor_retry" if inside else "COMMIT")
        return row


def _quietly(cursor, sql):
    try:
        cursor.execute(sql)
    except psycopg2.Error:
        pass  # the connection itself is gone: the error being raised says why


# --- helpers ----------------------------------------------------------------------------------------------------

def check_job_id(job_id):
    """The canonical text of a job id (a UUID, or its text); OperationError otherwise."""
    if isinstance(job_id, uuid.UUID):
        return str(job_id)
    try:
        return str(uuid.UUID(job_id))
    except (TypeError, ValueError, AttributeError):
        raise OperationError(f"invalid job id {str(job_id)[:80]!r}: expected a UUID") from None


# Job names a `--job` that matched nothing is compared with: those of the newest jobs only, so that a miss on a
# huge table stays a bounded scan.
SUGGESTION_SCAN = 100_000


def similar_job_names(conn, name, limit=3):
    """Job names of recent jobs that `name` may mean: those with its function name ('send' or 'app.jobs.send'
    for 'app.jobs:send'), else close spellings; [] when `name` itself is one of them."""
    rows = _fetch(conn, "SELECT DISTINCT job FROM (SELECT payload->>'job' AS job FROM exekutor_jobs "
                        "ORDER BY id DESC LIMIT %(scan)s) recent WHERE job IS NOT NULL", {"scan": SUGGESTION_SCAN})
    names = sorted(row["job"] for row in rows)
    if name in names:
        return []
    tail = [known for known in names if re.split(r"[.:]", known)[-1] == re.split(r"[.:]", name)[-1]]
    return (tail or difflib.get_close_matches(name, names, n=1))[:limit]


def _check_limit(limit):
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_PAGE:
        raise OperationError(f"invalid limit {limit!r}: expected 1 to {MAX_PAGE}")
    return limit


def _fetch(conn, sql, params):
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        columns = [column.name for column in cursor.description]
        return [dict(zip(columns, row)) for row in cursor.fetchall()]


def _job(row):
    row["status"] = status_name(row)
    # Why a pending job waits: the limit that holds it back (flow control), in words; None when nothing does.
    row["waiting"] = describe(row["blocked_on"]) if row["status"] == "pending" else None
    if "last_error" in row:  # type and message (a listing leaves the traceback to get_job)
        error = row["last_error"]
        row["last_error"] = ({key: _error_fields(error[0])[key] for key in ("type", "message")}
                             if isinstance(error, list) else None)
    return row


def status_name(row):
    """The status spelled out, as filters name it: a discarded job whose cancel was requested is "cancelled"
    (DESIGN §10: discarded with a JobCancelled record); `row` has "status" (a letter) and "cancel_requested_at"."""
    if row["status"] == "d" and row["cancel_requested_at"] is not None:
        return "cancelled"
    return STATUS_LETTERS.get(row["status"], row["status"])


def _error_fields(error):
    """type, message and traceback of a stored record (each a string or None), whatever shape a hand-made row gave
    it: a record that is not an object, or says neither type nor message, is shown whole as the message."""
    fields = {key: error.get(key) if isinstance(error, dict) and isinstance(error.get(key), str) else None
              for key in ("type", "message", "traceback")}
    if fields["type"] is None and fields["message"] is None:
        if isinstance(error, dict):
            error = {key: value for key, value in error.items() if key != "traceback"}  # a listing has none
        whole = error if isinstance(error, str) else json.dumps(error, ensure_ascii=False, default=str)
        fields["message"] = whole[:MAX_SHOWN_RECORD]
    return fields


def error_headline(job):
    """`Type: first line of the message` of a listed job's last error (None without one): what the CLI's tables
    and the dashboard's lists show."""
    error = job.get("last_error")
    if not error:
        return None
    kind = (error.get("type") or "?").rpartition(".")[2]
    lines = (error.get("message") or "").strip().splitlines()
    return f"{kind}: {lines[0]}" if lines else kind


def job_arguments(payload):
    """{"args", "kwargs"} of a stored payload; a payload that is not an object (a hand-made row) as it is."""
    return {key: payload.get(key) for key in ("args", "kwargs")} if isinstance(payload, dict) else payload


def _key_columns(key):
    return [column.strip() for column in key.strip("()").split(",")]


def _sql_type(column):
    return {"int": "integer", "time": "timestamptz", "uuid": "uuid"}[_KEY_TYPES[column]]


def encode_cursor(job, status):
    """The cursor after `job` in a listing of `status`: its sort key, base64 (opaque to users, stable to us)."""
    _, key, _, _ = _ORDERS[status]
    values = [job[column] for column in _key_columns(key)]
    data = [status or "", *(value.isoformat() if isinstance(value, dt.datetime) else value for value in values)]
    return base64.urlsafe_b64encode(json.dumps(data, separators=(",", ":")).encode()).decode().rstrip("=")


_MAX_CURSOR = 1000


def decode_cursor(cursor, status):
    """The sort key values in a cursor made for the same status; OperationError for anything else."""
    _, key, _, _ = _ORDERS[status]
    columns = _key_columns(key)
    try:
        if len(cursor) > _MAX_CURSOR:  # what a listing prints is far shorter; nested input would exhaust the stack
            raise ValueError("too long")
        text = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        data = json.loads(text)
    except (TypeError, ValueError, binascii.Error, RecursionError):
        raise OperationError(f"invalid cursor {str(cursor)[:80]!r}: use the one a listing printed") from None
    if not isinstance(data, list) or len(data) != len(columns) + 1 or data[0] != (status or ""):
        raise OperationError(f"invalid cursor {str(cursor)[:80]!r}: not from a listing with this --status")
    return [_cursor_value(column, value, cursor) for column, value in zip(columns, data[1:])]


def _cursor_value(column, value, cursor):
    kind = _KEY_TYPES[column]
    try:
        if kind == "int" and isinstance(value, int) and not isinstance(value, bool) and -2**31 <= value < 2**31:
            return value
        if kind == "time" and isinstance(value, str):
            return dt.datetime.fromisoformat(value).isoformat()  # checked here, read by PostgreSQL
        if kind == "uuid":
            return check_job_id(value)
    except (ValueError, OperationError):
        pass
    raise OperationError(f"invalid cursor {str(cursor)[:80]!r}: use the one a listing printed")
