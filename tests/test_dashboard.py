"""The dashboard through Flask's test client: every page, escaping, arguments, CSRF, actions, headers, odd query
parameters."""
import base64
import re
import unicodedata
import urllib.parse
import uuid

import psycopg2.extensions
import psycopg2.extras
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from exekutor import config
from tests.conftest import query, scalar

flask = pytest.importorskip("flask")

pytestmark = pytest.mark.timeout(60)

PREFIX = "/admin/jobs"
HOSTILE = ['<script>alert(1)</script>', '<img src=x onerror=alert(1)>', '<a href="javascript:alert(1)">x</a>']
CSP = ("default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'")


@pytest.fixture
def app(database_url):
    return guarded_app()


def guarded_app():
    """A Flask app with the blueprint under PREFIX, behind a login (the header X-Test-User: admin)."""
    from exekutor.dashboard import blueprint

    app = flask.Flask(__name__)
    app.config["TESTING"] = True

    # What docs/dashboard.md shows: the application's own login guards the blueprint.
    @app.before_request
    def login_required():
        if flask.request.blueprint == "exekutor_dashboard" and flask.request.headers.get("X-Test-User") != "admin":
            flask.abort(401)

    app.register_blueprint(blueprint, url_prefix=PREFIX)
    return app


def logged_in(app):
    client = app.test_client()
    client.environ_base["HTTP_X_TEST_USER"] = "admin"
    return client


@pytest.fixture
def client(app):
    return logged_in(app)


def get(client, path, status=200):
    response = client.get(PREFIX + path)
    assert response.status_code == status, response.get_data(as_text=True)[:2000]
    return response, response.get_data(as_text=True)


def make_job(conn, status="f", queue="mail", job="myapp.jobs:send_receipt", message="SMTP refused",
             traceback="Traceback (most recent call last):\n  File \"jobs.py\", line 8\nRuntimeError", args=(1042,)):
    job_id = str(uuid.uuid4())
    finished = status in ("c", "f", "d")
    query(conn, "INSERT INTO exekutor_jobs (id, queue, payload, status, attempts, started_at, finished_at, runtime) "
                "VALUES (%s, %s, jsonb_build_object('job', %s::text, 'args', %s::jsonb, 'kwargs', '{}'::jsonb), %s, "
                "%s, CASE WHEN %s THEN now() END, CASE WHEN %s THEN now() END, CASE WHEN %s THEN 0.5 END)",
          (job_id, queue, job, psycopg2.extras.Json(list(args)), status, 0 if status == "p" else 1,
           status != "p", finished, finished))
    if status in ("f", "d"):
        query(conn, "INSERT INTO exekutor_job_errors (job_id, attempt, error) VALUES (%s, 1, "
                    "jsonb_build_object('type', 'builtins.RuntimeError', 'message', %s::text, 'traceback', %s::text))",
              (job_id, message, traceback))
    return job_id


def status_of(conn, job_id):
    return scalar(conn, "SELECT status FROM exekutor_jobs WHERE id = %s", (job_id,))


def csrf_token(html):
    return re.search(r'name="csrf_token" value="([0-9a-f]+)"', html).group(1)


# --- pages --------------------------------------------------------------------------------------------------------

def test_every_page_answers_with_the_security_headers(client, db):
    failed = make_job(db)
    make_job(db, status="p", queue="default")
    make_job(db, status="c", queue="default")
    query(db, "INSERT INTO exekutor_workers (hostname, pid, identifier, status, queues, max_threads, min_threads) "
              "VALUES ('web-1', 4242, 'mailer', 'r', ARRAY['mail'], 50, 1)")
    pages = ["/", "/queues/mail", "/workers", "/jobs", "/jobs?status=failed&queue=mail", f"/jobs/{failed}",
             "/schedules"]
    for path in pages:
        response, html = get(client, path)
        assert response.headers["Content-Security-Policy"].startswith(CSP)
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.headers["Content-Type"].startswith("text/html")
        assert "<html" in html and "style=" not in html and "<script>" not in html and "onclick" not in html
    for name, kind in (("dashboard.css", "text/css"), ("dashboard.js", "text/javascript")):
        response, _ = get(client, f"/static/{name}")
        assert response.headers["Content-Type"].startswith(kind)
        assert response.headers["X-Content-Type-Options"] == "nosniff"


