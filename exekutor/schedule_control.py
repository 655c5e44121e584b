"""Acting on a recurring job in exekutor_schedules (the dashboard's Schedules page; migration 0013): pause and
resume it, and run it now. What the workers do with a paused schedule is exekutor.worker.scheduler's."""
_PAUSE = "UPDATE exekutor_schedules SET paused_at = now() WHERE name = %s AND paused_at IS NULL RETURNING name"
_RESUME = "UPDATE exekutor_schedules SET paused_at = NULL WHERE name = %s AND paused_at IS NOT NULL RETURNING name"
# One job now, as a tick would enqueue it (the queue, priority and options the workers wrote in `enqueue`), with
# nothing else touched: last_tick stays, so the next tick comes when it would have. Its payload's schedule names it
# and says run_now; last_job_id points at it.
_RUN_NOW = """
WITH s AS (
    SELECT name, definition FROM exekutor_schedules
    WHERE name = %(name)s AND jsonb_typeof(definition->'enqueue') = 'object'
      AND jsonb_typeof(definition->'enqueue'->'queue') = 'string'
), job AS (
    INSERT INTO exekutor_jobs (queue, priority, payload, options)
    SELECT definition->'enqueue'->>'queue', (definition->'enqueue'->>'priority')::smallint,
           jsonb_build_object('job', definition->>'job', 'args', coalesce(definition->'args', '[]'),
                              'kwargs', coalesce(definition->'kwargs', '{}') || %(tick_kwargs)s::jsonb,
                              'schedule', jsonb_build_object('name', name, 'tick', %(tick)s::text, 'run_now', true)),
           CASE WHEN jsonb_typeof(definition->'enqueue'->'options') = 'object' THEN definition->'enqueue'->'options' END
    FROM s
    RETURNING id
)
UPDATE exekutor_schedules SET last_job_id = (SELECT id FROM job)
WHERE name = %(name)s AND EXISTS (SELECT FROM job)
RETURNING last_job_id::text
"""


def pause_schedule(conn, name):
    """Pause a schedule in the table: its ticks pass without a job until it is resumed; whether it changed."""
    return _changed(conn, _PAUSE, name)


def resume_schedule(conn, name):
    """Resume a paused schedule: from its next tick on it enqueues again; whether it changed."""
    return _changed(conn, _RESUME, name)


def _changed(conn, sql, name):
    with conn.cursor() as cursor:
        cursor.execute(sql, (name,))
        return cursor.fetchone() is not None


def run_now(conn, name):
    """Enqueue one job of the schedule now, as its ticks do, without moving its next tick; the job's id, or None
    when no worker of this version has written the schedule (its row, with how its jobs are enqueued)."""
    from psycopg2.extras import Json

    from exekutor.serialization import dump_arguments

    with conn.cursor() as cursor:
        cursor.execute("SELECT now(), definition->'pass_tick' = 'true' FROM exekutor_schedules WHERE name = %s",
                       (name,))
        row = cursor.fetchone()
        if row is None:
            return None
        now, pass_tick = row
        tick_kwargs = dump_arguments((), {"tick": now})["kwargs"] if pass_tick else {}
        cursor.execute(_RUN_NOW, {"name": name, "tick": now.isoformat(), "tick_kwargs": Json(tick_kwargs)})
        done = cursor.fetchone()
    return done[0] if done else None
