"""The SQL the worker runs, in one place. Every statement is one round trip."""
import functools

NOTIFY_CHANNEL = "exekutor::job_enqueued"
CANCEL_CHANNEL = "exekutor::job_cancelled"  # exekutor.operations sends {"w": worker id, "j": [job ids]}
LISTEN = f'LISTEN "{NOTIFY_CHANNEL}"; LISTEN "{CANCEL_CHANNEL}"'

# Reservation: the oldest ready jobs of the highest priority, skipping rows other workers hold. Each row says how
# long the job has been due, on the database's clock (queue_timeout counts from then, whatever the worker's clock),
# and how many of its attempts were releases (they do not count against its Retry policy).
#
# The walk starts at the worker's floors (exekutor.worker.floors): one index range per priority range, each from
# (low priority, floor), in priority order, so the entries of jobs reserved earlier are not visited again (dead
# entries VACUUM cannot remove while another session holds an old snapshot). The lateral walks run lazily: the
# outer LIMIT stops at the first `limit` rows, and a later range is not walked once they are found.
#
# Flow control (migration 0011): jobs held back by a limit are not in the index this walks (blocked_on). A
# candidate with limits of its own, or of its queue (a queue row that is paused or limited), is not started here
# but handed to exekutor_start_limited, which admits it or holds it back; the others pay one hashed look-up of a
# small table. The limited part's row with a NULL id has the number of candidates it held back.
#
# The last row (NULL id) carries the statement's now() (epoch seconds) in `waited`: with the rows reserved (their
# number, the last one's key), what the floors need from the walk. (An account of the candidates built in SQL cost
# a quarter of a millisecond per statement.)
RESERVE_JOBS = """
WITH candidates AS MATERIALIZED (
    SELECT c.* FROM unnest(%(floor_from)s::int[], %(floor_to)s::int[], %(floor_at)s::float8[],
                           %(floor_after)s::float8[]) AS f(low, high, at, after)
    CROSS JOIN LATERAL (
        SELECT id, concurrency_key IS NOT NULL OR rate_key IS NOT NULL OR queue IN (
                   SELECT name FROM exekutor_queues WHERE paused_at IS NOT NULL OR concurrency IS NOT NULL
                                                       OR rate_limit IS NOT NULL) AS limited
        FROM exekutor_jobs
        WHERE status = 'p' AND blocked_on IS NULL AND scheduled_at <= now()
          AND (priority, scheduled_at, enqueued_at) >= (f.low, to_timestamp(f.at), to_timestamp(f.after))
          AND priority <= f.high AND scheduled_at >= to_timestamp(f.at)
          AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
          AND priority BETWEEN %(min_priority)s AND %(max_priority)s
        ORDER BY priority, scheduled_at, enqueued_at
        LIMIT %(limit)s
        FOR UPDATE SKIP LOCKED) AS c
    LIMIT %(limit)s
), reserved AS (
    UPDATE exekutor_jobs SET status = 'e', worker_id = %(worker_id)s, attempts = attempts + 1, started_at = now()
    WHERE id = ANY(ARRAY(SELECT id FROM candidates WHERE NOT limited))
    RETURNING id::text, queue::text, priority, payload::text, options, enqueued_at, scheduled_at, attempts, releases,
        extract(epoch FROM now() - scheduled_at)::float8, NULL::text[]
)
SELECT * FROM reserved
UNION ALL
SELECT * FROM exekutor_start_limited(ARRAY(SELECT id FROM candidates WHERE limited), %(worker_id)s)
WHERE EXISTS (SELECT 1 FROM candidates WHERE limited)
UNION ALL
SELECT NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, extract(epoch FROM now())::float8, NULL
"""

