-- exekutor 0001: the jobs, workers and job errors tables, their indexes and triggers.

CREATE TABLE exekutor_workers (
    id                uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    hostname          varchar(255) NOT NULL,
    pid               integer NOT NULL,
    identifier        text,
    -- i: initializing, r: running, s: stopping, c: crashed
    status            char(1) NOT NULL DEFAULT 'i' CHECK (status IN ('i', 'r', 's', 'c')),
    queues            text[],
    min_priority      integer,
    max_priority      integer,
    min_threads       integer,
    max_threads       integer,
    info              jsonb NOT NULL DEFAULT '{}',
    started_at        timestamptz NOT NULL DEFAULT now(),
    last_heartbeat_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE exekutor_jobs (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    queue        varchar(63) NOT NULL DEFAULT 'default' CHECK (queue <> ''),
    priority     smallint NOT NULL DEFAULT 16383 CHECK (priority BETWEEN 1 AND 32767),
    enqueued_at  timestamptz NOT NULL DEFAULT now(),
    scheduled_at timestamptz NOT NULL DEFAULT now(),
    -- {"job": registered name, "args": [...], "kwargs": {...}}
    payload      jsonb NOT NULL,
    -- per-job options: execution_timeout, queue_timeout (seconds)
    options      jsonb,
    -- p: pending, e: executing, c: completed, f: failed, d: discarded
    status       char(1) NOT NULL DEFAULT 'p' CHECK (status IN ('p', 'e', 'c', 'f', 'd')),
    -- times the job was started (incremented when reserved)
    attempts     integer NOT NULL DEFAULT 0,
    -- the owner while executing: completion is fenced on it
    worker_id    uuid,
    started_at   timestamptz,
    finished_at  timestamptz,
    runtime      double precision
);

-- Reservation scans only pending rows, in dequeue order: finished rows never slow it down.
CREATE INDEX exekutor_jobs_pending_idx ON exekutor_jobs (priority, scheduled_at, enqueued_at)
    WHERE status = 'p';
-- Releasing a worker's jobs and rescuing orphans.
CREATE INDEX exekutor_jobs_executing_idx ON exekutor_jobs (worker_id) WHERE status = 'e';
-- Cleanup of finished jobs.
CREATE INDEX exekutor_jobs_finished_idx ON exekutor_jobs (scheduled_at) WHERE status IN ('c', 'f', 'd');

CREATE TABLE exekutor_job_errors (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    job_id     uuid NOT NULL REFERENCES exekutor_jobs (id) ON DELETE CASCADE,
    created_at timestamptz NOT NULL DEFAULT now(),
    attempt    integer,
    -- {"type": ..., "message": ..., "traceback": ...}
    error      jsonb NOT NULL
);
CREATE INDEX exekutor_job_errors_job_id_idx ON exekutor_job_errors (job_id);

-- One notification per queue for a set of jobs that became pending: the lowest priority number and the
-- earliest scheduled time, so a listener can reserve at once or arm a timer. json_build_object quotes
-- queue names, so ';', ':' or quotes in them cannot break the payload.
CREATE FUNCTION exekutor_notify_pending(queues text[], priorities integer[], scheduled timestamptz[])
    RETURNS integer LANGUAGE sql AS $$
    SELECT count(pg_notify('exekutor::job_enqueued',
                           json_build_object('q', q, 'p', p, 't', extract(epoch FROM s))::text))::integer
    FROM (SELECT q, min(p) AS p, min(s) AS s FROM unnest(queues, priorities, scheduled) AS u(q, p, s) GROUP BY q)
        AS per_queue
$$;

CREATE FUNCTION exekutor_jobs_notify_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('exekutor::job_enqueued',
                      json_build_object('q', queue, 'p', priority, 't', extract(epoch FROM scheduled_at))::text)
    FROM (SELECT queue, min(priority) AS priority, min(scheduled_at) AS scheduled_at
          FROM inserted_jobs WHERE status = 'p' GROUP BY queue) AS per_queue;
    RETURN NULL;
END
$$;

-- Statement level with a transition table: a bulk insert of 10,000 jobs is one notification per queue.
CREATE TRIGGER exekutor_jobs_notify_insert
    AFTER INSERT ON exekutor_jobs
    REFERENCING NEW TABLE AS inserted_jobs
    FOR EACH STATEMENT EXECUTE FUNCTION exekutor_jobs_notify_insert();

-- Deleting a worker row (at shutdown, by cleanup or by orphan rescue) puts its executing jobs back to
-- pending and tells the listening workers about them.
CREATE FUNCTION exekutor_workers_release_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    released integer;
BEGIN
    WITH released_jobs AS (
        UPDATE exekutor_jobs SET status = 'p', worker_id = NULL
        WHERE worker_id = OLD.id AND status = 'e'
        RETURNING queue, priority, scheduled_at
    )
    SELECT exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer), array_agg(scheduled_at))
    INTO released FROM released_jobs;
    RETURN OLD;
END
$$;

CREATE TRIGGER exekutor_workers_release_jobs
    BEFORE DELETE ON exekutor_workers
    FOR EACH ROW EXECUTE FUNCTION exekutor_workers_release_jobs();
