-- exekutor 0010: a run that ended without an outcome of its own does not count against the job's Retry policy.
-- Besides a lost connection (0009), that is a job released when its worker's row is deleted (its worker stopped and
-- killed it, or was presumed dead and rescued) and a job the worker's reconciliation releases (a lost reservation
-- reply, a job the ownership guard stopped): each adds one to `releases`, which the worker subtracts from attempts
-- when it counts a Retry policy's attempts. Rescues are bounded on their own (max_job_rescues), releases by
-- MAX_RELEASES. Only the trigger function changes: no table rewrite.
CREATE OR REPLACE FUNCTION exekutor_workers_release_jobs() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    released integer;
BEGIN
    WITH released_jobs AS (
        UPDATE exekutor_jobs SET status = 'p', worker_id = NULL, releases = releases + 1
        WHERE worker_id = OLD.id AND status = 'e'
        RETURNING queue, priority, scheduled_at
    )
    SELECT exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer), array_agg(scheduled_at))
    INTO released FROM released_jobs;
    RETURN OLD;
END
$$;
