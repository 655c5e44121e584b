"""Putting jobs in the queue: one INSERT per batch, in the caller's transaction when a connection is given."""
import hashlib
import json
import random
import time

import psycopg2
import psycopg2.errors

from exekutor import config, flow, hooks
from exekutor.db.arrays import array, number, quoted, text_or_null
from exekutor.db.pool import default_pool
from exekutor.definitions import DEFAULT_QUEUE, UNIQUE_UNTIL, JobDefinition, check_unique_key
from exekutor.errors import SchemaError
from exekutor.operations import cancel, check_job_id, job_errors, retry, status_name
from exekutor.serialization import dump_arguments, json_backend

# One statement for any batch size, each column as one array literal (see exekutor.db.arrays). COPY is not an
# option under psycogreen. A job is due from the moment its row is made (clock_timestamp(), not the transaction's
# now()): the jobs of one batch then follow each other in the pending index instead of sharing one key, so that a
# reservation's floor (exekutor.worker.floors) can start past those already reserved.
INSERT_JOBS = """
INSERT INTO exekutor_jobs (id, queue, priority, scheduled_at, payload, options)
SELECT id, queue, priority, coalesce(scheduled_at, clock_timestamp() + delay * interval '1 second'), payload, options
FROM unnest(%s::uuid[], %s::text[], %s::smallint[], %s::timestamptz[], %s::float8[], %s::jsonb[], %s::jsonb[])
    AS batch(id, queue, priority, scheduled_at, delay, payload, options)
"""
INSERT_JOB = """
INSERT INTO exekutor_jobs (id, queue, priority, scheduled_at, payload, options)
VALUES (%s, %s, %s, coalesce(%s::timestamptz, clock_timestamp() + %s * interval '1 second'), %s, %s)
"""
# Jobs with limits of their own (exekutor.flow, migration 0011): the batch insert with the limit columns.
_LIMIT_COLUMNS = "concurrency_key, concurrency_limit, rate_key, rate_limit, rate_period"
_LIMIT_ARRAYS = "%s::text[], %s::int[], %s::text[], %s::int[], %s::int[]"
INSERT_LIMITED_JOBS = f"""
INSERT INTO exekutor_jobs (id, queue, priority, scheduled_at, payload, options, {_LIMIT_COLUMNS})
SELECT id, queue, priority, coalesce(scheduled_at, clock_timestamp() + delay * interval '1 second'), payload, options,
       {_LIMIT_COLUMNS}
FROM unnest(%s::uuid[], %s::text[], %s::smallint[], %s::timestamptz[], %s::float8[], %s::jsonb[], %s::jsonb[],
            {_LIMIT_ARRAYS})
    AS batch(id, queue, priority, scheduled_at, delay, payload, options, {_LIMIT_COLUMNS})
"""

# Unique jobs (migration 0005): the batch insert with the key columns, skipping a request whose key is held (the
# conflict target names the partial unique index by its predicate); then the holders of the keys not inserted.
_HOLDS_KEY = "unique_key IS NOT NULL AND (status = 'p' OR (status = 'e' AND unique_until = 'f'))"
INSERT_UNIQUE_JOBS = f"""
INSERT INTO exekutor_jobs (id, queue, priority, scheduled_at, payload, options, unique_key, unique_until,
                           {_LIMIT_COLUMNS})
SELECT id, queue, priority, coalesce(scheduled_at, clock_timestamp() + delay * interval '1 second'), payload, options,
       unique_key, unique_until, {_LIMIT_COLUMNS}
FROM unnest(%s::uuid[], %s::text[], %s::smallint[], %s::timestamptz[], %s::float8[], %s::jsonb[], %s::jsonb[],
            %s::text[], %s::char(1)[], {_LIMIT_ARRAYS})
    AS batch(id, queue, priority, scheduled_at, delay, payload, options, unique_key, unique_until, {_LIMIT_COLUMNS})
ON CONFLICT (unique_key) WHERE {_HOLDS_KEY} DO NOTHING
RETURNING id::text
"""
KEY_HOLDERS = f"SELECT unique_key, id::text FROM exekutor_jobs WHERE unique_key = ANY(%s) AND {_HOLDS_KEY}"
# Rounds of insert-then-look-up: a holder may finish (or start, or be cancelled) between the two statements,
# freeing its key.
UNIQUE_ROUNDS = 5