def test_overview_counts_each_queue_and_charts_the_last_hour(client, db):
    for status, count in (("p", 3), ("f", 2), ("d", 1), ("c", 4)):
        for _ in range(count):
            make_job(db, status=status)
    query(db, "UPDATE exekutor_jobs SET scheduled_at = now() + interval '1 hour' "
              "WHERE id = (SELECT id FROM exekutor_jobs WHERE status = 'p' LIMIT 1)")
    _, html = get(client, "/")
    row = re.search(r"<tr>\s*<td><a href=\"/admin/jobs/queues/mail\">mail</a></td>(.*?)</tr>", html, re.S).group(1)
    assert re.findall(r'<td class="num[^"]*">(?:<a[^>]*>)?([^<]+)', row)[:7] == ["2", "0", "1", "0", "2", "1", "0s"]
    assert row.count('<rect class="bar"') == 1  # all 7 finished jobs in the current minute
    assert "<title>7 finished, 3 failed (1 min ago)</title>" in row and row.count('<rect class="bar failed"') == 1


def test_a_big_backlog_shows_estimated_counts(client, db):
    from exekutor.queue_stats import EXACT_COUNT_LIMIT

    query(db, "INSERT INTO exekutor_jobs (queue, payload) SELECT 'mail', '{\"job\": \"tests.noop\"}' "
              "FROM generate_series(1, %s)", (2 * EXACT_COUNT_LIMIT,))
    query(db, "ANALYZE exekutor_jobs")
    _, html = get(client, "/")
    row = re.search(r"<tr>\s*<td><a href=\"/admin/jobs/queues/mail\">mail</a></td>(.*?)</tr>", html, re.S).group(1)
    pending, scheduled = re.findall(r'<td class="num[^"]*">(?:<a[^>]*>)?([^<]+)', row)[:2]
    assert pending.startswith("~") and int(pending[1:]) > EXACT_COUNT_LIMIT and scheduled == "0", row
    _, html = get(client, "/queues/mail")
    assert re.search(r'<span class="value">~\d+</span><span class="label">pending \(due\)', html), html


def test_workers_page_shows_host_pid_identifier_queues_and_greenlets(client, db):
    query(db, "INSERT INTO exekutor_workers (hostname, pid, identifier, status, queues, max_threads, min_threads, "
              "last_heartbeat_at) VALUES ('web-1', 4242, 'mailer', 'r', ARRAY['mail'], 50, 1, "
              "now() - interval '12 seconds')")
    _, html = get(client, "/workers")
    for text in ("web-1", "4242", "mailer", ">mail</a>", ">50<", "12s ago"):
        assert text in html


QUEUE_LINK = re.compile(r'<tr>\s*<td><a href="/admin/jobs/queues/([^"]+)">')


def test_the_overview_lists_the_busiest_queues_and_pages_through_the_rest(client, db):
    from exekutor.dashboard.data import PAGE_QUEUES

    # PAGE_QUEUES + 20 queues of one pending job each (not overdue), one queue overdue, one busy and failing.
    query(db, "INSERT INTO exekutor_jobs (queue, payload, scheduled_at) SELECT 'q-' || lpad(i::text, 3, '0'), "
              "'{\"job\": \"tests.noop\"}', now() + interval '1 hour' FROM generate_series(1, %s) AS i",
          (PAGE_QUEUES + 20,))
    query(db, "INSERT INTO exekutor_jobs (queue, payload, scheduled_at) "
              "VALUES ('zz-stuck', '{\"job\": \"tests.noop\"}', now() - interval '1 hour')")
    for status in ("c", "c", "f"):
        make_job(db, status=status, queue="zz-busy")
    _, html = get(client, "/")
    shown = QUEUE_LINK.findall(html)
    assert len(shown) == PAGE_QUEUES and shown[:2] == ["zz-stuck", "zz-busy"], shown[:5]
    assert 'id="all-queues" href="/admin/jobs/queues"' in html
    assert '<span class="value">1</span><span class="label">pending (due)' in html  # totals count every queue
    assert f'<span class="value">{PAGE_QUEUES + 20}</span><span class="label">scheduled' in html
    listed, path = [], "/queues"
    while path:
        _, page = get(client, path)
        names = QUEUE_LINK.findall(page)
        assert 0 < len(names) <= PAGE_QUEUES
        listed += names
        following = re.search(r'id="next-page" href="/admin/jobs([^"]+)"', page)
        path = following and following.group(1).replace("&amp;", "&")
    assert listed == sorted({f"q-{i:03}" for i in range(1, PAGE_QUEUES + 21)} | {"zz-stuck", "zz-busy"})


