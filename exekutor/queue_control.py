"""Queues as an operator sees them: pause, resume, and the limits a queue has (stored in exekutor_queues).

A pause takes effect at the next reservation of every worker (the reservation reads the queue's row: no worker
needs to hear of it), running jobs finish, enqueueing goes on. A resume lets the jobs the pause held back go at
once and wakes the workers. Both survive restarts: the state is a row, not a worker's memory.
"""
from exekutor.definitions import check_queue
from exekutor.flow import RateLimit, check_concurrency, check_rate_limit
from exekutor.queue_stats import HELD_REASONS, no_held

# A row comes back only when this statement paused the queue (inserted it, or set paused_at on a row without one):
# a queue paused already keeps the time of its first pause, whichever transaction paused it.
_PAUSE = """
INSERT INTO exekutor_queues AS q (name, paused_at) VALUES (%s, now())
ON CONFLICT (name) DO UPDATE SET paused_at = now(), updated_at = now() WHERE q.paused_at IS NULL
RETURNING 1
"""
# The jobs the pause held back go (exekutor_unblock, which also tells the workers about them), and the workers
# hear that the queue has jobs (those the pause never touched because no reservation reached them).
_RESUME = """
WITH resumed AS (
    UPDATE exekutor_queues SET paused_at = NULL, updated_at = now() WHERE name = %(name)s AND paused_at IS NOT NULL
    RETURNING name
)
SELECT (SELECT count(*) FROM resumed)
"""
# Between the two, in transactions of their own: wait for the reservations that read the queue as paused before
# the resume committed (they hold the lock of the pause's limit row, migration 0011, until they commit), so that
# the release sees the jobs they held back. The insert waits for one that is creating the row.
_AWAIT_RESERVATIONS = (
    "INSERT INTO exekutor_limits (key, max, period) VALUES ('paused queue ' || %(name)s, 0, 0) "
    "ON CONFLICT (key) DO NOTHING",
    "SELECT 1 FROM exekutor_limits WHERE key = 'paused queue ' || %(name)s FOR UPDATE",
)
_RELEASE_PAUSED = """
SELECT exekutor_unblock(ARRAY['paused queue ' || %(name)s]),
       exekutor_notify_pending(ARRAY[%(name)s::text], ARRAY[1], ARRAY[now()])
"""
_SET_LIMITS = """
INSERT INTO exekutor_queues AS q (name, concurrency, rate_limit, rate_period) VALUES (%s, %s, %s, %s)
ON CONFLICT (name) DO UPDATE SET concurrency = EXCLUDED.concurrency, rate_limit = EXCLUDED.rate_limit,
    rate_period = EXCLUDED.rate_period, updated_at = now()
WHERE (q.concurrency, q.rate_limit, q.rate_period)
    IS DISTINCT FROM (EXCLUDED.concurrency, EXCLUDED.rate_limit, EXCLUDED.rate_period)
"""
QUEUE_STATES = """
SELECT name::text, paused_at, concurrency, rate_limit, rate_period, updated_at FROM exekutor_queues
WHERE paused_at IS NOT NULL OR concurrency IS NOT NULL OR rate_limit IS NOT NULL
ORDER BY name
"""
# Every queue row (a resumed queue without limits keeps its row): what `queues list`, `info` and the dashboard show.
QUEUE_ROWS = """
SELECT name::text, paused_at, concurrency, rate_limit, rate_period, updated_at FROM exekutor_queues
WHERE %(names)s::text[] IS NULL OR name = ANY(%(names)s::text[])
ORDER BY name
"""


def pause_queue(name, connection=None):
    """Pause a queue: no job of it starts from the next reservation on, in any worker; running jobs finish and
    jobs can still be enqueued. True if this call paused it, False if it was paused already."""
    from exekutor.enqueue import on_connection

    check_queue(name)

    def run(conn):
        with conn.cursor() as cursor:
            cursor.execute(_PAUSE, (name,))
            return cursor.fetchone() is not None

    return on_connection(connection, run)


def resume_queue(name, connection=None):
    """Resume a paused queue: its jobs start again at once. True if it was paused, False if it was not. With
    `connection`, inside its transaction: at its commit (jobs a reservation was holding back on the pause at that
    moment go at the workers' next poll)."""
    from exekutor.enqueue import on_connection

    check_queue(name)

    def run(conn):
        with conn.cursor() as cursor:
            cursor.execute(_RESUME, {"name": name})
            resumed = bool(cursor.fetchone()[0])
            if conn.autocommit:
                # In a caller's transaction the lock would stall those reservations until it commits (and the
                # resume is not visible to them before): there the workers' poll sweep catches what they hold back.
                for statement in _AWAIT_RESERVATIONS:
                    cursor.execute(statement, {"name": name})
            cursor.execute(_RELEASE_PAUSED, {"name": name})
            return resumed

    return on_connection(connection, run)


def queue_states(connection=None):
    """The queues that are paused or limited: [{name, paused, paused_at, concurrency, rate_limit}], by name."""
    from exekutor.enqueue import on_connection

    def run(conn):
        with conn.cursor() as cursor:
            cursor.execute(QUEUE_STATES)
            return [state_of(row) for row in cursor.fetchall()]

    return on_connection(connection, run)


def state_of(row):
    name, paused_at, concurrency, rate_count, rate_period, updated_at = row
    rate = RateLimit(rate_count, rate_period) if rate_count and rate_period in (1, 60, 3600) else None
    return {"name": name, "paused": paused_at is not None, "paused_at": paused_at, "concurrency": concurrency,
            "rate_limit": str(rate) if rate else None, "updated_at": updated_at}


def publish_queue_limits(cursor, limits):
    """A worker's configured queue limits ({name: {'concurrency', 'rate_limit'}}) become every worker's: the last
    worker to start with a setting for a queue decides it (an unset one is cleared)."""
    for name in sorted(limits):
        settings = limits[name]
        rate = check_rate_limit(settings.get("rate_limit"))
        cursor.execute(_SET_LIMITS, (name, check_concurrency(settings.get("concurrency")),
                                     rate.count if rate else None, rate.period if rate else None))


def queue_settings(cursor, names=None):
    """{name: state_of(row)} of every row of exekutor_queues, or of the rows of `names` only."""
    cursor.execute(QUEUE_ROWS, {"names": list(names) if names is not None else None})
    return {row[0]: state_of(row) for row in cursor.fetchall()}


def flow_fields(state, held):
    """A queue's flow-control fields as `queues list`, `info` and the dashboard show them, from its state_of() (None:
    no row) and its queue_stats.held_back_by_queue() figures (None: nothing held back)."""
    held = held or no_held()
    return {"paused": bool(state and state["paused"]), "paused_at": state["paused_at"] if state else None,
            "concurrency": state["concurrency"] if state else None,
            "rate_limit": state["rate_limit"] if state else None,
            "held_back": {reason: held[reason] for reason in HELD_REASONS},
            "held_back_total": sum(held[reason] for reason in HELD_REASONS),
            "held_back_estimated": held["estimated"]}