_TIMEOUT_OPTIONS = ("execution_timeout", "queue_timeout")


def new_job_id():
    """A time-ordered UUID (version 7): new jobs land at the right edge of the primary key index instead of
    at random places in it, which keeps bulk inserts fast on a big table. The random bits need to be unique,
    not unguessable (random is reseeded in a forked child)."""
    rand = random.getrandbits(74)
    value = (time.time_ns() // 1_000_000 << 80) | _VERSION_7 | ((rand >> 62) << 64) | _VARIANT | (rand & _RAND_B)
    text = "%032x" % value
    return f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}"


_VERSION_7 = 0x7 << 76
_VARIANT = 0b10 << 62
_RAND_B = (1 << 62) - 1


class JobRequest:
    """One job to enqueue; after enqueueing, the handle to it (its `id` is the job's id).

    `JobRequest(job_id)` is a handle to an existing job, for its actions only (fetch, errors, retry, cancel)."""

    __slots__ = ("id", "definition", "args", "kwargs", "queue", "priority", "wait", "wait_until", "options",
                 "payload", "connection", "unique_key", "unique_until", "duplicate", "limits")

    def __init__(self, definition, args=None, kwargs=None, options=None):
        if not isinstance(definition, JobDefinition):
            self._handle(definition)
            return
        merged = {**definition.options, **options} if options else definition.options
        self.id = new_job_id()
        self.definition = definition
        self.args = args
        self.kwargs = kwargs
        self.queue = merged.get("queue") or DEFAULT_QUEUE
        self.priority = merged.get("priority") or config.get("default_queue_priority")
        self.wait = merged.get("wait")
        self.wait_until = merged.get("wait_until")
        # From .set(connection=...) (never a definition option): enqueue_many inserts on it.
        self.connection = options.get("connection") if options else None
        self.options = {k: merged[k] for k in _TIMEOUT_OPTIONS if k in merged} if options else definition.timeouts
        # Serialized now so that a bad argument fails the enqueue call, not the worker.
        self.payload = dump_arguments(args, kwargs, job_name=definition.name)
        self.unique_key = unique_key(definition, merged, args, kwargs, self.payload)
        self.unique_until = UNIQUE_UNTIL[merged.get("unique_until") or "finished"] if self.unique_key else None
        self.duplicate = False  # set by the enqueue when another job held the key: then `id` is that job's
        self.limits = flow.limit_columns(definition.name, merged, args, kwargs)
        self.payload["job"] = definition.name

    def _handle(self, job_id):
        self.id = check_job_id(job_id)
        self.definition = self.args = self.kwargs = self.queue = self.priority = None
        self.wait = self.wait_until = self.options = self.payload = self.connection = None
        self.unique_key = self.unique_until = self.limits = None
        self.duplicate = False

    @property
    def name(self):
        return self.definition.name if self.definition is not None else None

    def fetch(self, connection=None):
        """The job's row as a dict (status spelled out), or None when it no longer exists."""
        return fetch_job(self.id, connection)

    def errors(self, connection=None):
        """The job's error records, oldest first: [{"created_at", "attempt", "type", "message", "traceback"}]."""
        return on_connection(connection, lambda conn: job_errors(conn, self.id))

    def retry(self, at=None, connection=None):
        """Put the job back to pending (at once, or at the aware datetime `at`) if it failed or was discarded,
        with a fresh retry budget; True if it was, False if it was not failed or discarded."""
        return bool(on_connection(connection, lambda conn: retry(conn, [self.id], at=at)).retried)

    def cancel(self, connection=None):
        """Cancel the job: a pending one is discarded at once, an executing one interrupted by its worker within a
        second (both end discarded with a JobCancelled record). True if the cancel was recorded; False if the
        job had already finished (it keeps its outcome), was already being cancelled, or does not exist."""
        result = on_connection(connection, lambda conn: cancel(conn, [self.id]))
        return bool(result.cancelled or result.interrupting)

    def __repr__(self):
        if self.definition is None:
            return f"<JobRequest id={self.id}>"
        return f"<JobRequest {self.name} id={self.id} queue={self.queue!r} priority={self.priority}>"


