-- exekutor 0007: pending jobs by queue. The index of pending scheduled_at (0004) becomes (queue, scheduled_at):
-- the same number of index entries per job, and now every per-queue question is an index lookup instead of a
-- scan of every pending row (160 ms per /metrics scrape, 157 ms per `info` at 1,000,000 pending): which queues
-- have pending jobs (a loose scan, one descent per queue), each queue's oldest due job and its next scheduled
-- one (the ends of its due and future ranges), and counts bounded by a limit (exekutor/queue_stats.py). The
-- worker's timer asks for the next scheduled job per queue in the same way (NEXT_SCHEDULED).
DROP INDEX IF EXISTS exekutor_jobs_scheduled_idx;
CREATE INDEX exekutor_jobs_pending_queue_idx ON exekutor_jobs (queue, scheduled_at) WHERE status = 'p';

-- Counts above queue_stats' exact limit are the planner's estimates: statistics on queue and status together
-- let it estimate a queue's pending jobs (without them it multiplies the two columns' frequencies as if they
-- were independent, and a queue that is all backlog comes out far too small). PostgreSQL 12+.
DO $$
BEGIN
    IF current_setting('server_version_num')::integer >= 120000 THEN
        EXECUTE 'CREATE STATISTICS exekutor_jobs_queue_status_stats (mcv) ON queue, status FROM exekutor_jobs';
    END IF;
END
$$;
