-- exekutor 0006: recurring jobs (DESIGN §11). One row per schedule; the workers' schedulers claim each tick here.
--
-- last_tick is the instant of the last tick a worker claimed (or, for a new schedule, when it was first seen: it
-- starts at its next tick, with no immediate run). A worker claims a tick with a compare-and-set on last_tick in
-- the same statement that inserts the tick's job(s), so a tick is never claimed without its job or enqueued twice,
-- whatever the number of workers and hosts. Times are the database's (now()), never a worker's clock.
-- definition: what the workers that know the schedule last wrote (job, cron or every, timezone, args, ...), so the
-- CLI and the dashboard can list schedules without importing the application.
CREATE TABLE exekutor_schedules (
    name             text PRIMARY KEY,
    definition       jsonb NOT NULL,
    last_tick        timestamptz,
    -- when a worker last enqueued a job of this schedule (null: never yet)
    last_enqueued_at timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now()
);

-- Every tick updates a row: room in each page keeps those updates HOT (no index entry; last_tick is not indexed),
-- and a small, hot table is vacuumed early.
ALTER TABLE exekutor_schedules SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0,
                                    autovacuum_vacuum_threshold = 100);