def unique_key(definition, options, args, kwargs, payload):
    """The job's unique key, or None: `.set(unique_key=...)` as given; `unique=True`, the job's name and a digest of
    its serialized arguments; `unique=callable`, the job's name and what the callable returns for the arguments."""
    key = options.get("unique_key")
    rule = options.get("unique")
    if key is None and rule:
        if callable(rule):
            derived = rule(*args, **kwargs)
            if not isinstance(derived, str):
                raise TypeError(f"the unique= callable of job {definition.name} returned {derived!r}: expected a str")
        else:
            canonical = json.dumps([payload["args"], payload["kwargs"]], sort_keys=True, separators=(",", ":"),
                                   default=repr)
            derived = hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()
        key = check_unique_key(f"{definition.name}:{derived}")
    return key


def enqueue(jobs, connection=None):
    """Insert the jobs in one statement; returns them. With `connection`, the insert is part of the caller's
    transaction (committed or rolled back with it); without, it commits on its own."""
    jobs = list(jobs)
    if not jobs:
        return jobs
    hooks.run_before("before_enqueue", jobs)
    hooks.run_around("around_enqueue", lambda: _insert(jobs, connection), jobs)
    hooks.run_after("after_enqueue", jobs)
    return jobs


def enqueue_many(jobs, connection=None):
    """Enqueue job requests made with `.job(...)` in one INSERT, each keeping its own schedule and options.

    The INSERT runs on `connection`, else on the connection of the requests made with `.set(connection=...)`,
    inside its transaction; else it commits on its own. Different connections in one call: a ValueError, and
    nothing is inserted."""
    jobs = list(jobs)
    chosen, source = connection, "the connection= argument of enqueue_many"
    for position, request in enumerate(jobs, 1):
        if not isinstance(request, JobRequest):
            raise TypeError(f"enqueue_many takes job requests made with some_job.job(...), got {request!r}")
        own = request.connection
        if own is None or own is chosen:
            continue
        if chosen is None:
            chosen, source = own, f"request {position} ({request!r})"
            continue
        raise ValueError(f"enqueue_many: request {position} ({request!r}) was made with .set(connection=...) on "
                         f"another connection than {source}; one call inserts on one connection: nothing was "
                         "enqueued")
    return enqueue(jobs, connection=chosen)


def _insert(jobs, connection):
    # Translated, not checked beforehand: a query per enqueue would slow every enqueue for a first-day mistake.
    try:
        _insert_jobs(jobs, connection)
    except (psycopg2.errors.UndefinedTable, psycopg2.errors.UndefinedColumn) as error:
        raise SchemaError(f"cannot enqueue: exekutor's tables are missing or out of date in this database "
                          f"({error.diag.message_primary}): run `exekutor-gevent migrate`") from error


def _insert_jobs(jobs, connection):
    if any(job.unique_key is not None for job in jobs):
        on_connection(connection, lambda conn: _insert_unique(jobs, conn))
        return
    statement = _insert_statement(jobs)
    if connection is not None:
        with raw_connection(connection).cursor() as cursor:
            cursor.execute(*statement)
        return
    _insert_autocommit(statement)


def _insert_autocommit(statement):
    """Insert on a pooled connection, once more on a fresh one if the pooled one turns out dead (the server
    restarted, or an idle connection was terminated). The ids are generated here, so a retry after a first
    attempt that did commit fails with a unique violation: then the jobs are in, as wanted."""
    for attempt in (1, 2):
        try:
            with default_pool().connection() as conn, conn.cursor() as cursor:
                cursor.execute(*statement)
            return
        except psycopg2.errors.UniqueViolation:
            if attempt == 1:
                raise
            return
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if attempt == 2:
                raise