# Below the floors (exekutor.worker.floors): the earliest ready job under each range's floor, if any, from `since`
# (epoch seconds; -Infinity: from the index's start). A reservation of another worker that rolled back after this
# one passed over its locked rows leaves such a job, as would any path that made a job ready without a notification.
# Asked at every poll, off the reservation path, from the lowest floor the worker's walks started from while such a
# lock could have been held (FloorHistory), and now and then from the start: that is the walk over the dead entries
# that reservations skip.
BELOW_FLOORS = """
SELECT f.low, f.high, extract(epoch FROM b.scheduled_at)::float8
FROM unnest(%(floor_from)s::int[], %(floor_to)s::int[], %(floor_at)s::float8[], %(floor_after)s::float8[])
    AS f(low, high, at, after)
CROSS JOIN LATERAL (
    SELECT min(scheduled_at) AS scheduled_at FROM exekutor_jobs
    WHERE status = 'p' AND blocked_on IS NULL AND (priority, scheduled_at) >= (f.low, to_timestamp(%(since)s::float8))
      AND priority <= f.high AND scheduled_at >= to_timestamp(%(since)s::float8)
      AND (scheduled_at, enqueued_at) < (to_timestamp(f.at), to_timestamp(f.after))
      AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))) AS b
WHERE f.at > '-infinity'::float8 AND b.scheduled_at IS NOT NULL
"""

# After outcomes of limited jobs are written, a rescue or a release, and at every poll (NULL: every limit holding
# jobs back): the next held-back jobs of limits that have room again go back to the reservation index.
UNBLOCK = "SELECT exekutor_unblock(%s::text[])"

# The queues that have pending jobs, as a loose scan of the pending-by-queue index: one descent per queue,
# whatever the number of jobs (a DISTINCT or GROUP BY reads every pending row). The last row is a NULL.
_QUEUES_WITH = """
{name}(queue) AS (
    (SELECT queue::text FROM exekutor_jobs WHERE status = 'p'{condition} ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue::text FROM exekutor_jobs j WHERE j.status = 'p' AND j.queue > p.queue{j_condition}
            ORDER BY j.queue LIMIT 1)
    FROM {name} p WHERE p.queue IS NOT NULL)"""
PENDING_QUEUES = _QUEUES_WITH.format(name="pending_queues", condition="", j_condition="")
# The same for the queues with future jobs only. The time condition is checked on the index entries themselves: the
# entries of jobs that were due (most of them dead, left by jobs reserved since the last VACUUM) are passed over
# without visiting the table, which under a long-held snapshot cost 175,000 table visits (35 ms) per question
# after 5 minutes at 600 jobs/s.
FUTURE_QUEUES = _QUEUES_WITH.format(name="future_queues", condition=" AND scheduled_at > now()",
                                    j_condition=" AND j.scheduled_at > now()")

# When the next future job the worker could run becomes ready, in seconds from now by the database's clock
# (NULL: none), the database's clock itself (epoch seconds), from which the provider keeps its estimate of
# how far its own clock is off, and the queues that have future jobs. Jobs already due do not count: they are the
# reservation's business, and a backlog of them must not hide the next timer. The question is one lookup per queue
# on the pending-by-queue index, at the start of the queue's future range: `scheduled_at > now()` (the statement's
# start, in autocommit), not clock_timestamp(), because a volatile function cannot bound an index scan (with it the
# question filtered every pending row: 216 ms at 1,000,000). The queues are the worker's own, or for a worker of
# every queue those it knows to have future jobs (the last answer and the notifications since), or, NULL, every
# queue found by the loose scan (at start and when notifications may have been missed): that scan checks every
# past entry of the index, dead ones included, so it is not asked at every poll. psycopg2 sends the queues as a
# literal, so the branch not taken is planned away and never runs.
NEXT_SCHEDULED = f"""
WITH RECURSIVE {FUTURE_QUEUES}
SELECT extract(epoch FROM min(next.scheduled_at) - clock_timestamp()), extract(epoch FROM clock_timestamp()),
       coalesce(array_agg(q.queue) FILTER (WHERE next.scheduled_at IS NOT NULL), '{{}}')
FROM (SELECT queue FROM future_queues WHERE %(queues)s::text[] IS NULL AND queue IS NOT NULL
      UNION ALL SELECT unnest(%(queues)s::text[])) AS q
LEFT JOIN LATERAL (
    SELECT j.scheduled_at FROM exekutor_jobs j
    WHERE j.status = 'p' AND j.queue = q.queue AND j.scheduled_at > now()
      AND j.priority BETWEEN %(min_priority)s AND %(max_priority)s
    ORDER BY j.scheduled_at LIMIT 1) AS next ON true
"""

