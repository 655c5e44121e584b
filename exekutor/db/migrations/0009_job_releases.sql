-- exekutor 0009: how many times a job was released because its worker lost its connection to the database. Every
-- reservation increments attempts, which is also the completion's fence, so a release cannot give its attempt
-- back; the worker subtracts releases instead when it counts a Retry policy's attempts (exekutor/execution.py),
-- and bounds releases by themselves. A constant default: instant on PostgreSQL 11+.
ALTER TABLE exekutor_jobs ADD COLUMN IF NOT EXISTS releases integer NOT NULL DEFAULT 0;
