-- exekutor 0005: unique jobs (DESIGN §11). A job may carry a unique key; while it holds the key no other job with
-- the same key can be inserted. The database enforces it with a unique index, so concurrent enqueues from any
-- number of processes, in their own transactions, cannot both get in.
--
-- unique_until: 'f' (finished, the default) - the key is held while the job is pending, scheduled or executing;
--               's' (started) - only while it waits: once it runs, a new job with the key may be enqueued.
ALTER TABLE exekutor_jobs ADD COLUMN unique_key text;
ALTER TABLE exekutor_jobs ADD COLUMN unique_until char(1) CHECK (unique_until IN ('f', 's'));

CREATE UNIQUE INDEX exekutor_jobs_unique_idx ON exekutor_jobs (unique_key)
    WHERE unique_key IS NOT NULL AND (status = 'p' OR (status = 'e' AND unique_until = 'f'));

-- A job going back to pending (its retry, its release by a stopping or dead worker, an operator's retry) whose key
-- another job took meanwhile (possible with 's', or after the job failed) gives up its key instead of failing the
-- statement that sends it back: it runs as an ordinary job, and the other one keeps the key. Nothing is lost.
CREATE FUNCTION exekutor_jobs_unique_requeue() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF EXISTS (SELECT 1 FROM exekutor_jobs o
               WHERE o.unique_key = NEW.unique_key AND o.id <> NEW.id
                 AND (o.status = 'p' OR (o.status = 'e' AND o.unique_until = 'f'))) THEN
        NEW.unique_key := NULL;
    END IF;
    RETURN NEW;
END
$$;

-- After exekutor_jobs_cancel_pending (triggers fire in name order): a cancelled job is no longer pending here.
CREATE TRIGGER exekutor_jobs_unique_requeue
    BEFORE UPDATE ON exekutor_jobs
    FOR EACH ROW WHEN (NEW.status = 'p' AND OLD.status <> 'p' AND NEW.unique_key IS NOT NULL)
    EXECUTE FUNCTION exekutor_jobs_unique_requeue();