# Completion, fenced by reservation: only rows still executing, owned by this worker and at the attempt it
# reserved are written, so the outcome of a job rescued from a worker presumed dead can never overwrite its new
# run, not even a new run by the same worker (which re-registers under its id and may reserve the job again).
#
# The rows are found by primary key, whatever the statistics say. The fence is written so that no index can
# serve it (`FENCE`: text comparisons, which neither match the executing index's key nor imply its predicate):
# otherwise the planner, which estimates a handful of executing rows for a worker id it has never seen, walks the
# worker's slice of that partial index, which keeps an entry for every job that ever passed through 'e' until a
# VACUUM removes it. A soak showed that statement visiting 585,000 entries (434 ms) after 17 minutes without a
# vacuum (or with one blocked by a long-held snapshot), against 0.2 ms by primary key.
#
# The statement is assembled
# per batch from the parts the batch needs: a batch of plain completions is one lean UPDATE. (A part that
# always ran, such as a DELETE joined against the outcomes, made every flush scan all of the worker's
# executing rows: flushes slowed down as outcomes piled up, and outcomes piled up as flushes slowed down.)
FENCE = "j.status::text = 'e' AND j.worker_id::text = %(worker_id)s AND j.attempts = o.attempts"
_COMPLETE_PARTS = {
    # Completed, failed and discarded jobs.
    "finished": f"""finished AS (
    UPDATE exekutor_jobs j SET status = o.status, runtime = o.runtime, finished_at = now()
    FROM unnest(%(finished_ids)s::uuid[], %(finished_statuses)s::text[], %(finished_runtimes)s::float8[],
                %(finished_attempts)s::int[]) AS o(id, status, runtime, attempts)
    WHERE j.id = o.id AND {FENCE}
    RETURNING j.id, j.attempts, j.holds)""",
    # Retried and released jobs: pending again, later, announced to the listeners. A release is counted (the
    # attempt it spent stays: attempts is the fence).
    "requeued": f"""requeued AS (
    UPDATE exekutor_jobs j SET status = 'p', worker_id = NULL, runtime = o.runtime,
        scheduled_at = now() + o.delay * interval '1 second', releases = j.releases + o.released
    FROM unnest(%(requeued_ids)s::uuid[], %(requeued_runtimes)s::float8[], %(requeued_delays)s::float8[],
                %(requeued_attempts)s::int[], %(requeued_released)s::int[])
        AS o(id, runtime, delay, attempts, released)
    WHERE j.id = o.id AND {FENCE}
    RETURNING j.id, j.attempts, j.queue, j.priority, j.scheduled_at)""",
    # delete_completed_jobs and friends.
    "deleted": f"""deleted AS (
    DELETE FROM exekutor_jobs j
    USING unnest(%(deleted_ids)s::uuid[], %(deleted_attempts)s::int[]) AS o(id, attempts)
    WHERE j.id = o.id AND {FENCE}
    RETURNING j.id)""",
}
_ERRORS_PART = """recorded AS (
    INSERT INTO exekutor_job_errors (job_id, attempt, error)
    SELECT w.id, w.attempts, e.error
    FROM ({written}) AS w JOIN unnest(%(error_ids)s::uuid[], %(errors)s::jsonb[]) AS e(id, error) ON e.id = w.id)"""
_NOTIFY_REQUEUED = ("(SELECT exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer), "
                    "array_agg(scheduled_at)) FROM requeued)")


# Slot handoff (flow control, migration 0011): a finished job that held one concurrency slot passes it straight to
# the next job its limit holds back, started for this worker in the same statement (exekutor_handoff: a function,
# so that its statements' plans are cached per connection instead of planned with every completion). The finished
# rows' holds come from the `finished` part, so a fenced-off outcome passes nothing on.
_HANDOFF = """(SELECT exekutor_handoff(ARRAY(SELECT holds[1] FROM finished WHERE cardinality(holds) = 1),
                            %(worker_id)s, %(queues)s, %(min_priority)s, %(max_priority)s, %(handoff_limit)s))"""


