-- exekutor 0004: a queue table's maintenance: autovacuum settings suited to churn, and an index for the timer.
--
-- Every job is inserted, updated twice or more (reserved, finished) and, eventually, deleted: a busy queue makes
-- dead rows far faster than an ordinary table, and PostgreSQL's defaults (vacuum once 20 % of a table is dead)
-- leave a table of a million finished jobs 200,000 dead rows behind before anything is cleaned. Dead index entries
-- slow every scan that walks them (the reservation's walk over the pending index first of all). So, per table:
--
-- exekutor_jobs: vacuum after 1,000 dead rows plus 1 % of the table, analyze after 2 %, and with no cost delay (a
--   vacuum of this table must finish quickly rather than gently; it reads little besides the dead rows). Inserts
--   also trigger vacuums (PostgreSQL 13+), which keeps the visibility map fresh for index-only scans.
-- exekutor_workers: every heartbeat updates a row; a small table that must never bloat: vacuum after 100 dead
--   rows, and room in each page (fillfactor 50) so that heartbeats are HOT updates, which need no index entry.
-- exekutor_job_errors: insert-mostly (a record per failed attempt), deleted with its job: vacuum after 5 %.
--
-- These are per-table storage parameters: they apply only where autovacuum runs at all (`autovacuum = on`, the
-- server's default; a worker warns at start when it is off). A DBA can change them with ALTER TABLE ... SET.

ALTER TABLE exekutor_jobs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_vacuum_threshold = 1000,
                               autovacuum_analyze_scale_factor = 0.02, autovacuum_analyze_threshold = 1000,
                               autovacuum_vacuum_cost_delay = 0);
ALTER TABLE exekutor_workers SET (fillfactor = 50, autovacuum_vacuum_scale_factor = 0,
                                  autovacuum_vacuum_threshold = 100);
ALTER TABLE exekutor_job_errors SET (autovacuum_vacuum_scale_factor = 0.05, autovacuum_analyze_scale_factor = 0.05);

DO $$
BEGIN
    IF current_setting('server_version_num')::integer >= 130000 THEN
        EXECUTE 'ALTER TABLE exekutor_jobs SET (autovacuum_vacuum_insert_scale_factor = 0.01, '
                'autovacuum_vacuum_insert_threshold = 1000)';
    END IF;
END
$$;

-- When the next future job is due (the worker's timer, asked at every poll and before its first reservation):
-- the pending index leads with priority, so it cannot give the earliest scheduled_at; without this index the
-- question was a scan of every pending row (113-134 ms at 1,000,000 pending). Only pending rows are in it.
CREATE INDEX exekutor_jobs_scheduled_idx ON exekutor_jobs (scheduled_at) WHERE status = 'p';
