"""Operating the queue without a worker: list, show, retry and cancel through Python and the real CLI.

Jobs are put in their states with SQL (the worker's part is tests/test_cancel.py); the CLI runs as a subprocess.
"""
import base64
import json
import os
import pty
import subprocess
import sys
import uuid

import psycopg2
import pytest
from hypothesis import given
from hypothesis import strategies as st

import exekutor
from exekutor import operations
from tests.conftest import ROOT, query, scalar, wait_for
from tests.jobs_app import noop
from tests.test_cli import run_cli

pytestmark = pytest.mark.timeout(120)

# Rows in the states an operator meets, made in bulk: (count, status, queue, job, error type).
_BULK = """
WITH made AS (
    INSERT INTO exekutor_jobs (queue, payload, status, attempts, started_at, finished_at, enqueued_at, scheduled_at)
    SELECT %(queue)s, jsonb_build_object('job', %(job)s, 'args', jsonb_build_array(i), 'kwargs', '{}'::jsonb),
           %(status)s, CASE WHEN %(status)s = 'p' THEN 0 ELSE 1 END,
           CASE WHEN %(status)s = 'p' THEN NULL ELSE now() END,
           CASE WHEN %(status)s IN ('c', 'f', 'd') THEN now() - i * interval '1 ms' END,
           now() - i * interval '1 ms', now() - i * interval '1 ms'
    FROM generate_series(1, %(count)s) AS i
    RETURNING id, status
)
INSERT INTO exekutor_job_errors (job_id, attempt, error)
SELECT id, 1, jsonb_build_object('type', 'builtins.RuntimeError', 'message', 'boom', 'traceback', 'Traceback: here')
FROM made WHERE status IN ('f', 'd')
"""


def make_jobs(conn, count, status, queue="default", job="tests.noop"):
    query(conn, _BULK, {"count": count, "status": status, "queue": queue, "job": job})


def ids_with(conn, status):
    return [row[0] for row in query(conn, "SELECT id::text FROM exekutor_jobs WHERE status = %s", (status,))]


