"""Fixtures of the reliability suite: a dedicated PostgreSQL cluster (session), and per test a harness that
starts real worker processes against it, kills them, and reconciles what happened.

The cluster is the suite's own (see cluster.py): scenarios restart it, exhaust its connection slots and
terminate its backends. Workers, jobs and the load generator connect as the non-superuser `app`; the tests'
own admin connections as the superuser, so they still get in when the slots are exhausted.
"""
import os
import signal
import time

import psycopg2
import pytest

from tests.conftest import WorkerProcess
from tests.reliability import cluster as clusters
from tests.reliability.jobs import EXECUTIONS_DDL
from tests.reliability.support import log, query

# Worker settings of the suite (each scenario may override): short heartbeats and worker_timeout so that
# orphans are rescued in seconds, short client-side statement and connect timeouts.
WORKER_ENV = {
    "EXEKUTOR_HEARTBEAT_INTERVAL": "1",
    "EXEKUTOR_WORKER_TIMEOUT": "5",
    "EXEKUTOR_POLLING_INTERVAL": "5",
    "EXEKUTOR_STATEMENT_TIMEOUT": "5",
    "EXEKUTOR_CONNECT_TIMEOUT": "3",
    "EXEKUTOR_WAIT_FOR_TERMINATION": "5",
}
APPS = ("tests.reliability.jobs",)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)


@pytest.fixture(scope="session")
def pg_cluster():
    reason = clusters.PostgresCluster.usable()
    if reason:
        pytest.skip(f"reliability suite: cannot run a PostgreSQL cluster of its own: {reason}")
    bindir, where = clusters.postgres_bindir()
    cluster = clusters.PostgresCluster(bindir)
    try:
        cluster.init()
        cluster.start()
        cluster.setup_database()
        from exekutor.db import migrations

        migrations.migrate(cluster.url())
        conn = psycopg2.connect(cluster.url())
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(EXECUTIONS_DDL)
        conn.close()
        log(f"dedicated PostgreSQL {cluster.version} ({where}) on 127.0.0.1:{cluster.port}, in {cluster.root}")
        yield cluster
    finally:
        cluster.destroy()


class Harness:
    """What a scenario works with: the cluster, an admin connection, and real worker processes."""

    def __init__(self, cluster):
        self.cluster = cluster
        self.url = cluster.url()  # the app's direct URL
        self.workers = []
        self.killed_pids = set()
        self.db = cluster.connect()

    def reconnect(self, timeout=60):
        """A fresh admin connection (after the server restarted or terminated it)."""
        try:
            self.db.close()
        except psycopg2.Error:
            pass
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.db = self.cluster.connect()
                return self.db
            except psycopg2.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def start_worker(self, *args, url=None, env=None, apps=APPS, threads=10, wait=True):
        environ = dict(WORKER_ENV, RELIABILITY_RECORD_URL=self.url)
        environ.update(env or {})
        cli = ["--threads", str(threads), *[str(arg) for arg in args]]
        worker = WorkerProcess(url or self.url, cli, env=environ, apps=apps)
        self.workers.append(worker)
        if wait:
            worker.wait_started(self.db, timeout=60)
        return worker

    def kill(self, worker):
        """SIGKILL: no shutdown at all, its executing jobs are orphans until another worker rescues them."""
        self.killed_pids.add(worker.pid)
        worker.signal(signal.SIGKILL)
        worker.wait(10)

    def executing_of(self, worker_id):
        return query(self.db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s",
                     (worker_id,))[0][0]

    def terminate(self, where="usename = 'app'"):
        """pg_terminate_backend on the backends of the suite's own database matching `where`."""
        rows = query(self.db, f"SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                              f"WHERE datname = %s AND pid <> pg_backend_pid() AND ({where})",
                     (clusters.DATABASE,))
        return rows[0][0]

    def stop_all(self):
        for worker in self.workers:
            worker.stop()

    def logs(self, lines=300):
        parts = []
        for worker in self.workers:
            tail = "".join(worker.output().splitlines(keepends=True)[-lines:])
            parts.append(f"--- worker pid {worker.pid} (exit {worker.proc.returncode}) ---\n{tail}")
        return "\n".join(parts)


@pytest.fixture
def rel(pg_cluster, request):
    if not pg_cluster.running():
        pg_cluster.start()
    harness = Harness(pg_cluster)
    with harness.db.cursor() as cursor:
        cursor.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename IN ('app', 'hog')")
        cursor.execute("TRUNCATE exekutor_jobs, exekutor_workers, exekutor_job_errors, rel_executions, "
                       "rel_fatal_errors")
    yield harness
    harness.stop_all()
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        print(f"\n{harness.logs()}\n--- PostgreSQL log ---\n{pg_cluster.log_tail()}")
    for worker in harness.workers:
        try:
            os.unlink(worker.log.name)
        except OSError:
            pass
    try:
        harness.db.close()
    except psycopg2.Error:
        pass