def test_the_workers_page_lists_a_page_of_the_newest_workers(client, db):
    from exekutor.dashboard.data import PAGE_WORKERS

    query(db, "INSERT INTO exekutor_workers (hostname, pid, identifier, status, queues, max_threads, min_threads, "
              "started_at) SELECT 'host-' || i, i, 'worker-' || i, 'r', NULL, 10, 1, now() - i * interval '1 minute' "
              "FROM generate_series(1, %s) AS i", (PAGE_WORKERS + 5,))
    _, html = get(client, "/workers")
    assert html.count("<td>host-") == PAGE_WORKERS and "<td>host-1</td>" in html
    assert f"{PAGE_WORKERS + 5} worker(s)" in html
    _, html = get(client, "/workers?page=1")
    assert html.count("<td>host-") == 5 and f"<td>host-{PAGE_WORKERS + 5}</td>" in html
    _, html = get(client, "/workers?page=x%C2%B2")
    assert html.count("<td>host-") == PAGE_WORKERS


def test_job_page_shows_errors_with_tracebacks_and_hides_arguments(client, db):
    job_id = make_job(db, args=("secret-token-123",))
    _, html = get(client, f"/jobs/{job_id}")
    assert "SMTP refused" in html and "File &#34;jobs.py&#34;, line 8" in html
    assert "secret-token-123" not in html and "dashboard_show_arguments is off" in html
    config.configure(dashboard_show_arguments=True)
    _, html = get(client, f"/jobs/{job_id}")
    assert "secret-token-123" in html


def test_unknown_or_malformed_ids_and_bad_filters_are_clean_errors(client, db):
    get(client, f"/jobs/{uuid.uuid4()}", status=404)
    get(client, "/jobs/not-a-uuid", status=404)
    _, html = get(client, "/jobs?status=<b>exploded</b>", status=400)
    assert "unknown status" in html and "<b>exploded" not in html
    get(client, "/jobs?status=failed&after=garbage", status=400)


def test_jobs_are_filtered_and_paginated_with_cursors(client, db):
    ids = {make_job(db, queue="mail") for _ in range(120)}
    make_job(db, queue="other")
    make_job(db, queue="mail", job="myapp.jobs:other")
    seen, path = [], "/jobs?status=failed&queue=mail&job=myapp.jobs:send_receipt"
    while path:
        _, html = get(client, path)
        seen += re.findall(r'<div class="id">([0-9a-f-]{36})</div>', html)
        following = re.search(r'id="next-page" href="/admin/jobs([^"]+)"', html)
        path = following.group(1).replace("&amp;", "&") if following else None
    assert len(seen) == 120 and set(seen) == ids


def test_pages_refresh_except_finished_jobs_and_the_overview_lists_failed_and_discarded(client, db):
    # docs/dashboard.md: pages refresh every 5 s but a finished job's page; the overview's newest failures are the
    # five newest failed or discarded jobs (cancelled ones included).
    failed, discarded = make_job(db, status="f"), make_job(db, status="d", queue="default")
    cancelled = make_job(db, status="d")
    query(db, "UPDATE exekutor_jobs SET cancel_requested_at = now() WHERE id = %s", (cancelled,))
    pending, completed = make_job(db, status="p"), make_job(db, status="c")
    _, html = get(client, "/")
    newest = html.split("Newest failures", 1)[1]
    assert all(f"/jobs/{job_id}" in newest for job_id in (failed, discarded, cancelled))
    assert f"/jobs/{completed}" not in newest and f"/jobs/{pending}" not in newest
    for path in ("/", "/queues/mail", "/workers", "/jobs", "/schedules", f"/jobs/{pending}"):
        assert 'data-refresh="5"' in get(client, path)[1], path
    for job_id in (failed, discarded, completed):
        assert "data-refresh" not in get(client, f"/jobs/{job_id}")[1]


def test_fragment_is_the_content_without_the_layout(client, db):
    make_job(db)
    _, html = get(client, "/?fragment=1")
    assert "<html" not in html and "Queues" in html and "<script" not in html