def cli_json(*args):
    result = run_cli(*args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


# --- listing ------------------------------------------------------------------------------------------------


def test_pages_cover_every_matching_job_once_in_order(db):
    make_jobs(db, 10_000, "f", queue="mail")
    make_jobs(db, 300, "f", queue="default")
    make_jobs(db, 200, "c", queue="mail")
    seen, cursor, pages = [], None, 0
    while True:
        page = operations.list_jobs(db, operations.JobFilter(status="failed", queue="mail"), limit=1000,
                                    after=cursor)
        seen += page.jobs
        pages += 1
        cursor = page.next_cursor
        if cursor is None:
            break
    assert pages == 10 and len(seen) == 10_000 == len({job["id"] for job in seen})
    assert {job["queue"] for job in seen} == {"mail"} and {job["status"] for job in seen} == {"failed"}
    keys = [(job["finished_at"], job["id"]) for job in seen]
    assert keys == sorted(keys, reverse=True)  # newest first, no gap or repeat at a page boundary
    assert seen[0]["last_error"] == {"type": "builtins.RuntimeError", "message": "boom"}


def test_a_page_of_the_cli_continues_where_the_last_one_ended(db):
    make_jobs(db, 120, "d")
    first = cli_json("jobs", "list", "--status", "discarded", "--limit", "100")
    second = cli_json("jobs", "list", "--status", "discarded", "--limit", "100", "--after", first["next_cursor"])
    assert len(first["jobs"]) == 100 and len(second["jobs"]) == 20 and second["next_cursor"] is None
    assert not {job["id"] for job in first["jobs"]} & {job["id"] for job in second["jobs"]}
    table = run_cli("jobs", "list", "--status", "discarded", "--limit", "5")
    assert table.returncode == 0 and "RuntimeError: boom" in table.stdout and "--after" in table.stdout


def test_ties_on_the_sort_key_do_not_lose_rows_between_pages(db):
    # One INSERT gives every row the same enqueued_at and scheduled_at: the id must break the tie.
    query(db, "INSERT INTO exekutor_jobs (payload) SELECT '{\"job\": \"tests.noop\"}' FROM generate_series(1, 25)")
    seen, cursor = [], None
    while True:
        page = operations.list_jobs(db, operations.JobFilter(status="pending"), limit=4, after=cursor)
        seen += [job["id"] for job in page.jobs]
        if not (cursor := page.next_cursor):
            break
    assert sorted(seen) == sorted(ids_with(db, "p")) and len(seen) == 25


def test_filters_by_job_name_time_and_status_names(db):
    make_jobs(db, 3, "f", job="tests.flaky")
    make_jobs(db, 2, "f", job="tests.noop")
    make_jobs(db, 4, "p")
    query(db, "UPDATE exekutor_jobs SET scheduled_at = now() + interval '1 hour' WHERE id IN "
              "(SELECT id FROM exekutor_jobs WHERE status = 'p' LIMIT 1)")
    count = operations.count_jobs
    assert count(db, operations.JobFilter(status="failed", job="tests.flaky")) == 3
    assert count(db, operations.JobFilter(status="pending")) == 4
    assert count(db, operations.JobFilter(status="scheduled")) == 1
    query(db, "UPDATE exekutor_jobs SET finished_at = now() - interval '3 days' WHERE payload->>'job' = 'tests.noop'")
    recent = cli_json("jobs", "list", "--status", "failed", "--since", "2d")
    assert {job["job"] for job in recent["jobs"]} == {"tests.flaky"}
    assert len(cli_json("jobs", "list", "--job", "tests.noop")["jobs"]) == 6  # 2 failed, 4 pending


def test_a_job_name_that_matches_nothing_suggests_the_stored_names_close_to_it(db):
    make_jobs(db, 2, "p", job="billing.jobs:send_invoice")
    make_jobs(db, 1, "p", job="billing.jobs:send_reminder")
    for typed in ("send_invoice", "billing.jobs.send_invoice", "billing.jobs:send_invoce"):
        result = run_cli("jobs", "list", "--job", typed)
        assert result.returncode == 1
        assert result.stderr == (f"no jobs match (no job is named {typed!r}; did you mean "
                                 "'billing.jobs:send_invoice'?)\n"), typed
    # The name exists, other filters left nothing: no suggestion.
    result = run_cli("jobs", "list", "--job", "billing.jobs:send_invoice", "--status", "failed")
    assert (result.returncode, result.stderr) == (1, "no jobs match\n")


def test_nothing_matched_is_status_1_and_bad_input_is_one_line_status_2(db):
    empty = run_cli("jobs", "list", "--status", "failed")
    assert empty.returncode == 1 and "no jobs match" in empty.stderr
    for args in (["jobs", "list", "--status", "exploded"], ["jobs", "list", "--after", "not-a-cursor"],
                 ["jobs", "list", "--limit", "0"], ["jobs", "list", "--since", "yesterday"],
                 ["jobs", "list", "--queue", "x" * 100], ["jobs", "show", "1234"],
                 ["jobs", "retry", "--status", "pending", "--yes"], ["jobs", "cancel", "--status", "failed"],
                 ["jobs", "retry"], ["jobs", "cancel", str(uuid.uuid4()), "--status", "pending"],
                 ["jobs", "retry", "--status", "failed", "--at", "soonish"]):
        result = run_cli(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("exekutor-gevent: error:"), args
    missing = run_cli("jobs", "show", str(uuid.uuid4()))
    assert missing.returncode == 1 and "no job" in missing.stderr


def test_a_cursor_from_another_status_is_refused(db):
    make_jobs(db, 3, "f")
    cursor = operations.list_jobs(db, operations.JobFilter(status="failed"), limit=1).next_cursor
    with pytest.raises(operations.OperationError, match="not from a listing with this --status"):
        operations.list_jobs(db, operations.JobFilter(status="pending"), after=cursor)


@given(st.text(max_size=200))
def test_any_cursor_text_is_a_clean_error_or_a_page(database_url, text):
    with psycopg2.connect(database_url) as conn:
        conn.autocommit = True
        try:
            operations.list_jobs(conn, operations.JobFilter(status="failed"), after=text)
        except operations.OperationError:
            pass


def test_show_prints_arguments_errors_and_tracebacks_escaped(db):
    request = noop.perform_later("\x1b[31mred", key="line\nbreak")
    query(db, "UPDATE exekutor_jobs SET status = 'f', attempts = 1, finished_at = now() WHERE id = %s", (request.id,))
    query(db, "INSERT INTO exekutor_job_errors (job_id, attempt, error) VALUES (%s, 1, %s)",
          (request.id, json.dumps({"type": "builtins.ValueError", "message": "bad\u2028value",
                                   "traceback": "Traceback (most recent call last):\n  File 'x'\nValueError"})))
    shown = run_cli("jobs", "show", request.id)
    assert shown.returncode == 0, shown.stderr
    assert "\x1b" not in shown.stdout and "\u2028" not in shown.stdout
    assert "attempt 1" in shown.stdout and "File 'x'" in shown.stdout and "tests.noop" in shown.stdout
    data = cli_json("jobs", "show", request.id)
    assert data["payload"]["args"] == ["\x1b[31mred"] and data["errors"][0]["type"] == "builtins.ValueError"


# --- retry --------------------------------------------------------------------------------------------------


def test_retry_by_id_keeps_history_and_counts_on(db):
    make_jobs(db, 2, "f")
    make_jobs(db, 1, "c")
    failed, completed = ids_with(db, "f")[0], ids_with(db, "c")[0]
    handle = exekutor.JobRequest(failed)
    assert handle.retry() is True
    row = handle.fetch()
    assert row["status"] == "pending" and row["attempts"] == 1 and row["options"]["retry_base"] == 1
    assert [error["type"] for error in handle.errors()] == ["builtins.RuntimeError"]
    assert exekutor.JobRequest(completed).retry() is False  # a completed job keeps its outcome
    assert exekutor.JobRequest(uuid.uuid4()).retry() is False


def test_retry_gives_a_released_job_a_fresh_count_of_releases_and_show_says_how_many(db):
    make_jobs(db, 1, "f")
    failed = ids_with(db, "f")[0]
    query(db, "UPDATE exekutor_jobs SET attempts = 5, releases = 2 WHERE id = %s", (failed,))
    assert "5 (2 released)" in run_cli("jobs", "show", failed).stdout
    handle = exekutor.JobRequest(failed)
    assert handle.retry() is True
    row = handle.fetch()  # the Retry policy counts attempts after 5, less the releases after it
    assert (row["attempts"], row["releases"], row["options"]["retry_base"]) == (5, 0, 5)


def test_retry_wakes_listening_workers(db, database_url):
    make_jobs(db, 1, "f", queue="mail")
    listener = psycopg2.connect(database_url)
    listener.autocommit = True
    try:
        query(listener, 'LISTEN "exekutor::job_enqueued"')
        exekutor.JobRequest(ids_with(db, "f")[0]).retry()
        wait_for(lambda: listener.poll() or listener.notifies, 10, message="the notification")
        assert [json.loads(n.payload)["q"] for n in listener.notifies] == ["mail"]
    finally:
        listener.close()


def test_retry_at_a_later_time_and_in_the_callers_transaction(db, database_url):
    make_jobs(db, 1, "d")
    job_id = ids_with(db, "d")[0]
    result = run_cli("jobs", "retry", job_id, "--at", "2h")
    assert result.returncode == 0 and "retried 1 job(s)" in result.stdout, result.stderr
    assert scalar(db, "SELECT scheduled_at > now() + interval '119 minutes' FROM exekutor_jobs WHERE id = %s",
                  (job_id,))
    query(db, "UPDATE exekutor_jobs SET status = 'f' WHERE id = %s", (job_id,))
    with psycopg2.connect(database_url) as conn:  # rolled back: nothing happened
        assert exekutor.JobRequest(job_id).retry(connection=conn) is True
        conn.rollback()
    assert scalar(db, "SELECT status FROM exekutor_jobs WHERE id = %s", (job_id,)) == "f"


def test_retry_by_filter_dry_run_and_confirmation(db):
    make_jobs(db, 7, "f", queue="mail")
    make_jobs(db, 5, "f", queue="default")
    dry = run_cli("jobs", "retry", "--status", "failed", "--queue", "mail", "--dry-run")
    assert dry.returncode == 0 and "would retry 7 job(s)" in dry.stdout
    unconfirmed = run_cli("jobs", "retry", "--status", "failed", "--queue", "mail")
    assert unconfirmed.returncode == 2 and "--yes" in unconfirmed.stderr
    assert len(ids_with(db, "f")) == 12
    assert answer_on_terminal(["jobs", "retry", "--status", "failed", "--queue", "mail"], "n\n")[0] == 1
    assert len(ids_with(db, "f")) == 12
    status, output = answer_on_terminal(["jobs", "retry", "--status", "failed", "--queue", "mail"], "y\n")
    assert status == 0 and "retry 7 job(s)?" in output and "retried 7 job(s)" in output
    assert len(ids_with(db, "f")) == 5 and len(ids_with(db, "p")) == 7


def answer_on_terminal(args, answer):
    """Run the CLI on a pseudo-terminal, type `answer`; (exit status, what it printed)."""
    controller, terminal = pty.openpty()
    environ = dict(os.environ, PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "exekutor", *args], stdin=terminal, stdout=terminal,
                            stderr=terminal, cwd=ROOT, env=environ)
    os.close(terminal)
    output = b""
    try:
        os.write(controller, answer.encode())
        while True:
            try:
                chunk = os.read(controller, 4096)
            except OSError:  # the terminal closed: the process exited
                break
            if not chunk:
                break
            output += chunk
        return proc.wait(30), output.decode(errors="replace")
    finally:
        os.close(controller)
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


# --- cancel (no worker) -------------------------------------------------------------------------------------


def test_cancel_of_a_pending_job_discards_it_at_once_with_a_record(db):
    request = noop.perform_later()
    assert request.cancel() is True
    row = request.fetch()
    assert row["status"] == "cancelled" and row["cancel_requested_at"] is not None
    (error,) = request.errors()
    assert error["type"] == "exekutor.errors.JobCancelled" and "before it ran" in error["message"]
    assert request.cancel() is False  # once
    assert [job["id"] for job in operations.list_jobs(db, operations.JobFilter(status="cancelled")).jobs] == \
        [request.id]


def test_a_cancelled_job_is_cancelled_in_fetch_the_cli_and_the_dashboard(db):
    """One vocabulary (DESIGN §10): a job discarded by its cancel is "cancelled" wherever its status is named; a
    job discarded otherwise stays "discarded"."""
    from exekutor.dashboard import create_app

    cancelled, discarded = noop.perform_later(), noop.perform_later()
    assert cancelled.cancel() is True
    query(db, "UPDATE exekutor_jobs SET status = 'd', finished_at = now() WHERE id = %s", (discarded.id,))
    client = create_app().test_client()
    for request, status in ((cancelled, "cancelled"), (discarded, "discarded")):
        assert request.fetch()["status"] == status
        assert cli_json("jobs", "show", request.id)["status"] == status
        assert operations.get_job(db, request.id)["status"] == status
        page = client.get(f"/jobs/{request.id}").get_data(as_text=True)
        assert f'<span class="status status-{status}">{status}</span>' in page
    listed = {job["id"]: job["status"] for job in cli_json("jobs", "list")["jobs"]}
    assert listed == {cancelled.id: "cancelled", discarded.id: "discarded"}


def test_a_cancelled_job_never_becomes_pending_again(db):
    """A cancel recorded while the job executes is honoured whichever way the job leaves its worker: released by
    the worker's row being deleted (a dead worker), or sent back by its own retry outcome."""
    make_jobs(db, 2, "p")
    worker_id = str(uuid.uuid4())
    query(db, "INSERT INTO exekutor_workers (id, hostname, pid) VALUES (%s, 'elsewhere', 1)", (worker_id,))
    query(db, "UPDATE exekutor_jobs SET status = 'e', worker_id = %s, attempts = 1, started_at = now()", (worker_id,))
    released, retried = ids_with(db, "e")
    result = operations.cancel(db, [released, retried])
    assert sorted(result.interrupting) == sorted([released, retried]) and not result.cancelled
    query(db, "UPDATE exekutor_jobs SET status = 'p', worker_id = NULL WHERE id = %s", (retried,))  # a retry outcome
    query(db, "DELETE FROM exekutor_workers WHERE id = %s", (worker_id,))  # the release trigger
    assert ids_with(db, "d") and sorted(ids_with(db, "d")) == sorted([released, retried])
    for job_id in (released, retried):
        (error,) = exekutor.JobRequest(job_id).errors()
        assert error["type"] == "exekutor.errors.JobCancelled"


def test_cancel_by_filter_tells_each_worker_about_its_own_jobs(db, database_url):
    workers = [str(uuid.uuid4()) for _ in range(2)]
    for worker_id in workers:
        query(db, "INSERT INTO exekutor_workers (id, hostname, pid) VALUES (%s, 'h', 1)", (worker_id,))
    make_jobs(db, 250, "p", queue="mail")
    make_jobs(db, 3, "p", queue="default")
    query(db, "UPDATE exekutor_jobs SET status = 'e', attempts = 1, worker_id = (%s::uuid[])[1 + (random() < 0.5)::int]"
              " WHERE queue = 'mail'", (workers,))
    listener = psycopg2.connect(database_url)
    listener.autocommit = True
    try:
        query(listener, 'LISTEN "exekutor::job_cancelled"')
        result = run_cli("jobs", "cancel", "--status", "executing", "--queue", "mail", "--yes")
        assert result.returncode == 0 and "interrupting 250" in result.stdout, result.stderr
        told = {}
        wait_for(lambda: listener.poll() or len(listener.notifies) >= 3, 10, message="the notifications")
        for notification in listener.notifies:
            message = json.loads(notification.payload)
            told.setdefault(message["w"], []).extend(message["j"])
            assert len(notification.payload) < 8000
        owners = dict(query(db, "SELECT id::text, worker_id::text FROM exekutor_jobs WHERE queue = 'mail'"))
        assert sum(len(ids) for ids in told.values()) == 250
        assert all(owners[job_id] == worker_id for worker_id, ids in told.items() for job_id in ids)
    finally:
        listener.close()
    assert len(ids_with(db, "p")) == 3  # the other queue's jobs were not touched


def test_operator_actions_are_counted(db):
    before = dict(query(db, "SELECT action, jobs FROM exekutor_operator_actions"))
    make_jobs(db, 4, "f")
    operations.retry(db, job_filter=operations.JobFilter(status="failed"))
    operations.cancel(db, job_filter=operations.JobFilter(status="pending"))
    after = dict(query(db, "SELECT action, jobs FROM exekutor_operator_actions"))
    assert after["retry"] - before["retry"] == 4 and after["cancel"] - before["cancel"] == 4


def test_info_shows_failures_per_queue_and_the_newest(db):
    make_jobs(db, 3, "f", queue="mail")
    make_jobs(db, 2, "d", queue="reports")
    query(db, "UPDATE exekutor_jobs SET finished_at = now() - interval '2 days' WHERE queue = 'reports'")
    result = run_cli("info")
    assert result.returncode == 0, result.stderr
    assert "Failures in the last 24h: 3 failed, 0 discarded, 0 cancelled" in result.stdout
    assert "RuntimeError: boom" in result.stdout and "reports" not in result.stdout
    data = json.loads(run_cli("info", "--json").stdout)
    assert data["totals"]["failed"] == 3 and len(data["failures"]["newest"]) == 3
    week = run_cli("info", "--since", "7d")
    assert "Failures in the last 7d: 3 failed, 2 discarded, 0 cancelled" in week.stdout and "reports" in week.stdout
    for bad in ("1e300", "-1", "soon"):
        result = run_cli("info", "--since", bad)
        assert result.returncode == 2 and result.stderr.count("\n") == 1, (bad, result.stderr)


_TEXT = st.text(st.characters(codec="utf-8", exclude_categories=()), max_size=80) | st.sampled_from(
    ["", "\x00", "a\x00b", "\udcff", "%(queue)s", "'; DROP TABLE exekutor_jobs; --", "é" * 64])
_CURSOR_VALUES = st.one_of(st.integers(), st.text(max_size=40), st.none(), st.booleans(), st.floats(),
                           st.sampled_from(["0001-01-01T00:00:00", "9999-12-31T23:59:59+14:00", str(uuid.uuid4())]))


@given(status=st.sampled_from(operations.STATUSES), queue=st.none() | _TEXT, job=st.none() | _TEXT)
def test_any_filter_text_is_a_clean_error_or_a_page(database_url, status, queue, job):
    with psycopg2.connect(database_url) as conn:
        conn.autocommit = True
        try:
            job_filter = operations.JobFilter(status=status, queue=queue, job=job)
        except operations.OperationError:
            return
        operations.list_jobs(conn, job_filter)
        operations.count_jobs(conn, job_filter, "retry")


@given(status=st.sampled_from(operations.STATUSES), values=st.lists(_CURSOR_VALUES, min_size=1, max_size=4))
def test_any_forged_cursor_is_a_clean_error_or_a_page(database_url, status, values):
    """A cursor is user input too: one built from any JSON values is refused in one line or continues a page."""
    forged = base64.urlsafe_b64encode(json.dumps([status, *values]).encode()).decode()
    with psycopg2.connect(database_url) as conn:
        conn.autocommit = True
        try:
            operations.list_jobs(conn, operations.JobFilter(status=status), after=forged)
        except operations.OperationError:
            pass
