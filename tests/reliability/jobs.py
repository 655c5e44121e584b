"""Jobs the reliability suite runs in real worker processes (`--app tests.reliability.jobs`).

Every job takes a unique `tag` as its first argument and records each execution in `rel_executions`
(tag, worker pid, ok or raised, start and end). A job cannot see its own id: the suite reconciles tag <-> job
row through `payload->'args'->>0`.

Executions are recorded on a pool of the jobs' own, on RELIABILITY_RECORD_URL (the dedicated cluster, directly)
when set, so that a scenario that puts a proxy or PgBouncer between the worker and PostgreSQL stalls or pools
only the worker's connections, never the bookkeeping. A job records as its last step: one that was interrupted
(its worker was killed, or the database went away) left no row, and one that did record then returns.
"""
import os
import random
import threading
import time

import gevent
import psycopg2.extras

import exekutor
from exekutor.db.pool import ConnectionPool

# Greenlets of one worker share this pool: keep it at least as large as the workers' --threads in the suite.
POOL_SIZE = 25

EXECUTIONS_DDL = """
CREATE TABLE IF NOT EXISTS rel_executions (
    tag         text NOT NULL,
    pid         integer NOT NULL,
    ok          boolean NOT NULL,
    started_at  timestamptz NOT NULL,
    finished_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    info        jsonb
);
CREATE INDEX IF NOT EXISTS rel_executions_tag_idx ON rel_executions (tag);
CREATE INDEX IF NOT EXISTS rel_executions_finished_idx ON rel_executions (finished_at);
CREATE TABLE IF NOT EXISTS rel_fatal_errors (
    pid        integer NOT NULL,
    type       text NOT NULL,
    message    text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
"""

_pool = None
_pool_lock = threading.Lock()


def pool():
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ConnectionPool(POOL_SIZE, url=os.environ.get("RELIABILITY_RECORD_URL"),
                                   application_name="reliability jobs", autocommit=True)
        return _pool


def record(tag, started, ok=True, info=None):
    with pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("INSERT INTO rel_executions (tag, pid, ok, started_at, info) "
                       "VALUES (%s, %s, %s, to_timestamp(%s), %s)",
                       (tag, os.getpid(), ok, started, psycopg2.extras.Json(info) if info is not None else None))


class FlakyError(IOError):
    """The deliberate, random failure of `rel.work` (retried)."""


@exekutor.job(name="rel.work", retry=exekutor.Retry(attempts=3, backoff="fixed", wait=0.2, on=(FlakyError,)))
def work(tag, sleep=0.0, fail_rate=0.0):
    """Sleep cooperatively (a job waiting on IO), then record; with `fail_rate`, fail at random (retried)."""
    started = time.time()
    if sleep:
        gevent.sleep(sleep)
    if fail_rate and random.random() < fail_rate:
        record(tag, started, ok=False)
        raise FlakyError(f"random failure of {tag}")
    record(tag, started)


@exekutor.job(name="rel.long")
def long(tag, seconds):
    """Records its start at once (`ok` false) and turns it into its end (`ok` true, `finished_at`) when it gets
    there: a run that was stopped (its worker presumed dead, cut off) leaves its start only."""
    with pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("INSERT INTO rel_executions (tag, pid, ok, started_at, info) "
                       "VALUES (%s, %s, false, clock_timestamp(), '{\"long\": true}')", (tag, os.getpid()))
    gevent.sleep(seconds)
    with pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("UPDATE rel_executions SET ok = true, finished_at = clock_timestamp() "
                       "WHERE tag = %s AND pid = %s AND NOT ok", (tag, os.getpid()))


@exekutor.job(name="rel.strict")
def strict(tag, count, label="x"):
    """A job with a contract: an int count and a str label; anything else is the caller's bug."""
    started = time.time()
    if not isinstance(count, int) or isinstance(count, bool):
        raise TypeError(f"count must be an int, got {type(count).__name__}")
    if not isinstance(label, str):
        raise TypeError(f"label must be a str, got {type(label).__name__}")
    record(tag, started, info={"count": count, "label": label})


@exekutor.job(name="rel.sized")
def sized(tag, blob):
    """Records how big its argument arrived."""
    started = time.time()
    record(tag, started, info={"length": len(blob)})


@exekutor.job(name="rel.typed")
def typed(tag, value):
    """Records the Python type its argument was loaded as."""
    started = time.time()
    record(tag, started, info={"type": type(value).__name__})


class Money:
    def __init__(self, cents, currency):
        if not isinstance(cents, int):
            raise TypeError("cents must be an int")
        self.cents, self.currency = cents, currency


exekutor.serializers.register(Money, dump=lambda m: [m.cents, m.currency], load=lambda d: Money(*d),
                              name="rel.Money")
