"""Hooks inside a real worker process: order and error rules (DESIGN §4)."""
import signal

import pytest

from tests import hooks_app
from tests.conftest import scalar, wait_for


def events(path):
    with open(path, encoding="utf-8") as f:
        return f.read().splitlines()


def between(lines, first, last):
    start = lines.index(first)
    return lines[start:lines.index(last, start) + 1]


@pytest.mark.timeout(60)
def test_hook_order_and_error_rules_in_a_worker(start_worker, db, tmp_path):
    path = str(tmp_path / "hooks.log")
    worker = start_worker("--app", "tests.hooks_app", "--poll-interval", "1", "--threads", "1",
                          env={"EXEKUTOR_TEST_HOOK_LOG": path})
    ok = hooks_app.ok.perform_later()
    wait_for(lambda: ok.fetch()["status"] == "completed", 20, message="ok")
    boom = hooks_app.boom.perform_later()
    wait_for(lambda: boom.fetch()["status"] == "failed", 20, message="boom")
    hook_fails = hooks_app.hook_fails.perform_later()
    wait_for(lambda: hook_fails.fetch()["status"] == "completed", 20, message="hook_fails")
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0
    lines = events(path)
    assert lines[:2] == ["before_startup", "after_startup started"]
    assert lines[-2:] == ["before_shutdown", "after_shutdown stopped"]
    # before: last registered first; around: last registered outermost; after: registration order.
    assert between(lines, "before second-registered ok", "after second-registered ok") == [
        "before second-registered ok", "before first-registered ok",
        "around outer in ok", "around inner in ok", "job ok", "around inner out ok", "around outer out ok",
        "after first-registered ok", "after second-registered ok",
    ]
    # A failing job: the around hooks see it unwind, after hooks do not run, on_job_failure does, once.
    boom_lines = between(lines, "before second-registered boom", "on_job_failure boom ValueError")
    assert "job boom" in boom_lines and "around outer out boom" in boom_lines
    assert not any(line.startswith("after ") for line in boom_lines)
    assert lines.count("on_job_failure boom ValueError") == 1
    # A hook that raises is reported through on_fatal_error and does not stop the job, which runs once.
    assert "on_fatal_error RuntimeError: a before hook failed" in lines
    assert lines.count("job hook_fails") == 1
    assert "after second-registered hook_fails" in lines
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'c'") == 2