def test_no_database_url_in_any_page(client, db, database_url):
    job_id = make_job(db)
    dbname = psycopg2.extensions.parse_dsn(database_url)["dbname"]
    for path in ("/", "/workers", "/jobs", f"/jobs/{job_id}", "/queues/mail", "/schedules"):
        _, html = get(client, path)
        assert database_url not in html and dbname not in html


@pytest.fixture
def other_database(database_url):
    """Pages read from the config.database_url the test sets, on fresh connections; the test database's again
    afterwards."""
    from exekutor.db.pool import reset_default_pool

    reset_default_pool()
    yield
    reset_default_pool()


def test_a_database_without_exekutors_tables_is_named_on_the_page_and_logged(client, db, other_database, caplog):
    empty = f"exekutor_empty_{uuid.uuid4().hex[:8]}"
    query(db, f'CREATE DATABASE "{empty}"')
    try:
        config.database_url = psycopg2.extensions.make_dsn(db.dsn, dbname=empty)
        _, html = get(client, "/", status=503)
        assert "tables are missing" in html and "migrate" in html and "unreachable" not in html
        assert empty not in html
        assert any(record.name == "exekutor.dashboard" and record.levelname == "ERROR"
                   and "tables are missing" in record.getMessage() for record in caplog.records)
    finally:
        query(db, f'DROP DATABASE "{empty}" WITH (FORCE)')


def test_an_unreachable_database_is_named_on_the_page_and_logged(client, other_database, caplog):
    import socket

    with socket.socket() as closed:  # a loopback port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    config.database_url = f"postgresql://app:hunter2@127.0.0.1:{port}/jobs"
    _, html = get(client, "/", status=503)
    assert "database is unreachable" in html and "tables" not in html
    assert "hunter2" not in html and str(port) not in html
    records = [record.getMessage() for record in caplog.records if record.name == "exekutor.dashboard"]
    assert any("unreachable" in message and str(port) in message for message in records), records
    assert not any("hunter2" in message for message in records)


def test_the_blueprint_answers_only_the_allowed_hosts_once_they_are_set(client, db):
    make_job(db, queue="payroll-queue")
    assert client.get(PREFIX + "/", headers={"Host": "rebind.attacker.test"}).status_code == 200  # the app's call
    config.dashboard_allowed_hosts = ["jobs.example.com"]
    for host in ("jobs.example.com", "JOBS.example.com:8443"):
        assert client.get(PREFIX + "/", headers={"Host": host}).status_code == 200
    for path in ("/", "/jobs", "/static/dashboard.js"):
        response = client.get(PREFIX + path, headers={"Host": "rebind.attacker.test"})
        assert response.status_code == 400 and b"payroll-queue" not in response.data
        assert response.headers["Content-Security-Policy"].startswith(CSP)


def test_the_applications_login_guards_every_page(app):
    anonymous = app.test_client()
    for path in ("/", "/jobs", "/workers", "/actions/retry?status=failed"):
        assert anonymous.get(PREFIX + path).status_code == 401


# --- escaping -------------------------------------------------------------------------------------------------------

def test_hostile_names_messages_and_tracebacks_are_escaped(client, db):
    hostile = " ".join(HOSTILE)
    job_id = make_job(db, queue="<script>alert(1)</script>", job=hostile, message=hostile, traceback=hostile)
    query(db, "INSERT INTO exekutor_workers (hostname, pid, identifier, status, queues) "
              "VALUES (%s, 1, %s, 'r', ARRAY[%s])", (hostile, hostile, "<img src=x onerror=alert(1)>"))
    pages = ["/", "/workers", "/jobs", "/jobs?status=failed", f"/jobs/{job_id}",
             "/queues/%3Cscript%3Ealert(1)%3C%2Fscript%3E"]
    for path in pages:
        _, html = get(client, path)
        for text in HOSTILE:
            assert text not in html, (path, text)
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html, path
        assert 'href="javascript:' not in html


# Bidirectional marks, overrides and isolates, Arabic letter mark, zero-width characters, word joiner, BOM.
INVISIBLE = "\u200e\u200f\u061c\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200b\u200c\u200d\u2060\ufeff"


