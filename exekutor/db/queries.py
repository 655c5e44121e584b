"""The SQL the worker runs, in one place. Every statement is one round trip."""

NOTIFY_CHANNEL = "exekutor::job_enqueued"
LISTEN = 'LISTEN "exekutor::job_enqueued"'

# Reservation: the oldest ready jobs of the highest priority, skipping rows other workers hold.
RESERVE_JOBS = """
UPDATE exekutor_jobs SET status = 'e', worker_id = %(worker_id)s, attempts = attempts + 1, started_at = now()
WHERE id = ANY(ARRAY(
    SELECT id FROM exekutor_jobs
    WHERE status = 'p' AND scheduled_at <= now()
      AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
      AND priority BETWEEN %(min_priority)s AND %(max_priority)s
    ORDER BY priority, scheduled_at, enqueued_at
    LIMIT %(limit)s
    FOR UPDATE SKIP LOCKED))
RETURNING id::text, queue, priority, payload::text, options, enqueued_at, scheduled_at, attempts
"""

# When the next job the worker could run becomes ready (pending jobs scheduled in the future).
NEXT_SCHEDULED = """
SELECT extract(epoch FROM min(scheduled_at)) FROM exekutor_jobs
WHERE status = 'p'
  AND (%(queues)s::text[] IS NULL OR queue = ANY(%(queues)s::text[]))
  AND priority BETWEEN %(min_priority)s AND %(max_priority)s
"""

# Completion, fenced by owner: only rows still executing and owned by this worker are written, so the
# outcome of a job rescued from a worker presumed dead can never overwrite its new run. Rows whose final
# status is in delete_statuses are deleted instead; retried and released rows go back to pending and are
# announced (one notification per queue).
COMPLETE_JOBS = """
WITH outcome AS (
    SELECT * FROM unnest(%(ids)s::uuid[], %(statuses)s::text[], %(runtimes)s::float8[], %(delays)s::float8[],
                         %(errors)s::jsonb[]) AS o(id, status, runtime, delay, error)
), deleted AS (
    DELETE FROM exekutor_jobs j USING outcome o
    WHERE j.id = o.id AND o.status = ANY(%(delete_statuses)s::text[])
      AND j.status = 'e' AND j.worker_id = %(worker_id)s
    RETURNING j.id
), updated AS (
    UPDATE exekutor_jobs j SET
        status = o.status,
        runtime = o.runtime,
        finished_at = CASE WHEN o.status = 'p' THEN NULL ELSE now() END,
        scheduled_at = CASE WHEN o.delay IS NULL THEN j.scheduled_at
                            ELSE now() + o.delay * interval '1 second' END,
        worker_id = CASE WHEN o.status = 'p' THEN NULL ELSE j.worker_id END
    FROM outcome o
    WHERE j.id = o.id AND NOT (o.status = ANY(%(delete_statuses)s::text[]))
      AND j.status = 'e' AND j.worker_id = %(worker_id)s
    RETURNING j.id, j.queue, j.priority, j.scheduled_at, j.status, j.attempts
), recorded AS (
    INSERT INTO exekutor_job_errors (job_id, attempt, error)
    SELECT u.id, u.attempts, o.error FROM updated u JOIN outcome o ON o.id = u.id WHERE o.error IS NOT NULL
)
SELECT (SELECT count(*) FROM updated) + (SELECT count(*) FROM deleted),
       (SELECT exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer), array_agg(scheduled_at))
        FROM updated WHERE status = 'p')
"""

REGISTER_WORKER = """
INSERT INTO exekutor_workers (id, hostname, pid, identifier, status, queues, min_priority, max_priority,
                              min_threads, max_threads, info)
VALUES (%(id)s, %(hostname)s, %(pid)s, %(identifier)s, %(status)s, %(queues)s, %(min_priority)s,
        %(max_priority)s, %(min_threads)s, %(max_threads)s, %(info)s)
ON CONFLICT (id) DO UPDATE SET status = EXCLUDED.status, last_heartbeat_at = now()
"""

SET_WORKER_STATUS = "UPDATE exekutor_workers SET status = %s, last_heartbeat_at = now() WHERE id = %s"

HEARTBEAT = "UPDATE exekutor_workers SET last_heartbeat_at = now() WHERE id = %s RETURNING id"

DELETE_WORKER = "DELETE FROM exekutor_workers WHERE id = %s"

# Orphan rescue: workers whose heartbeat is older than worker_timeout are presumed dead; deleting their rows
# releases their jobs (trigger). Jobs left executing by a worker row that no longer exists are released too.
RESCUE_ORPHANS = """
WITH dead AS (
    DELETE FROM exekutor_workers
    WHERE last_heartbeat_at < now() - %(worker_timeout)s * interval '1 second' AND id <> %(worker_id)s
    RETURNING id
), ownerless AS (
    UPDATE exekutor_jobs j SET status = 'p', worker_id = NULL
    WHERE j.status = 'e' AND NOT EXISTS (SELECT 1 FROM exekutor_workers w WHERE w.id = j.worker_id)
      AND NOT EXISTS (SELECT 1 FROM dead d WHERE d.id = j.worker_id)
      AND j.worker_id <> %(worker_id)s
    RETURNING j.queue, j.priority, j.scheduled_at
)
SELECT (SELECT count(*) FROM dead), (SELECT count(*) FROM ownerless),
       (SELECT exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer), array_agg(scheduled_at))
        FROM ownerless)
"""
