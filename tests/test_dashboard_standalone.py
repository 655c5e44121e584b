"""`exekutor-gevent dashboard` as a real process, over plain HTTP on loopback: the host names it answers (DNS
rebinding), its redirects and error pages, and its pooled connections after the server dropped them."""
import contextlib
import http.client
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.parse
import uuid

import psycopg2.extensions
import pytest

from tests.conftest import ROOT, query, wait_for
from tests.test_dashboard import CSP, csrf_token, make_job, status_of

pytest.importorskip("flask")
pytestmark = pytest.mark.timeout(60)

FOREIGN = "rebind.attacker.test"


class Dashboard:
    def __init__(self, base, log):
        self.base, self.log = base, log

    def output(self):
        with open(self.log, encoding="utf-8", errors="replace") as f:
            return f.read()

    def request(self, method, path, host=None, headers=(), body=None):
        """(status, headers, body text) of one request, with the Host header `host` (default: the address)."""
        address = urllib.parse.urlsplit(self.base)
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=20)
        try:
            conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
            conn.putheader("Host", host or address.netloc)
            for name, value in dict(headers).items():
                conn.putheader(name, value)
            encoded = urllib.parse.urlencode(body).encode() if body is not None else None
            if encoded is not None:
                conn.putheader("Content-Type", "application/x-www-form-urlencoded")
                conn.putheader("Content-Length", str(len(encoded)))
            conn.endheaders(encoded)
            response = conn.getresponse()
            return response.status, response.headers, response.read().decode("utf-8", "replace")
        finally:
            conn.close()


@contextlib.contextmanager
def standalone(database_url, *args):
    """`python -m exekutor dashboard --port 0 ARGS` on loopback, stopped on exit; a Dashboard."""
    log = tempfile.NamedTemporaryFile(prefix="exekutor-dashboard-", suffix=".log", delete=False)
    env = dict(os.environ, EXEKUTOR_DATABASE_URL=database_url, PYTHONUNBUFFERED="1", PYTHONPATH=ROOT)
    proc = subprocess.Popen([sys.executable, "-m", "exekutor", "dashboard", "--port", "0", *args],
                            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)

    def address():
        with open(log.name, encoding="utf-8", errors="replace") as f:
            text = f.read()
        if proc.poll() is not None:
            raise AssertionError(f"the dashboard exited with {proc.returncode}:\n{text}")
        found = re.search(r"on (http://127\.0\.0\.1:\d+)/", text)
        return found and found.group(1)

    try:
        yield Dashboard(wait_for(address, 30, "the dashboard to listen"), log.name)
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
        log.close()
        os.unlink(log.name)


@pytest.fixture(scope="module")
def dashboard(database_url):
    with standalone(database_url, "--allow-actions", "--allowed-host", "jobs.example.test") as server:
        yield server


def assert_security_headers(headers):
    assert headers["Content-Security-Policy"].startswith(CSP)
    assert headers["X-Content-Type-Options"] == "nosniff" and headers["X-Frame-Options"] == "DENY"
    assert headers["Referrer-Policy"] == "same-origin" and headers["Cache-Control"] == "no-store"


# --- host names (DNS rebinding) -----------------------------------------------------------------------------------

def test_the_bound_address_localhost_and_allowed_hosts_are_answered(dashboard, db):
    make_job(db, queue="payroll-queue")
    port = urllib.parse.urlsplit(dashboard.base).port
    for host in (f"127.0.0.1:{port}", "127.0.0.1", f"localhost:{port}", f"jobs.example.test:{port}",
                 "JOBS.Example.test"):
        status, _, body = dashboard.request("GET", "/", host=host)
        assert status == 200 and "payroll-queue" in body, host


def test_any_other_host_gets_400_and_no_data(dashboard, db):
    job_id = make_job(db, queue="payroll-queue", message="secret-message")
    port = urllib.parse.urlsplit(dashboard.base).port
    for host in (f"{FOREIGN}:{port}", FOREIGN, f"127.0.0.1.{FOREIGN}", f"localhost.{FOREIGN}:{port}", "[::1",
                 f"evil@127.0.0.1:{port}"):
        for path in ("/", "/jobs?status=failed", f"/jobs/{job_id}", "/workers", "/static/dashboard.js", "/nope",
                     "/queues//mail", "/jobs/"):
            status, headers, body = dashboard.request("GET", path, host=host)
            assert status == 400, (host, path, status)
            assert "payroll-queue" not in body and "secret-message" not in body and job_id not in body
            assert "Location" not in headers
            assert_security_headers(headers)


def test_a_rebound_page_cannot_act(dashboard, db):
    """What a rebound page would send: its own name in Host and Origin, a token it read... it reads nothing."""
    job_id = make_job(db)
    origin = f"http://{FOREIGN}:{urllib.parse.urlsplit(dashboard.base).port}"
    status, _, _ = dashboard.request("GET", f"/actions/retry?id={job_id}", host=urllib.parse.urlsplit(origin).netloc)
    assert status == 400
    status, _, _ = dashboard.request("POST", "/actions/retry", host=urllib.parse.urlsplit(origin).netloc,
                                     headers={"Origin": origin}, body={"id": job_id, "csrf_token": "0" * 64})
    assert status == 400 and status_of(db, job_id) == "f"


def test_redirects_name_only_a_checked_host_or_none(dashboard, db):
    job_id = make_job(db)
    host = f"jobs.example.test:{urllib.parse.urlsplit(dashboard.base).port}"
    # Werkzeug's redirect to merged slashes is absolute, built from Host: only ever an allowed one.
    status, headers, _ = dashboard.request("GET", "/queues//mail", host=host)
    assert status == 308 and headers["Location"] == f"http://{host}/queues/mail"
    status, headers, html = dashboard.request("GET", f"/actions/retry?id={job_id}", host=host)
    cookie = headers["Set-Cookie"].split(";")[0]
    status, headers, _ = dashboard.request(
        "POST", "/actions/retry", host=host, headers={"Origin": f"http://{host}", "Cookie": cookie},
        body={"id": job_id, "csrf_token": csrf_token(html)})
    assert status == 303 and headers["Location"] == f"/jobs/{job_id}?action=retry&done=1"
    assert status_of(db, job_id) == "p"


def test_the_servers_own_404_and_405_carry_the_security_headers(dashboard):
    for method, path, code in (("GET", "/nope", 404), ("POST", "/", 405), ("DELETE", "/jobs", 405)):
        status, headers, _ = dashboard.request(method, path)
        assert status == code, (method, path)
        assert_security_headers(headers)


# --- the database -------------------------------------------------------------------------------------------------

def test_a_pooled_connection_the_server_dropped_is_replaced_at_once(database_url, db):
    name = f"exekutor-dashboard-{uuid.uuid4().hex[:8]}"
    with standalone(psycopg2.extensions.make_dsn(database_url, application_name=name)) as dashboard:
        for _ in range(3):
            assert dashboard.request("GET", "/")[0] == 200
        dropped = query(db, "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        (name,))
        assert dropped
        wait_for(lambda: not query(db, "SELECT 1 FROM pg_stat_activity WHERE application_name = %s", (name,)),
                 10, "the dashboard's connections to end")
        for path in ("/", "/jobs", "/workers"):
            status, _, body = dashboard.request("GET", path)
            assert status == 200, body[-500:]
        assert "tables are missing" not in dashboard.output() and "reconnecting" in dashboard.output()