def hidden_characters(text):
    """Controls (but the markup's newlines and tabs), format characters and separators left raw in `text`."""
    return [char for char in text if char not in "\n\t" and unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp")]


def make_invisible_job(conn):
    """A failed job whose every field shown carries every invisible character (`gnp.exe` that reads `exe.png`)."""
    text = "gnp\u202e.exe " + INVISIBLE
    job_id = make_job(conn, queue="q" + INVISIBLE[:20], job=text, message=text,
                      traceback=f"Traceback:\n\tFile {text}\n\x1b[31mError\u2028FORGED", args=[text])
    query(conn, "UPDATE exekutor_jobs SET options = jsonb_build_object('tag', %s::text), "
                "payload = payload || jsonb_build_object('kwargs', jsonb_build_object(%s::text, %s::text)) "
                "WHERE id = %s", (text, text, text, job_id))
    query(conn, "UPDATE exekutor_job_errors SET error = error || jsonb_build_object('type', %s::text) "
                "WHERE job_id = %s", ("gnp\u202e.exeError" + INVISIBLE, job_id))
    return job_id


def test_invisible_characters_are_escaped_on_every_page(client, db):
    from exekutor.schedules import make_schedule

    config.configure(dashboard_show_arguments=True)
    job_id = make_invisible_job(db)
    schedule = make_schedule("gnp\u202e.exe" + INVISIBLE, "tests.noop" + INVISIBLE, every=60)
    query(db, "INSERT INTO exekutor_schedules (name, definition) VALUES (%s, %s)",
          (schedule.name, psycopg2.extras.Json(schedule.definition())))
    try:
        queue = "/queues/" + urllib.parse.quote("q" + INVISIBLE[:20])
        for path in ("/", queue, "/jobs", "/jobs?status=failed", f"/jobs/{job_id}", "/schedules"):
            _, html = get(client, path)
            assert not hidden_characters(html), (path, hidden_characters(html))
            assert "gnp\\u202e.exe" in html, path
        _, html = get(client, f"/jobs/{job_id}")
        for escape in ("\\u200e", "\\u061c", "\\u2069", "\\u200b", "\\u2060", "\\ufeff", "\\x1b[31m", "\\u2028"):
            assert escape in html, escape
        assert "Traceback:\n\tFile gnp" in html  # the traceback's lines and indentation stay
    finally:
        query(db, "DELETE FROM exekutor_schedules")


# --- query parameters -------------------------------------------------------------------------------------------

# Digits that are not ASCII, a number too long for int(), controls, a bad percent-escape, huge and nested input.
ODD_VALUES = ["\u00b2", "\u0663", "9" * 5000, "-1", " 1", "1e3", "", "\x00", "\u202e", "x" * 10000, "%ff", "'\"",
              base64.urlsafe_b64encode(b"[" * 100000).decode(), base64.urlsafe_b64encode(b'["failed", 1e999]').decode()]


@pytest.mark.parametrize("value", ODD_VALUES, ids=range(len(ODD_VALUES)))
def test_odd_query_parameters_are_a_400_or_ignored_never_a_500(app, db, value):
    config.configure(dashboard_allow_actions=True)
    job_id = make_job(db)
    pages = ["/", "/queues/mail", "/workers", "/jobs", f"/jobs/{job_id}", "/schedules"]
    asked = [(page, {"action": "retry", "done": value}) for page in pages]
    asked += [(page, {name: value}) for page in pages for name in ("action", "fragment")]
    asked += [("/jobs", {"status": "failed", name: value}) for name in ("status", "queue", "job", "after")]
    asked += [(f"/actions/{action}", {"status": "failed", name: value})
              for action in ("retry", "cancel") for name in ("status", "queue", "job", "id")]
    asked += [(f"/{page}/{urllib.parse.quote(value[:2000], safe='')}", {}) for page in ("queues", "jobs")]
    for path, params in asked:
        assert_not_a_500(app, path, params)


@given(st.text(max_size=30), st.sampled_from(["done", "after", "queue", "job", "status", "id"]))
@example("\u00b2", "done")  # str.isdigit() said yes, int() said no
def test_any_text_in_a_query_parameter_is_never_a_500(app, db, value, name):
    config.configure(dashboard_allow_actions=True)
    for path in ("/workers", "/jobs", "/actions/retry"):
        assert_not_a_500(app, path, {"action": "retry", "status": "failed", name: value})


def assert_not_a_500(app, path, params):
    app.config["TESTING"] = False  # an exception is the 500 a browser would get, not raised into the test
    response = logged_in(app).get(PREFIX + path, query_string=params)
    assert response.status_code in (200, 400, 403, 404), (path, {k: v[:40] for k, v in params.items()},
                                                           response.status_code)


# --- actions --------------------------------------------------------------------------------------------------------

def test_read_only_by_default_no_buttons_and_403(client, db):
    job_id = make_job(db)
    pending = make_job(db, status="p")
    for path in (f"/jobs/{job_id}", "/jobs?status=failed", f"/jobs/{pending}"):
        _, html = get(client, path)
        assert "/actions/" not in html and "<form method=\"post\"" not in html
    get(client, f"/actions/retry?id={job_id}", status=403)
    response = client.post(PREFIX + "/actions/retry", data={"id": job_id, "csrf_token": "x"})
    assert response.status_code == 403
    assert client.post(PREFIX + "/actions/cancel", data={"id": pending}).status_code == 403
    assert status_of(db, job_id) == "f" and status_of(db, pending) == "p"


def test_retry_one_job_after_confirmation(client, db):
    config.configure(dashboard_allow_actions=True)
    job_id = make_job(db)
    _, html = get(client, f"/jobs/{job_id}")
    assert f"/actions/retry?id={job_id}" in html and "/actions/cancel" not in html
    _, html = get(client, f"/actions/retry?id={job_id}")
    assert "Retry 1 job(s)?" in html and status_of(db, job_id) == "f"  # the GET only asks
    response = client.post(PREFIX + "/actions/retry", data={"id": job_id, "csrf_token": csrf_token(html)})
    assert response.status_code == 303
    assert response.headers["Location"].endswith(f"/jobs/{job_id}?action=retry&done=1")
    assert status_of(db, job_id) == "p"
    _, html = get(client, f"/jobs/{job_id}?action=retry&done=1")
    assert "Retried 1 job(s)." in html


def test_cancel_every_matching_job_after_confirmation(client, db):
    config.configure(dashboard_allow_actions=True)
    pending = [make_job(db, status="p") for _ in range(3)]
    other = make_job(db, status="p", queue="other")
    _, html = get(client, "/jobs?status=pending&queue=mail")
    assert 'id="bulk-cancel"' in html and 'id="bulk-retry"' not in html
    _, html = get(client, "/actions/cancel?status=pending&queue=mail")
    assert "Cancel 3 job(s)?" in html
    response = client.post(PREFIX + "/actions/cancel", data={"status": "pending", "queue": "mail",
                                                               "csrf_token": csrf_token(html)})
    assert response.status_code == 303
    assert [status_of(db, job_id) for job_id in pending] == ["d", "d", "d"] and status_of(db, other) == "p"


def test_posts_without_a_valid_token_change_nothing(app, db):
    config.configure(dashboard_allow_actions=True)
    job_id = make_job(db)
    counted = scalar(db, "SELECT jobs FROM exekutor_operator_actions WHERE action = 'retry'")
    client = logged_in(app)
    _, html = get(client, f"/actions/retry?id={job_id}")
    token = csrf_token(html)
    attempts = [
        {"id": job_id},  # no token
        {"id": job_id, "csrf_token": "0" * 64},  # a wrong one
        {"id": job_id, "csrf_token": token[:-1] + ("0" if token[-1] != "0" else "1")},
    ]
    for form in attempts:
        assert client.post(PREFIX + "/actions/retry", data=form).status_code == 403
    # The right token from another site's page, and a token without its cookie (another browser).
    cross = client.post(PREFIX + "/actions/retry", data={"id": job_id, "csrf_token": token},
                        headers={"Origin": "https://evil.example"})
    assert cross.status_code == 403
    stranger = logged_in(app)
    assert stranger.post(PREFIX + "/actions/retry", data={"id": job_id, "csrf_token": token}).status_code == 403
    assert status_of(db, job_id) == "f"
    assert scalar(db, "SELECT jobs FROM exekutor_operator_actions WHERE action = 'retry'") == counted


def test_the_csrf_cookie_is_strict_httponly_and_scoped(client, db):
    config.configure(dashboard_allow_actions=True)
    job_id = make_job(db)
    response, _ = get(client, f"/actions/retry?id={job_id}")
    cookie = response.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie and f"Path={PREFIX}/" in cookie


def test_an_action_by_filter_needs_a_status_it_applies_to(client, db):
    config.configure(dashboard_allow_actions=True)
    get(client, "/actions/retry?status=pending", status=400)
    get(client, "/actions/cancel?status=failed", status=400)
    get(client, "/actions/retry", status=400)
    get(client, "/actions/explode?status=failed", status=404)


# --- standalone app and command ---------------------------------------------------------------------------------

def test_standalone_app_serves_the_blueprint_at_the_root(database_url, db):
    from exekutor.dashboard import create_app

    client = create_app().test_client()
    assert client.get("/").status_code == 200
    assert client.get("/static/dashboard.js").status_code == 200


def test_the_command_refuses_bad_ports_in_one_line():
    from tests.test_cli import run_cli

    result = run_cli("dashboard", "--port", "70000")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1


def test_schedules_page_lists_the_schedules_with_their_runs_escaped(client, db):
    from exekutor.schedules import make_schedule

    hostile = make_schedule("<script>alert(1)</script>", "tests.noop", every=60)
    nightly = make_schedule("nightly", "tests.noop", cron="0 3 * * *", timezone="Europe/Amsterdam")
    try:
        for schedule in (hostile, nightly):
            query(db, "INSERT INTO exekutor_schedules (name, definition, last_tick, last_enqueued_at) "
                      "VALUES (%s, %s, now() - interval '1 minute', now() - interval '1 minute')",
                  (schedule.name, psycopg2.extras.Json(schedule.definition())))
        _, html = get(client, "/schedules")
        assert "<script>alert(1)</script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
        assert "cron 0 3 * * * (Europe/Amsterdam)" in html and "every 1m" in html
    finally:
        query(db, "DELETE FROM exekutor_schedules")


# --- flow control: paused queues, limits, held-back jobs (DESIGN §13) -------------------------------------------

ODD_QUEUE = 'we"ird %s q ü<b>x</b>'  # a quote, %, spaces, non-ASCII, markup: one queue name


def hold_back(conn, job_id, key):
    query(conn, "UPDATE exekutor_jobs SET blocked_on = %s WHERE id = %s", (key, job_id))


def queue_path(name):
    return "/queues/" + urllib.parse.quote(name, safe="")


def pause_form(html):
    """{action: the hex name its form posts} of every Pause/Resume form on the page."""
    return dict(re.findall(r'action="[^"]*/queue-actions/(pause|resume)" class="queue-action">\s*'
                           r'<input type="hidden" name="csrf_token" value="[0-9a-f]+">\s*'
                           r'<input type="hidden" name="queue" value="([0-9a-f]+)">', html))


def test_a_paused_queue_its_limits_and_held_back_jobs_are_shown_without_buttons_when_read_only(client, db):
    from exekutor import pause_queue, queue_control

    job_id = make_job(db, status="p", queue=ODD_QUEUE)
    limited = [make_job(db, status="p", queue="imports", job="flow.limited") for _ in range(3)]
    hold_back(db, job_id, f"paused queue {ODD_QUEUE}")
    for other in limited[:2]:
        hold_back(db, other, "concurrency job flow.limited:42")
    pause_queue(ODD_QUEUE)
    with db.cursor() as cursor:
        queue_control.publish_queue_limits(cursor, {"imports": {"concurrency": 5, "rate_limit": "100/m"}})
    shown = printable_html(ODD_QUEUE)
    for path in ("/", "/queues", queue_path(ODD_QUEUE), queue_path("imports")):
        _, html = get(client, path)
        assert "/queue-actions/" not in html and "<form method=\"post\"" not in html, path
    _, html = get(client, "/queues")
    odd_row = re.search(r'<tr class="paused">(.*?)</tr>', html, re.S).group(1)
    assert shown in odd_row and '<span class="status status-paused"' in odd_row
    assert re.search(r'<td class="num">1<div class="reasons">1 paused</div></td>', odd_row)
    imports = re.search(r'<tr>\s*<td><a href="[^"]*/queues/imports">(.*?)</tr>', html, re.S).group(1)
    assert "concurrency 5" in imports and "rate 100/m" in imports and "2 concurrency" in imports
    _, html = get(client, queue_path(ODD_QUEUE))
    assert 'id="paused-note"' in html and "Limits: concurrency none, rate none" in html
    _, html = get(client, f"/jobs/{job_id}")
    assert re.search(r'<dd class="waiting" id="waiting">queue ' + re.escape(shown) + ' is paused</dd>', html)
    _, html = get(client, "/jobs?status=pending&queue=imports")
    # The key comes from the job's arguments: shown only where arguments are (dashboard_show_arguments).
    assert html.count('<div class="waiting">concurrency limit of job flow.limited (for one of its keys)</div>') == 2
    assert html.count('<div class="waiting">') == 2 and "flow.limited:42" not in html  # the third waits for nothing
    config.configure(dashboard_show_arguments=True)
    _, html = get(client, "/jobs?status=pending&queue=imports")
    assert html.count('<div class="waiting">concurrency limit of job flow.limited:42</div>') == 2


def printable_html(text):
    from markupsafe import escape

    from exekutor.display import printable

    return str(escape(printable(text)))


def test_a_forged_or_read_only_pause_is_refused_and_changes_nothing(app, db):
    from exekutor import queue_states

    client = logged_in(app)
    make_job(db, status="p", queue="mail")
    name = "mail".encode().hex()
    assert client.post(PREFIX + "/queue-actions/pause", data={"queue": name}).status_code == 403  # read-only
    config.configure(dashboard_allow_actions=True)
    _, html = get(client, "/queues")
    token = csrf_token(html)
    assert pause_form(html) == {"pause": name}
    for form, headers in (({"queue": name}, {}),  # no token
                          ({"queue": name, "csrf_token": "0" * 64}, {}),
                          ({"queue": name, "csrf_token": token}, {"Origin": "https://evil.example"})):
        assert client.post(PREFIX + "/queue-actions/pause", data=form, headers=headers).status_code == 403
    assert logged_in(app).post(PREFIX + "/queue-actions/pause",  # another browser: the token without its cookie
                               data={"queue": name, "csrf_token": token}).status_code == 403
    assert client.get(PREFIX + "/queue-actions/pause").status_code == 405
    for bad in ("", "zz", "ff", "x".encode().hex() * 64):  # empty, not hex, not UTF-8, too long
        assert client.post(PREFIX + "/queue-actions/pause", data={"queue": bad, "csrf_token": token}).status_code == 400
    assert client.post(PREFIX + "/queue-actions/explode", data={"queue": name, "csrf_token": token}).status_code == 404
    assert queue_states() == []


def test_pause_and_resume_an_odd_queue_by_its_buttons(client, db):
    from exekutor import queue_states

    config.configure(dashboard_allow_actions=True)
    make_job(db, status="p", queue=ODD_QUEUE)
    _, html = get(client, queue_path(ODD_QUEUE))
    assert pause_form(html) == {"pause": ODD_QUEUE.encode().hex()}
    response = client.post(PREFIX + "/queue-actions/pause", data={"queue": ODD_QUEUE.encode().hex(),
                                                                   "csrf_token": csrf_token(html)})
    assert response.status_code == 303 and response.headers["Location"].endswith("?queue_action=paused")
    assert [(state["name"], state["paused"]) for state in queue_states()] == [(ODD_QUEUE, True)]
    html = client.get(response.headers["Location"]).get_data(as_text=True)
    assert "Paused this queue" in html and 'id="paused-note"' in html
    assert pause_form(html) == {"resume": ODD_QUEUE.encode().hex()}
    again = client.post(PREFIX + "/queue-actions/pause", data={"queue": ODD_QUEUE.encode().hex(),
                                                                "csrf_token": csrf_token(html)})
    assert again.headers["Location"].endswith("?queue_action=already-paused")
    resumed = client.post(PREFIX + "/queue-actions/resume", data={"queue": ODD_QUEUE.encode().hex(),
                                                                   "csrf_token": csrf_token(html)})
    assert resumed.headers["Location"].endswith("?queue_action=resumed")
    assert queue_states() == []
    _, html = get(client, queue_path(ODD_QUEUE) + "?queue_action=resumed")
    assert "Resumed this queue" in html and pause_form(html) == {"pause": ODD_QUEUE.encode().hex()}
    _, html = get(client, queue_path(ODD_QUEUE) + "?queue_action=<script>")
    assert 'id="notice"' not in html


def test_a_paused_queue_without_jobs_is_listed_so_that_it_can_be_resumed(client, db):
    from exekutor import pause_queue, queue_states

    config.configure(dashboard_allow_actions=True)
    name = "idle\r\n\u202e"  # a CR and LF (a form would turn either alone into CRLF) and a bidi override
    pause_queue(name)
    _, html = get(client, "/queues")
    assert pause_form(html) == {"resume": name.encode().hex()}
    response = client.post(PREFIX + "/queue-actions/resume", data={"queue": name.encode().hex(),
                                                                   "csrf_token": csrf_token(html)})
    assert response.status_code == 303 and queue_states() == []
