-- exekutor 0003: operating the queue (DESIGN §10): cancel requests recorded in the row, an index for listing
-- finished jobs page by page, and counters of operators' actions.

-- When an operator asked to cancel the job. Set on a pending or executing row; the trigger below finishes a
-- pending one at once, and the worker running an executing one interrupts it. Kept on the finished row: a
-- discarded job with a cancel request is a "cancelled" job.
ALTER TABLE exekutor_jobs ADD COLUMN cancel_requested_at timestamptz;

-- A job whose cancel was requested never becomes pending again: not when it is cancelled while pending, not when
-- its worker releases it (stop, death, a lost connection), not when its run asks for a retry. It ends discarded
-- with a JobCancelled record instead, so a cancel survives a missed notification or a dead worker. The WHEN
-- clause is evaluated without calling the function: the worker's reservations and completions do not pay for it.
CREATE FUNCTION exekutor_jobs_cancel_pending() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.status := 'd';
    NEW.worker_id := NULL;
    NEW.finished_at := now();
    -- clock_timestamp(): after the record of the attempt's own error, written by the same statement at now().
    INSERT INTO exekutor_job_errors (job_id, created_at, attempt, error)
    VALUES (NEW.id, clock_timestamp(), NULLIF(NEW.attempts, 0),
            jsonb_build_object('type', 'exekutor.errors.JobCancelled',
                               'message', CASE WHEN OLD.status = 'p' AND NEW.attempts = 0
                                               THEN 'cancelled before it ran'
                                               WHEN OLD.status = 'p' THEN 'cancelled while waiting to run again'
                                               ELSE 'cancelled; its worker released it before it was interrupted'
                                          END,
                               'traceback', NULL));
    RETURN NEW;
END
$$;

CREATE TRIGGER exekutor_jobs_cancel_pending
    BEFORE UPDATE ON exekutor_jobs
    FOR EACH ROW WHEN (NEW.status = 'p' AND NEW.cancel_requested_at IS NOT NULL)
    EXECUTE FUNCTION exekutor_jobs_cancel_pending();

-- `jobs list --status failed` (and discarded, cancelled, completed), newest first, one keyset page at a time, on
-- a table of millions of finished rows. Cleanup reads it too (finished before a cutoff). It replaces the index on
-- scheduled_at: as many index entries per finished job as before.
CREATE INDEX exekutor_jobs_finished_at_idx ON exekutor_jobs (status, finished_at, id)
    WHERE status IN ('c', 'f', 'd');
DROP INDEX exekutor_jobs_finished_idx;
-- `--status cancelled`: few rows, but a scan of all discarded ones to find them would not be.
CREATE INDEX exekutor_jobs_cancelled_idx ON exekutor_jobs (finished_at, id)
    WHERE status = 'd' AND cancel_requested_at IS NOT NULL;
-- `--job NAME`: without statistics on the expression the planner guesses that a name matches 0.5% of the rows and
-- sorts every finished job of the status instead of walking the index (100 ms instead of 2 on a million rows).
-- Expression statistics exist from PostgreSQL 14.
DO $$
BEGIN
    IF current_setting('server_version_num')::integer >= 140000 THEN
        EXECUTE 'CREATE STATISTICS exekutor_jobs_job_name_stats ON (payload->>''job'') FROM exekutor_jobs';
    END IF;
END
$$;

-- Jobs retried and cancelled by operators (exekutor-gevent jobs retry|cancel, the dashboard, JobRequest), for
-- the workers' /metrics: counters that only grow.
CREATE TABLE exekutor_operator_actions (
    action text PRIMARY KEY CHECK (action IN ('retry', 'cancel')),
    jobs   bigint NOT NULL DEFAULT 0
);
INSERT INTO exekutor_operator_actions (action) VALUES ('retry'), ('cancel');
