"""Enqueueing from web processes: a real gunicorn serving tests/web_app.py with the documented config
(`-c python:exekutor.contrib.gunicorn`), the `exekutor.contrib.gevent.patch()` helper, and the size of the
enqueue pool (`enqueue_pool_size`)."""
import http.client
import os
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg2.extensions
import pytest

from exekutor import config
from exekutor.db import green
from exekutor.db.pool import default_pool, reset_default_pool
from tests import web_app
from tests.conftest import ROOT, scalar, wait_for
from tests.health_support import free_port

pytest.importorskip("gunicorn")

REQUESTS = 10


class Gunicorn:
    """`gunicorn -c python:exekutor.contrib.gunicorn tests.web_app:app` on a free loopback port; stopped by close()."""

    def __init__(self, url, worker_class):
        self.port = free_port()
        self.log = tempfile.NamedTemporaryFile(prefix="exekutor-gunicorn-", suffix=".log", delete=False)
        args = [sys.executable, "-m", "gunicorn", "-k", worker_class, "--workers", "1", "--worker-connections",
                str(4 * REQUESTS), "--bind", f"127.0.0.1:{self.port}", "-c", "python:exekutor.contrib.gunicorn",
                "tests.web_app:app"]
        env = dict(os.environ, EXEKUTOR_DATABASE_URL=url, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=self.log, stderr=subprocess.STDOUT)

    def get(self, path, timeout=10):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            return response.status, response.read().decode()
        finally:
            conn.close()

    def wait_ready(self):
        def answers():
            if self.proc.poll() is not None:
                raise AssertionError(f"gunicorn exited with {self.proc.returncode}:\n{self.output()}")
            try:
                return self.get("/ping", timeout=2) == (200, "pong")
            except OSError:
                return False

        wait_for(answers, 30, message="gunicorn to answer", interval=0.1)

    def output(self):
        with open(self.log.name, encoding="utf-8", errors="replace") as f:
            return f.read()

    def close(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture
def gunicorn(database_url, db):
    servers = []

    def start(worker_class):
        server = Gunicorn(database_url, worker_class)
        servers.append(server)
        server.wait_ready()
        return server

    yield start
    for server in servers:
        server.close()


@pytest.mark.timeout(90)
def test_gevent_gunicorn_with_the_config_serves_database_requests_concurrently(gunicorn, db):
    server = gunicorn("gevent")
    assert server.get("/callback") == (200, "exekutor.db.green.wait_callback")
    server.get("/work")  # connects once, so the timing below is of the requests, not of a first connect

    started = time.monotonic()
    with ThreadPoolExecutor(REQUESTS) as pool:
        responses = list(pool.map(lambda _: server.get("/work", timeout=30), range(REQUESTS)))
    elapsed = time.monotonic() - started

    assert [status for status, _ in responses] == [200] * REQUESTS, responses
    # Serialized, the requests would take REQUESTS x 0.3 s = 3 s; concurrent, about 0.3 s plus the connects.
    assert elapsed < 2.0, f"{REQUESTS} requests of {web_app.QUERY_SECONDS}s took {elapsed:.2f}s:\n{server.output()}"
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE queue = 'web'") == REQUESTS + 1


@pytest.mark.timeout(60)
@pytest.mark.parametrize("worker_class", ["sync", "gthread"])
def test_the_config_leaves_threaded_and_sync_workers_alone(gunicorn, worker_class):
    server = gunicorn(worker_class)
    assert server.get("/callback") == (200, "none")
    assert server.get("/work", timeout=30)[0] == 200


@pytest.fixture
def wait_callback_restored():
    before = psycopg2.extensions.get_wait_callback()
    psycopg2.extensions.set_wait_callback(None)
    yield
    psycopg2.extensions.set_wait_callback(before)


def test_patch_installs_the_workers_wait_callback_once(wait_callback_restored):
    from exekutor.contrib import gevent as contrib_gevent

    assert not contrib_gevent.is_patched()
    assert contrib_gevent.patch() is True
    assert psycopg2.extensions.get_wait_callback() is green.wait_callback
    assert contrib_gevent.patch() is False  # idempotent
    assert contrib_gevent.is_patched()


@pytest.fixture
def fresh_default_pool():
    reset_default_pool()
    yield
    reset_default_pool()


def test_the_enqueue_pool_size_is_an_option(fresh_default_pool):
    config.configure(enqueue_pool_size=3)
    assert default_pool().size == 3


def test_the_enqueue_pool_keeps_its_default_of_ten(fresh_default_pool):
    assert default_pool().size == 10
