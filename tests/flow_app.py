"""Jobs with limits, for the flow-control tests (`--app tests.flow_app`).

Each run records its start and end on the database's clock in flow_runs (one row per run, by the run's tag and
the backend of the worker's pool), so a test can check every moment and every window against the limits,
whichever worker ran the job.
"""
import gevent

import exekutor
from tests.jobs_app import _execute

RUNS_DDL = """
CREATE TABLE IF NOT EXISTS flow_runs (
    id bigserial PRIMARY KEY, tag text NOT NULL, key text NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(), finished_at timestamptz);
-- What the database says, whatever the jobs record: every admission (status to 'e') and every end of a run (status
-- from 'e'), timed by clock_timestamp() when the row is written (after the admission's count, before the release's
-- commit: so an interval here contains the real one), and the admission's started_at (the rate limit's clock). A
-- test-only trigger, BEFORE so that it logs when each row is written: AFTER triggers fire at the end of their
-- statement, and a completion that hands its slot on (exekutor_handoff) writes the finished row first and starts
-- the next job inside the same statement.
CREATE TABLE IF NOT EXISTS flow_slots (
    job_id uuid NOT NULL, attempt integer NOT NULL, queue text NOT NULL, concurrency_key text, rate_key text,
    admitted_at timestamptz NOT NULL, started_at timestamptz NOT NULL, ended_at timestamptz);
CREATE OR REPLACE FUNCTION flow_slots_log() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status = 'e' AND OLD.status IS DISTINCT FROM 'e' THEN
        INSERT INTO flow_slots (job_id, attempt, queue, concurrency_key, rate_key, admitted_at, started_at)
        VALUES (NEW.id, NEW.attempts, NEW.queue, NEW.concurrency_key, NEW.rate_key, clock_timestamp(), NEW.started_at);
    ELSIF OLD.status = 'e' AND NEW.status IS DISTINCT FROM 'e' THEN
        UPDATE flow_slots SET ended_at = clock_timestamp() WHERE job_id = OLD.id AND attempt = OLD.attempts;
    END IF;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS flow_slots_log ON exekutor_jobs;
CREATE TRIGGER flow_slots_log BEFORE UPDATE OF status ON exekutor_jobs FOR EACH ROW EXECUTE FUNCTION flow_slots_log();
"""
RUNS_TEARDOWN = """
DROP TRIGGER IF EXISTS flow_slots_log ON exekutor_jobs;
DROP FUNCTION IF EXISTS flow_slots_log();
DROP TABLE IF EXISTS flow_runs, flow_slots;
"""


def _run(tag, key, seconds, fail=False):
    run_id = _execute("INSERT INTO flow_runs (tag, key) VALUES (%s, %s) RETURNING id", (tag, key))[0]
    try:
        gevent.sleep(seconds)
        if fail:
            raise RuntimeError("asked to fail")
    finally:
        _execute("UPDATE flow_runs SET finished_at = clock_timestamp() WHERE id = %s", (run_id,))


@exekutor.job(name="flow.limited", concurrency=2, concurrency_key=lambda tag, key, *args, **kwargs: key,
              retry=exekutor.Retry(attempts=3, backoff="fixed", wait=0.05))
def limited(tag, key, seconds=0.0, fail=False):
    _run(tag, key, seconds, fail)


@exekutor.job(name="flow.rated", rate_limit="5/s")
def rated(tag, key="rate", seconds=0.0):
    _run(tag, key, seconds)


@exekutor.job(name="flow.free")
def free(tag, key="free", seconds=0.0):
    _run(tag, key, seconds)


@exekutor.job(name="flow.prop", retry=exekutor.Retry(attempts=3, backoff="fixed", wait=0.05))
def prop(tag, seconds=0.0, failures=0):
    """The property tests' job (limits given per enqueue with .set()): runs `seconds`, and raises in its first
    `failures` runs (3 attempts: failures >= 3 ends it failed)."""
    earlier = _execute("SELECT count(*) FROM flow_runs WHERE tag = %s", (tag,))[0]
    _run(tag, "prop", seconds, fail=earlier < failures)
