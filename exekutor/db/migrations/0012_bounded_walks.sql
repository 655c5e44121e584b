-- exekutor 0012: the executing index carries the start time, so that a worker's own questions walk only its recent
-- runs.
--
-- The executing index (worker_id, WHERE status = 'e') keeps an entry for every job a worker ever ran until a VACUUM
-- removes it, and no VACUUM can while another session holds an older snapshot (a report, pg_dump, a session idle in
-- transaction): a worker asking "which jobs do I own?" then visits every job it ran during the held period (160,000
-- table visits, 20 ms, after 5 minutes at 600 jobs/s; growing without end). With started_at in the key, the
-- reconciliation asks only for the runs started since its previous round (exekutor.worker.reconciler), an index
-- range. The cancel check no longer uses this index at all (it asks for the jobs the worker holds, by primary key).
--
-- Built before the old one is dropped, in this migration's transaction: the build takes a SHARE lock on
-- exekutor_jobs (enqueues and reservations wait for it; it reads the table once, and the index holds executing
-- rows only).

CREATE INDEX exekutor_jobs_executing_started_idx ON exekutor_jobs (worker_id, started_at) WHERE status = 'e';
DROP INDEX exekutor_jobs_executing_idx;
ALTER INDEX exekutor_jobs_executing_started_idx RENAME TO exekutor_jobs_executing_idx;

-- A job's enqueued and due times default to the moment its row is made (clock_timestamp()), not to its transaction's
-- start: the rows of one INSERT ... SELECT then follow each other in the pending index instead of sharing one key,
-- and a reservation's floor (exekutor.worker.floors: the last candidate's key) starts past those already reserved
-- (before, each walk under a long-held snapshot visited again every reserved job of the same statement: 12,000
-- entries a walk with statements of 50,000 jobs). exekutor's own enqueue sets the due time the same way.
ALTER TABLE exekutor_jobs ALTER COLUMN enqueued_at SET DEFAULT clock_timestamp(),
                          ALTER COLUMN scheduled_at SET DEFAULT clock_timestamp();
