-- exekutor 0008: sending a job back to pending never waits on an application's transaction for its unique key
-- (issue 24).
--
-- A row that enters the unique index by an UPDATE checks the index for its key, and an uncommitted insert of the
-- same key by another transaction makes it wait for that transaction, then fail with a unique violation if it
-- commits. In 0005 a unique_until='s' job left the index when it started and entered it again when its retry or
-- release sent it back to pending: the worker's completion waited on the application's transaction (its other
-- outcomes with it), then failed, and the job's error record was lost. The trigger's check could not help: it
-- sees committed rows only.
--
-- Now a job that goes from executing back to pending never enters the index again:
--   - a 's' job gave its key up when it started: going back, it clears its key, whether another job took it or not,
--     and runs again as an ordinary job;
--   - a 'f' job held its key all along (nobody could take it while it ran), so its row meets no other holder.
-- A job whose cancel is requested while it runs clears its key then (exekutor.operations.cancel), so the same key
-- can be enqueued at once. The one way back into the index is an operator's retry of a finished job, which keeps
-- the trigger's check and is guarded by a lock_timeout in exekutor.operations.retry.
--
-- The index and its predicate stay as they were (the enqueue's ON CONFLICT names the index by it, in this version
-- and the previous one): no index is rebuilt, and the migration only replaces a function and a trigger.
CREATE OR REPLACE FUNCTION exekutor_jobs_unique_requeue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF OLD.status = 'e' OR EXISTS (
            SELECT 1 FROM exekutor_jobs o
            WHERE o.unique_key = NEW.unique_key AND o.id <> NEW.id
              AND (o.status = 'p' OR (o.status = 'e' AND o.unique_until = 'f'))) THEN
        NEW.unique_key := NULL;
    END IF;
    RETURN NEW;
END
$$;

-- After exekutor_jobs_cancel_pending (triggers fire in name order): a cancelled job is no longer pending here. A
-- 'f' job going from executing back to pending keeps its key without calling the function.
DROP TRIGGER exekutor_jobs_unique_requeue ON exekutor_jobs;
CREATE TRIGGER exekutor_jobs_unique_requeue
    BEFORE UPDATE ON exekutor_jobs
    FOR EACH ROW WHEN (NEW.status = 'p' AND NEW.unique_key IS NOT NULL
                       AND (OLD.status IN ('c', 'f', 'd') OR (OLD.status = 'e' AND NEW.unique_until = 's')))
    EXECUTE FUNCTION exekutor_jobs_unique_requeue();

-- Running jobs being cancelled right now give up their keys, as the ones cancelled from now on will.
UPDATE exekutor_jobs SET unique_key = NULL
WHERE status = 'e' AND cancel_requested_at IS NOT NULL AND unique_key IS NOT NULL;
