"""Putting jobs in the queue: one INSERT per batch, in the caller's transaction when a connection is given."""
import datetime as _dt
import uuid

import psycopg2
import psycopg2.errors

from exekutor import config, hooks
from exekutor.db.pool import default_pool
from exekutor.jobs import DEFAULT_QUEUE, effective_priority
from exekutor.serialization import dump_arguments, json_backend

# unnest keeps it one statement for any batch size; COPY is not an option under psycogreen.
INSERT_JOBS = """
INSERT INTO exekutor_jobs (id, queue, priority, scheduled_at, payload, options)
SELECT id, queue, priority, coalesce(scheduled_at, now() + delay * interval '1 second'), payload, options
FROM unnest(%s::uuid[], %s::text[], %s::smallint[], %s::timestamptz[], %s::float8[], %s::jsonb[], %s::jsonb[])
    AS batch(id, queue, priority, scheduled_at, delay, payload, options)
"""

_JOB_STATUS = {"p": "pending", "e": "executing", "c": "completed", "f": "failed", "d": "discarded"}


class JobRequest:
    """One job to enqueue; after enqueueing, the handle to it (its `id` is the job's id)."""

    __slots__ = ("id", "definition", "args", "kwargs", "queue", "priority", "wait", "wait_until", "options",
                 "payload")

    def __init__(self, definition, args, kwargs, options):
        merged = dict(definition.options)
        merged.update(options)
        self.id = str(uuid.uuid4())
        self.definition = definition
        self.args = args
        self.kwargs = kwargs
        self.queue = merged.get("queue") or DEFAULT_QUEUE
        self.priority = effective_priority(merged)
        self.wait = merged.get("wait")
        self.wait_until = merged.get("wait_until")
        self.options = {k: merged[k] for k in ("execution_timeout", "queue_timeout") if k in merged}
        # Serialized now so that a bad argument fails the enqueue call, not the worker.
        self.payload = {"job": definition.name, **dump_arguments(args, kwargs, job_name=definition.name)}

    @property
    def name(self):
        return self.definition.name

    def fetch(self, connection=None):
        """The job's row as a dict (status spelled out), or None when it no longer exists."""
        return fetch_job(self.id, connection)

    def __repr__(self):
        return f"<JobRequest {self.name} id={self.id} queue={self.queue!r} priority={self.priority}>"


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
    """Enqueue job requests made with `.job(...)` in one INSERT, each keeping its own schedule and options."""
    jobs = list(jobs)
    for request in jobs:
        if not isinstance(request, JobRequest):
            raise TypeError(f"enqueue_many takes job requests made with some_job.job(...), got {request!r}")
    return enqueue(jobs, connection=connection)


def _insert(jobs, connection):
    params = _insert_params(jobs)
    if connection is not None:
        with raw_connection(connection).cursor() as cursor:
            cursor.execute(INSERT_JOBS, params)
        return
    _insert_autocommit(params)


def _insert_autocommit(params):
    """Insert on a pooled connection, once more on a fresh one if the pooled one turns out dead (the server
    restarted, or an idle connection was terminated). The ids are generated here, so a retry after a first
    attempt that did commit fails with a unique violation: then the jobs are in, as wanted."""
    for attempt in (1, 2):
        try:
            with default_pool().connection() as conn, conn.cursor() as cursor:
                cursor.execute(INSERT_JOBS, params)
            return
        except psycopg2.errors.UniqueViolation:
            if attempt == 1:
                raise
            return
        except (psycopg2.OperationalError, psycopg2.InterfaceError):
            if attempt == 2:
                raise


def _insert_params(jobs):
    dumps = json_backend(config.get("json_serializer")).dumps
    ids, queues, priorities, scheduled, delays, payloads, options = [], [], [], [], [], [], []
    for job in jobs:
        ids.append(job.id)
        queues.append(job.queue)
        priorities.append(job.priority)
        scheduled.append(job.wait_until)
        delays.append(job.wait or 0.0)
        payloads.append(dumps(job.payload))
        options.append(dumps(job.options) if job.options else None)
    return ids, queues, priorities, scheduled, delays, payloads, options


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
    query = ("SELECT id::text, queue, priority, status, attempts, enqueued_at, scheduled_at, started_at, "
             "finished_at, runtime, payload, options, worker_id::text FROM exekutor_jobs WHERE id = %s")

    def run(conn):
        with conn.cursor() as cursor:
            cursor.execute(query, (str(job_id),))
            row = cursor.fetchone()
            if row is None:
                return None
            info = dict(zip([c.name for c in cursor.description], row))
            info["status"] = _JOB_STATUS.get(info["status"], info["status"])
            return info

    if connection is not None:
        return run(raw_connection(connection))
    with default_pool().connection() as conn:
        return run(conn)


def utcnow():
    return _dt.datetime.now(_dt.timezone.utc)