@functools.lru_cache(maxsize=None)
def complete_jobs(parts, with_errors, handoff=False):
    """The completion statement for a batch with outcomes of the given `parts` (a tuple of "finished",
    "requeued", "deleted"); it returns how many rows were written, and with `handoff` (finished outcomes of jobs
    holding a concurrency slot) the jobs it started for this worker, as a JSON array of reservation rows."""
    ctes = [_COMPLETE_PARTS[part] for part in parts]
    if with_errors:
        written = " UNION ALL ".join(f"SELECT id, attempts FROM {part}" for part in parts if part != "deleted")
        ctes.append(_ERRORS_PART.format(written=written))
    count = " + ".join(f"(SELECT count(*) FROM {part})" for part in parts)
    notify = f", {_NOTIFY_REQUEUED}" if "requeued" in parts else ""
    started = f", {_HANDOFF}" if handoff else ""
    return f"WITH {', '.join(ctes)}\nSELECT {count}{started}{notify}"


REGISTER_WORKER = """
INSERT INTO exekutor_workers (id, hostname, pid, identifier, status, queues, min_priority, max_priority,
                              min_threads, max_threads, info)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(identifier)s, %(status)s, %(queues)s, %(min_priority)s,
        %(max_priority)s, %(min_threads)s, %(max_threads)s, %(info)s)
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, last_heartbeat_at = now()
"""

SET_WORKER_STATUS = "UPDATE exekutor_workers SET status = %s, last_heartbeat_at = now() WHERE id = %s"

HEARTBEAT = "UPDATE exekutor_workers SET last_heartbeat_at = now() WHERE id = %s RETURNING id"

# Reconciliation: the jobs the database says this worker runs (the provider holds the reservation lock, so no
# reservation of ours is in flight), and the release of those it does not run, each at the attempt seen. A
# reservation whose reply never arrived (cut off by statement_timeout after it committed, a lost reply) leaves
# such jobs behind.
#
# Only the runs started since `since` (epoch seconds on the database's clock), when given: the executing index
# (worker_id, started_at) keeps the entries of every run until a VACUUM removes them, and a long-held snapshot
# prevents that. The reconciler chooses `since` so that nothing it may own started before (see its module), and
# asks for all now and then. One row: the ids, their attempts and start times, and the statement's now().
_OWNED = """
SELECT coalesce(array_agg(id::text), '{{}}'), coalesce(array_agg(attempts), '{{}}'),
       coalesce(array_agg(extract(epoch FROM started_at)::float8), '{{}}'), extract(epoch FROM now())::float8
FROM exekutor_jobs WHERE status = 'e' AND worker_id = %(worker_id)s{since}
"""
OWNED_JOBS = _OWNED.format(since="")
OWNED_JOBS_SINCE = _OWNED.format(since=" AND started_at >= to_timestamp(%(since)s::float8)")
RELEASE_UNHELD = f"""
WITH released AS (
    UPDATE exekutor_jobs j SET status = 'p', worker_id = NULL, releases = j.releases + 1
    FROM unnest(%(ids)s::uuid[], %(attempts)s::int[]) AS o(id, attempts)
    WHERE j.id = o.id AND {FENCE}
    RETURNING j.queue, j.priority, j.scheduled_at
)
SELECT (SELECT count(*) FROM released),
       (SELECT exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer), array_agg(scheduled_at))
        FROM released)
"""

DELETE_WORKER = "DELETE FROM exekutor_workers WHERE id = %s"