def _insert_unique(jobs, conn):
    """Insert what no other job's key holds; a request whose key is held becomes a handle to the holder
    (`duplicate` true, `id` the holder's). Duplicates within the batch: the first request of a key gets in."""
    dumps = json_backend(config.get("json_serializer")).dumps
    waiting = jobs
    with conn.cursor() as cursor:
        for _ in range(UNIQUE_ROUNDS):
            cursor.execute(INSERT_UNIQUE_JOBS,
                           _columns(waiting, dumps) + _unique_columns(waiting) + _limit_columns(waiting))
            inserted = {row[0] for row in cursor.fetchall()}
            skipped = [job for job in waiting if job.id not in inserted]
            if not skipped:
                return
            cursor.execute(KEY_HOLDERS, (list({job.unique_key for job in skipped}),))
            holders = dict(cursor.fetchall())
            for job in skipped:
                if job.unique_key in holders:
                    job.id, job.duplicate = holders[job.unique_key], True
            waiting = [job for job in skipped if not job.duplicate]
            if not waiting:
                return
            # Their holders finished or started between the two statements: the keys are free again.
    raise RuntimeError(f"could not enqueue {len(waiting)} unique job(s) after {UNIQUE_ROUNDS} rounds: their keys "
                       "were taken and freed again each time")


def _unique_columns(jobs):
    keys = [text_or_null(job.unique_key) for job in jobs]
    untils = [job.unique_until or "NULL" for job in jobs]
    return array(keys), array(untils)


def _limit_columns(jobs):
    columns = ([], [], [], [], [])
    for job in jobs:
        for column, value in zip(columns, job.limits or (None,) * 5):
            column.append(text_or_null(value) if isinstance(value, str) or value is None else str(value))
    return tuple(array(column) for column in columns)


def _insert_statement(jobs):
    """(sql, params): a single job as plain VALUES (what one-by-one enqueueing pays for most), a batch as one
    array literal per column."""
    dumps = json_backend(config.get("json_serializer")).dumps
    if any(job.limits is not None for job in jobs):
        return INSERT_LIMITED_JOBS, _columns(jobs, dumps) + _limit_columns(jobs)
    if len(jobs) > 1:
        return INSERT_JOBS, _columns(jobs, dumps)
    job = jobs[0]
    return INSERT_JOB, (job.id, job.queue, job.priority, job.wait_until, job.wait or 0.0, dumps(job.payload),
                        dumps(job.options) if job.options else None)


def _columns(jobs, dumps):
    ids, queues, priorities, scheduled, delays, payloads, options = [], [], [], [], [], [], []
    for job in jobs:
        ids.append(job.id)
        queues.append(quoted(job.queue))
        priorities.append(str(job.priority))
        scheduled.append(text_or_null(job.wait_until.isoformat() if job.wait_until is not None else None))
        delays.append(number(job.wait or 0.0))
        payloads.append(quoted(dumps(job.payload)))
        options.append(quoted(dumps(job.options)) if job.options else "NULL")
    return tuple(array(column) for column in (ids, queues, priorities, scheduled, delays, payloads, options))


def raw_connection(connection):
    """The psycopg2 connection behind what a caller passed (integrations register adapters here)."""
    for adapter in _connection_adapters:
        adapted = adapter(connection)
        if adapted is not None:
            return adapted
    return connection


_connection_adapters = []


def register_connection_adapter(adapter):
    """`adapter(obj)` returns the psycopg2 connection behind obj, or None if obj is not its kind."""
    _connection_adapters.append(adapter)
    return adapter


def fetch_job(job_id, connection=None):
    query = ("SELECT id::text, queue, priority, status, attempts, releases, enqueued_at, scheduled_at, started_at, "
             "finished_at, runtime, payload, options, worker_id::text, cancel_requested_at FROM exekutor_jobs "
             "WHERE id = %s")

    def run(conn):
        with conn.cursor() as cursor:
            cursor.execute(query, (str(job_id),))
            row = cursor.fetchone()
            if row is None:
                return None
            info = dict(zip([c.name for c in cursor.description], row))
            info["status"] = status_name(info)  # the names the CLI and dashboard use
            return info

    return on_connection(connection, run)


def on_connection(connection, action):
    """`action(conn)` on the caller's connection (inside its transaction), else on a pooled autocommit one."""
    if connection is not None:
        return action(raw_connection(connection))
    with default_pool().connection() as conn:
        return action(conn)
