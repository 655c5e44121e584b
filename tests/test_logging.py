"""What a real worker logs about jobs: DEBUG start/finish lines, ERROR failures with tracebacks, no arguments."""
import json
import re

import pytest

from tests import health_jobs, jobs_app
from tests.conftest import query, wait_for

SECRET = "s3cr3t-argument-value"
BAD_ARGUMENTS = {"job": "tests.noop", "args": [{"__exekutor__": "datetime", "v": f"{SECRET}-not-a-date"}]}


def finished(db, total):
    return lambda: query(db, "SELECT count(*) FROM exekutor_jobs WHERE status IN ('c', 'f', 'd')")[0][0] == total


def insert_job(db, payload):
    return query(db, "INSERT INTO exekutor_jobs (payload) VALUES (%s) RETURNING id::text", (json.dumps(payload),))[0][0]


def exekutor_lines(output, level):
    return [line for line in output.splitlines() if re.search(rf" {level} \[\d+\] exekutor: ", line)]


@pytest.mark.timeout(60)
def test_job_lines_at_debug_failures_at_error_with_traceback_and_never_the_arguments(start_worker, db):
    worker = start_worker("--app", "tests.health_jobs", env={"EXEKUTOR_TEST_DEBUG_LOG": "1"})
    completed = jobs_app.noop.perform_later(SECRET, key=SECRET)
    failed = health_jobs.fails.perform_later(secret=SECRET)
    discarded = health_jobs.discarded.perform_later(secret=SECRET)
    unloadable = insert_job(db, BAD_ARGUMENTS)
    wait_for(finished(db, 4), 30, message="4 jobs to finish")
    worker.stop()
    output = worker.output()

    debug = "\n".join(exekutor_lines(output, "DEBUG"))
    assert f"exekutor job {completed.id} (tests.noop) started on queue default, attempt 1" in debug
    assert re.search(rf"exekutor job {completed.id} \(tests\.noop\) completed in \d+\.\d+s", debug)
    errors = exekutor_lines(output, "ERROR")
    failure = f"job {failed.id} (health.fails) failed: RuntimeError: health job failed on purpose"
    assert [line for line in errors if failure in line]
    traceback = output.split(f"job {failed.id} (health.fails) failed", 1)[1]
    assert "Traceback (most recent call last):" in traceback and 'in fails\n    raise RuntimeError' in traceback
    assert [line for line in exekutor_lines(output, "WARNING")
            if f"job {discarded.id} (health.discarded) was discarded: exekutor.errors.DiscardJob" in line]
    assert [line for line in errors if f"job {unloadable} (tests.noop) failed: exekutor.errors.SerializationError: "
            "its arguments could not be loaded" in line]
    assert SECRET not in output
    # The details are kept where they belong.
    stored = query(db, "SELECT error->>'message' FROM exekutor_job_errors WHERE job_id = %s", (unloadable,))
    assert SECRET in stored[0][0]


@pytest.mark.timeout(60)
def test_quiet_keeps_only_errors(start_worker, db):
    worker = start_worker("--app", "tests.health_jobs", "--quiet", env={"EXEKUTOR_TEST_DEBUG_LOG": "1"})
    failed = health_jobs.fails.perform_later()
    completed = jobs_app.noop.perform_later()
    wait_for(finished(db, 2), 30, message="2 jobs to finish")
    worker.stop()
    output = worker.output()
    assert [line for line in exekutor_lines(output, "ERROR") if f"job {failed.id} (health.fails) failed" in line]
    assert completed.id not in output
    for level in ("DEBUG", "INFO", "WARNING"):
        assert exekutor_lines(output, level) == [], level


def test_logger_option_routes_exekutor_records_to_another_logger():
    import logging

    from exekutor import log

    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    target = logging.getLogger("tests.app.jobs")
    target.addHandler(Keep())
    target.setLevel(logging.INFO)
    try:
        log.use_logger("tests.app.jobs")
        logging.getLogger("exekutor").warning("routed %s", 1)
        assert records == ["routed 1"]
        assert logging.getLogger("exekutor").propagate is False
    finally:
        log.use_logger("exekutor")
    logging.getLogger("exekutor").warning("not routed")
    assert records == ["routed 1"]
    assert logging.getLogger("exekutor").propagate is True