# Orphan rescue: workers whose heartbeat is older than worker_timeout are presumed dead; deleting their rows
# releases their jobs (trigger). Jobs left executing by a worker row that no longer exists are released too,
# but only those started more than worker_timeout ago: under READ COMMITTED the NOT EXISTS below reads the
# workers of the statement's snapshot, while a job row updated meanwhile is re-checked in its newest version. A
# job re-reserved during the statement by a worker registered after the snapshot would pass NOT EXISTS, but its
# newest version has started_at = the start of that reservation, one statement (bounded by statement_timeout,
# far shorter than worker_timeout) before it committed, after this statement began; so the started_at condition,
# re-checked on the newest version, excludes it.
# The trigger's releases are not in any RETURNING: `released` counts the dead workers' executing jobs in the
# statement's snapshot, taken before the trigger ran, which is the set it releases (less a job that a worker
# presumed dead but alive finished meanwhile, which its fenced completion wrote and the trigger then skips).
#
# It runs in one transaction after FAIL_OVER_RESCUED, which found (and locked) the dead workers: `dead` are those.
_RESCUE_ORPHANS = """
WITH dead AS (
    DELETE FROM exekutor_workers WHERE id = ANY(%(dead)s::uuid[])
    RETURNING id
), released AS (
    SELECT count(*) AS jobs FROM exekutor_jobs WHERE status = 'e' AND worker_id IN (SELECT id FROM dead)
), ownerless AS (
    UPDATE exekutor_jobs j SET status = 'p', worker_id = NULL, releases = j.releases + 1
    WHERE {ownerless} AND j.status = 'e'
      AND (j.started_at IS NULL OR j.started_at < now() - %(worker_timeout)s * interval '1 second')
      AND NOT EXISTS (SELECT 1 FROM exekutor_workers w WHERE w.id = j.worker_id)
      AND NOT EXISTS (SELECT 1 FROM dead d WHERE d.id = j.worker_id)
      AND j.worker_id <> %(worker_id)s
    RETURNING j.queue, j.priority, j.scheduled_at
)
SELECT (SELECT count(*) FROM dead), (SELECT count(*) FROM ownerless),
       (SELECT exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer), array_agg(scheduled_at))
        FROM ownerless),
       (SELECT jobs FROM released)
"""
RESCUE_ORPHANS = _RESCUE_ORPHANS.format(ownerless="true")
# The same without the ownerless jobs' part, which reads every entry of the executing index (one per run of any
# worker until a VACUUM removes it, which a long-held snapshot prevents): a worker asks it once per worker_timeout
# (an ownerless job is one that started more than worker_timeout ago), not at every beat.
RESCUE_DEAD_WORKERS = _RESCUE_ORPHANS.format(ownerless="false")

# Before the rescue, in its transaction: the workers presumed dead (their heartbeat older than worker_timeout),
# locked so that no late heartbeat revives one meanwhile, and their executing jobs. Each such job gets a WorkerLost
# error record at the attempt it was running; one that now has max_rescues of them ends failed (it kills, freezes or
# blocks every worker that runs it) instead of going back to pending. The update re-checks status and attempt on the
# newest row version, so an outcome the presumed-dead worker wrote meanwhile stands. Returns the dead workers' ids
# and how many jobs failed.
FAIL_OVER_RESCUED = """
WITH dead AS (
    SELECT id FROM exekutor_workers
    WHERE last_heartbeat_at < now() - %(worker_timeout)s * interval '1 second' AND id <> %(worker_id)s
    FOR UPDATE SKIP LOCKED
), lost AS (
    SELECT j.id, j.attempts,
           1 + (SELECT count(*) FROM exekutor_job_errors e
                WHERE e.job_id = j.id AND e.error->>'type' = %(lost_type)s) AS rescues
    FROM exekutor_jobs j WHERE j.status = 'e' AND j.worker_id IN (SELECT id FROM dead)
), failed AS (
    UPDATE exekutor_jobs j SET status = 'f', finished_at = now()
    FROM lost l
    WHERE j.id = l.id AND l.rescues >= %(max_rescues)s AND j.status = 'e' AND j.attempts = l.attempts
    RETURNING j.id
), recorded AS (
    INSERT INTO exekutor_job_errors (job_id, attempt, error)
    SELECT l.id, l.attempts, jsonb_build_object('type', %(lost_type)s, 'traceback', '', 'message', format(
        'its worker was presumed dead while it ran this job (no heartbeat for %%ss: killed, stopped, cut off from '
        'the database, or its event loop blocked): %%s of max_job_rescues (%%s); %%s',
        %(worker_timeout)s, l.rescues, %(max_rescues)s,
        CASE WHEN l.rescues >= %(max_rescues)s THEN 'the job ends failed instead of running again'
             ELSE 'it runs again' END))
    FROM lost l
    RETURNING 1
)
SELECT ARRAY(SELECT id::text FROM dead), (SELECT count(*) FROM failed)::int
"""

# Of the jobs this worker runs, those whose cancel an operator requested, by primary key (the executing index holds
# an entry for every job the worker ever ran until a VACUUM removes it; a long-held snapshot prevents that).
CANCEL_REQUESTED = """
SELECT id::text FROM exekutor_jobs
WHERE id = ANY(%(ids)s::uuid[]) AND status = 'e' AND worker_id = %(worker_id)s AND cancel_requested_at IS NOT NULL
"""

