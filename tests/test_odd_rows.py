"""Every listing tolerates any row the database can hold: error records that are not objects (a JSON string, a
number, an array, null) or objects without type and message, payloads that are null or a string, options that are
an array. `jobs list`, `jobs show`, `info` (tables and --json), the dashboard's pages and `JobRequest.errors()` all
answer without a traceback.

Rows are made with SQL, as a hand-made fix or another client could leave them. The property test runs the CLI in
process (click's runner) to try many shapes quickly; one test runs the real CLI on a fixed set of odd rows.
"""
import json
import uuid

import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from psycopg2.extras import Json

import exekutor
from tests.conftest import query
from tests.test_cli import run_cli

flask = pytest.importorskip("flask")

pytestmark = pytest.mark.timeout(300)

# What jsonb holds: no NUL in text, no lone surrogates, no NaN or infinity, integers within a numeric's range.
_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20)
_SCALARS = st.none() | st.booleans() | st.integers(-10**20, 10**20) | st.floats(allow_nan=False,
                                                                                 allow_infinity=False) | _TEXT
JSON_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=8)
ERRORS = JSON_VALUES | st.fixed_dictionaries({}, optional={"type": JSON_VALUES, "message": JSON_VALUES,
                                                           "traceback": JSON_VALUES})
PAYLOADS = JSON_VALUES | st.fixed_dictionaries({}, optional={"job": JSON_VALUES, "args": JSON_VALUES,
                                                             "kwargs": JSON_VALUES})
JOBS = st.fixed_dictionaries({"status": st.sampled_from("pefcd"), "cancelled": st.booleans(), "payload": PAYLOADS,
                              "options": st.none() | JSON_VALUES, "errors": st.lists(ERRORS, max_size=3)})

# The shapes the issue names, for the real CLI.
FIXED_ERRORS = ["boom", 42, [1, "two"], None, {}, {"type": 7, "message": ["x"]}, {"traceback": "only"}, True]
FIXED_JOBS = [{"status": "f", "cancelled": False, "payload": None, "options": [1, 2], "errors": FIXED_ERRORS},
              {"status": "d", "cancelled": True, "payload": "just a string", "options": "text", "errors": ["x"]},
              {"status": "d", "cancelled": False, "payload": {"job": 5, "args": "no list"}, "options": None,
               "errors": [None]},
              {"status": "p", "cancelled": False, "payload": [1], "options": 3, "errors": [{"message": None}]}]


def insert_jobs(conn, jobs):
    """The jobs as rows (finished ones just now), each with its error records; their ids."""
    ids = []
    for job in jobs:
        job_id = str(uuid.uuid4())
        finished = job["status"] in "cfd"
        query(conn, "INSERT INTO exekutor_jobs (id, queue, payload, options, status, attempts, started_at, "
                    "finished_at, cancel_requested_at) VALUES (%s, 'odd', %s, %s, %s, 1, CASE WHEN %s THEN now() END,"
                    " CASE WHEN %s THEN now() END, CASE WHEN %s THEN now() END)",
              (job_id, Json(job["payload"]), None if job["options"] is None else Json(job["options"]),
               job["status"], job["status"] != "p", finished, job["cancelled"] and job["status"] in "dpe"))
        for attempt, error in enumerate(job["errors"], 1):
            query(conn, "INSERT INTO exekutor_job_errors (job_id, attempt, error) VALUES (%s, %s, %s)",
                  (job_id, attempt, Json(error)))
        ids.append(job_id)
    return ids


def commands(ids):
    listings = [["jobs", "list"], ["info"], *(["jobs", "list", "--status", status] for status in
                                            ("failed", "discarded", "cancelled", "pending"))]
    shows = [["jobs", "show", job_id] for job_id in ids]
    return [*listings, *([*command, "--json"] for command in listings), *shows, *([*s, "--json"] for s in shows)]


def dashboard_pages(ids):
    return ["/", "/queues/odd", "/jobs", "/jobs?status=failed", "/jobs?status=cancelled", "/workers",
            *(f"/jobs/{job_id}" for job_id in ids)]


@pytest.fixture
def dashboard(database_url):
    from exekutor import config
    from exekutor.dashboard import create_app

    config.configure(dashboard_show_arguments=True)  # the arguments are shown too (reset after each test)
    app = create_app()
    app.config["TESTING"] = True
    return app.test_client()


def check_dashboard(client, ids):
    for path in dashboard_pages(ids):
        response = client.get(path)
        assert response.status_code == 200, (path, response.get_data(as_text=True)[-3000:])


def check_requests(ids):
    for job_id in ids:
        request = exekutor.JobRequest(job_id)
        assert request.fetch()["id"] == job_id
        for record in request.errors():
            assert all(record[key] is None or isinstance(record[key], str) for key in ("type", "message",
                                                                                        "traceback"))


@given(jobs=st.lists(JOBS, min_size=1, max_size=4))
def test_any_stored_row_is_listed_without_a_traceback(db, dashboard, jobs):
    from exekutor.cli import main

    query(db, "TRUNCATE exekutor_jobs, exekutor_job_errors CASCADE")
    ids = insert_jobs(db, jobs)
    runner = CliRunner()
    for command in commands(ids):
        result = runner.invoke(main, command)
        # 1 is "nothing matched" (a listing of a status no row has); anything else raised is a traceback
        assert isinstance(result.exception, (SystemExit, type(None))) and result.exit_code in (0, 1), \
            (command, result.output, result.exc_info)
        if "--json" in command and result.exit_code == 0:
            json.loads(result.stdout)
    check_dashboard(dashboard, ids)
    check_requests(ids)


def test_the_real_cli_lists_the_odd_rows_the_issue_names(db, dashboard):
    ids = insert_jobs(db, FIXED_JOBS)
    for command in commands(ids):
        result = run_cli(*command)
        assert result.returncode in (0, 1) and "Traceback" not in result.stderr, (command, result.stderr)
        if "--json" in command and result.returncode == 0:
            json.loads(result.stdout)
    shown = json.loads(run_cli("jobs", "show", ids[0], "--json").stdout)
    assert [error["message"] for error in shown["errors"]][:4] == ["boom", "42", '[1, "two"]', "null"]
    check_dashboard(dashboard, ids)
    check_requests(ids)