# --- recurring jobs (exekutor.worker.scheduler, migration 0006) ------------------------------------------------

# A worker's schedules, at its start: new ones start at their next tick (last_tick = now(), no immediate run); a
# known one keeps its last_tick and gets this worker's definition. Rows in name order, so that workers starting
# together lock them in the same order.
UPSERT_SCHEDULES = """
INSERT INTO exekutor_schedules AS s (name, definition, last_tick)
SELECT name, definition, now() FROM unnest(%(names)s::text[], %(definitions)s::jsonb[]) AS u(name, definition)
ORDER BY name
ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition, updated_at = now()
    WHERE s.definition IS DISTINCT FROM EXCLUDED.definition
"""
READ_SCHEDULES = """
SELECT name, last_tick, extract(epoch FROM now())::float8 FROM exekutor_schedules WHERE name = ANY(%(names)s::text[])
"""

# Claim due ticks and insert their jobs in one statement: both happen or neither does.
# - `due` is the compare-and-set: a schedule whose last_tick is still the one this worker last saw, and whose new
#   tick has come in the database's time. Locked in name order (no deadlock between workers claiming the same
#   schedules); SKIP LOCKED, as a locked row is being claimed by another worker right now (the worker looks again
#   shortly). Under READ COMMITTED a row another worker updated after this statement's snapshot is re-checked in its
#   newest version before it is locked, so two workers can never both pass the comparison.
# - `claimed` moves last_tick to the tick and records the job of it (last_job_id); `inserted` adds the jobs of the
#   claimed schedules that are not paused (migration 0013: a paused schedule's ticks pass without a job); the jobs
#   table's statement trigger sends the usual notifications.
# - The result: the claimed names, the jobs inserted, the last_tick of the others as this statement saw them, the
#   database's clock, and the claimed names that were paused (their jobs were not inserted).
CLAIM_TICKS = """
WITH due AS MATERIALIZED (
    SELECT s.name, d.tick, s.paused_at IS NOT NULL AS paused FROM exekutor_schedules s
    JOIN unnest(%(names)s::text[], %(previous)s::timestamptz[], %(ticks)s::timestamptz[]) AS d(name, previous, tick)
        ON d.name = s.name
    WHERE s.last_tick IS NOT DISTINCT FROM d.previous AND d.tick <= now()
    ORDER BY s.name
    FOR UPDATE OF s SKIP LOCKED
), jobs AS (
    SELECT * FROM unnest(%(job_schedules)s::text[], %(ids)s::uuid[], %(queues)s::text[], %(priorities)s::smallint[],
                         %(scheduled)s::timestamptz[], %(payloads)s::jsonb[], %(options)s::jsonb[])
        AS j(schedule, id, queue, priority, scheduled_at, payload, options)
), claimed AS (
    UPDATE exekutor_schedules s SET last_tick = due.tick,
        last_enqueued_at = CASE WHEN due.paused THEN s.last_enqueued_at ELSE now() END,
        last_job_id = CASE WHEN due.paused THEN s.last_job_id
                           ELSE (SELECT j.id FROM jobs j WHERE j.schedule = s.name
                                 ORDER BY j.scheduled_at DESC LIMIT 1) END
    FROM due WHERE s.name = due.name
    RETURNING s.name, due.paused
), inserted AS (
    INSERT INTO exekutor_jobs (id, queue, priority, scheduled_at, payload, options)
    SELECT j.id, j.queue, j.priority, j.scheduled_at, j.payload, j.options
    FROM jobs j
    WHERE j.schedule IN (SELECT name FROM claimed WHERE NOT paused)
    RETURNING 1
)
SELECT ARRAY(SELECT name FROM claimed), (SELECT count(*) FROM inserted)::int,
       ARRAY(SELECT s.name FROM exekutor_schedules s WHERE s.name = ANY(%(names)s::text[])
             AND s.name NOT IN (SELECT name FROM claimed) ORDER BY s.name),
       ARRAY(SELECT s.last_tick FROM exekutor_schedules s WHERE s.name = ANY(%(names)s::text[])
             AND s.name NOT IN (SELECT name FROM claimed) ORDER BY s.name),
       extract(epoch FROM now())::float8,
       ARRAY(SELECT name FROM claimed WHERE paused)
"""
