"""The `exekutor-gevent` command, run for real: subprocesses, daemons, signals and PostgreSQL."""
import functools
import glob
import json
import os
import pty
import signal
import socket
import subprocess
import sys
import time

import click
import psycopg2.extensions
import pytest

import exekutor
from exekutor import cli, config
from exekutor.cli.install import STARTER_CONFIG
from exekutor.cli.start import start
from tests import jobs_app
from tests.conftest import ROOT, query, scalar, wait_for
from tests.jobs_app import EXECUTIONS_DDL
from tests.test_cleanup import insert_job, insert_worker

PASSWORD = "pw-9f3c1e77"  # the test server trusts local connections, so any password works and none may leak
CLI_TIMEOUT = 60


def with_password(url):
    """The URL as a postgresql:// URI with a password in it."""
    parts = psycopg2.extensions.parse_dsn(url)
    user, host, port = parts.get("user", "root"), parts.get("host", "127.0.0.1"), parts.get("port", 5432)
    if host.startswith("/"):  # a Unix socket directory (the embedded server) goes in the query string
        return f"postgresql://{user}:{PASSWORD}@/{parts['dbname']}?host={host}&port={port}"
    return f"postgresql://{user}:{PASSWORD}@{host}:{port}/{parts['dbname']}"


def run_cli(*args, cwd=ROOT, env=None, stdout=subprocess.PIPE, timeout=CLI_TIMEOUT):
    """Run `python -m exekutor ARGS` to completion (the database is EXEKUTOR_DATABASE_URL from the fixture)."""
    environ = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **(env or {}))
    return subprocess.run([sys.executable, "-m", "exekutor", *map(str, args)], cwd=cwd, env=environ,
                          stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=timeout)


def alive(pid):
    """Whether `pid` runs (a zombie does not: the container's init may never reap our daemons)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def title(pid):
    with open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode().strip()


def read_pid(path):
    with open(path) as f:
        return int(f.read())


def worker_rows(db):
    return query(db, "SELECT id::text, pid, identifier, status, queues, min_threads, max_threads, info "
                     "FROM exekutor_workers ORDER BY identifier")


def _stop_by_pidfile(path):
    """Teardown: SIGTERM, then SIGKILL, whatever a test left running."""
    try:
        pid = read_pid(path)
    except (OSError, ValueError):
        return
    for signum in (signal.SIGTERM, signal.SIGKILL):
        if not alive(pid) or "exekutor" not in title(pid):
            return
        os.kill(pid, signum)
        try:
            wait_for(lambda: not alive(pid), timeout=15, message=f"pid {pid} to exit")
        except AssertionError:
            continue


@pytest.fixture
def workdir(tmp_path, database_url, db):
    """A directory to run daemons in (pidfiles and logs land under it); every daemon still running at the end
    of the test is stopped through its pidfile."""
    yield tmp_path
    for path in glob.glob(str(tmp_path / "**" / "*.pid"), recursive=True):
        _stop_by_pidfile(path)


def start_daemon(workdir, *args, env=None):
    result = run_cli("start", "--daemonize", "--app", "tests.jobs_app", *args, cwd=workdir, env=env)
    assert result.returncode == 0, result.stderr
    return result


def insert_record_job(db, queue, tag):
    payload = json.dumps({"job": "tests.record", "args": [tag], "kwargs": {}})
    return scalar(db, "INSERT INTO exekutor_jobs (queue, payload) VALUES (%s, %s) RETURNING id::text",
                  (queue, payload))


# ---------------------------------------------------------------------------------------------------------------
# start in the foreground


@pytest.fixture
def notify_socket(tmp_path):
    """A datagram socket standing in for systemd's NOTIFY_SOCKET."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    yield path, sock
    sock.close()


def test_start_takes_its_queues_and_threads_and_stops_on_sigterm(start_worker, db, database_url, notify_socket):
    path, sock = notify_socket
    db.cursor().execute(EXECUTIONS_DDL)
    worker = start_worker("--threads", "10:200", "--queue", "a", "--queue", "b", "--identifier", "ab",
                          "--database-url", with_password(database_url), env={"NOTIFY_SOCKET": path})
    assert sock.recv(100) == b"READY=1"
    (worker_id, pid, identifier, status, queues, low, high, _), = worker_rows(db)
    assert (pid, identifier, status, queues, low, high) == (worker.pid, "ab", "r", ["a", "b"], 10, 200)
    assert title(worker.pid) == f"exekutor-gevent worker {worker_id} [ab] queues=a,b threads=10-200"

    other = insert_record_job(db, "c", "c1")  # first, so the worker has seen it when a and b are done
    for queue in "ab":
        insert_record_job(db, queue, f"{queue}1")
    wait_for(lambda: scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'c'") == 2, 30,
             message="the jobs of queues a and b to complete")
    assert sorted(row[0] for row in query(db, "SELECT tag FROM test_executions")) == ["a1", "b1"]
    assert scalar(db, "SELECT status FROM exekutor_jobs WHERE id = %s", (other,)) == "p"

    worker.signal(signal.SIGTERM)
    assert sock.recv(100) == b"STOPPING=1"
    assert worker.wait(30) == 0
    assert worker_rows(db) == []
    assert PASSWORD not in worker.output()


@pytest.mark.parametrize("app", ["no_such_module_xyz", "tests.jobs_app:missing_factory"])
def test_start_with_an_application_that_does_not_import_exits_2(app, database_url, db):
    result = run_cli("start", "--app", app)
    assert result.returncode == 2
    assert result.stderr.startswith("exekutor-gevent: error: cannot import application module")
    assert len(result.stderr.splitlines()) == 1
    assert worker_rows(db) == []


BROKEN_APP = """import os


def read_key():
    return os.environ["API_KEY_I25"]


KEY = read_key()
"""


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", [["start"], ["start", "--daemonize"], ["schedules"]], ids=" ".join)
def test_an_app_that_fails_to_import_shows_its_traceback_and_names_the_module(command, tmp_path, database_url, db):
    (tmp_path / "brokenpkg").mkdir()
    (tmp_path / "brokenpkg" / "__init__.py").write_text("")
    (tmp_path / "brokenpkg" / "jobs.py").write_text(BROKEN_APP)
    result = run_cli(*command, "--app", "brokenpkg.jobs", cwd=tmp_path)
    assert result.returncode == 2
    # A daemon's log file has the traceback, and its one line points there.
    output = (tmp_path / "log" / "exekutor.log").read_text() if "--daemonize" in command else result.stderr
    module = str(tmp_path / "brokenpkg" / "jobs.py")
    assert f'File "{module}", line 5, in read_key' in output
    assert 'return os.environ["API_KEY_I25"]' in output
    assert "exekutor/" not in output  # exekutor's own frames are folded
    assert (f"error: cannot import application module brokenpkg.jobs: KeyError: 'API_KEY_I25' ({module}, line 5)"
            in result.stderr.splitlines()[-1])
    assert worker_rows(db) == []


@pytest.mark.timeout(60)
def test_start_logs_the_registered_jobs_and_warns_when_there_are_none(start_worker):
    with_app, without = start_worker(), start_worker(apps=())
    wait_for(lambda: "job(s) registered: " in with_app.output(), 10, message="the registered jobs' line")
    assert "tests.sleep" in with_app.output().split("job(s) registered: ", 1)[1].splitlines()[0]
    wait_for(lambda: "no job is registered" in without.output(), 10, message="the warning")
    warning, = [line for line in without.output().splitlines() if "no job is registered" in line]
    assert " WARNING " in warning and "--app" in warning


@pytest.mark.timeout(60)
def test_the_first_signal_says_what_the_stop_waits_for(start_worker, db):
    worker = start_worker("--poll-interval", "1", env={"EXEKUTOR_WAIT_FOR_TERMINATION": "25"})
    job = exekutor.enqueue_many([jobs_app.sleep.job(60)])[0]
    wait_for(lambda: scalar(db, "SELECT status FROM exekutor_jobs WHERE id = %s", (str(job.id),)) == "e", 20,
             message="the job to run")
    worker.signal(signal.SIGINT)
    wait_for(lambda: "stopping: waiting up to 25s for 1 running job to finish, then cancelling them; signal "
                     "again (Ctrl-C) to cancel them now and exit" in worker.output(), 10, message="the stop's log")
    worker.signal(signal.SIGINT)
    assert worker.wait(30) == 0


@pytest.mark.parametrize("daemonize", [[], ["--daemonize"]], ids=["foreground", "daemon"])
def test_start_against_an_unreachable_database_fails_in_one_line(daemonize, workdir):
    unreachable = f"postgresql://root:{PASSWORD}@127.0.0.1:1/nowhere"
    result = run_cli("start", *daemonize, "--app", "tests.jobs_app", "--database-url", unreachable, cwd=workdir)
    assert result.returncode == 1
    # The server it tried, as info names it: user, host, port and database, never the password.
    assert result.stderr.startswith("exekutor-gevent: error: cannot start the worker (root@127.0.0.1:1/nowhere): "
                                    "OperationalError")
    assert len(result.stderr.splitlines()) == 1 and PASSWORD not in result.stderr
    assert glob.glob(str(workdir / "**" / "*.pid"), recursive=True) == []


# ---------------------------------------------------------------------------------------------------------------
# daemons


def test_daemonize_then_stop_by_identifier(workdir, db):
    result = start_daemon(workdir, "--identifier", "x", "--queue", "q1")
    pidfile = workdir / "tmp" / "pids" / "exekutor.x.pid"
    pid = read_pid(pidfile)
    (worker_id, row_pid, identifier, *_), = worker_rows(db)
    assert (row_pid, identifier) == (pid, "x")
    assert f"worker {worker_id} started (pid {pid}) as a daemon" in result.stdout
    assert title(pid).startswith(f"exekutor-gevent worker {worker_id} [x]")
    assert "started" in (workdir / "log" / "exekutor.x.log").read_text()

    again = run_cli("start", "--daemonize", "--identifier", "x", "--app", "tests.jobs_app", cwd=workdir)
    assert again.returncode == 1
    assert f"a worker is already running (pid {pid}, pidfile tmp/pids/exekutor.x.pid)" in again.stderr
    assert read_pid(pidfile) == pid and len(worker_rows(db)) == 1

    stopped = run_cli("stop", "--identifier", "x", cwd=workdir)
    assert stopped.returncode == 0, stopped.stderr
    assert f"worker pid {pid} stopped" in stopped.stdout
    assert not pidfile.exists()
    assert worker_rows(db) == []
    wait_for(lambda: not alive(pid), 10, message="the daemon to exit")


def test_stop_all_stops_the_workers_with_default_pidfiles(workdir, db):
    for identifier in ([], ["--identifier", "one"], ["--identifier", "two"]):
        start_daemon(workdir, *identifier)
    start_daemon(workdir, "--identifier", "custom", "--pidfile", "run/%{identifier}.pid")
    custom = read_pid(workdir / "run" / "custom.pid")
    assert len(worker_rows(db)) == 4

    result = run_cli("stop", "--all", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert len(result.stdout.splitlines()) == 3
    assert glob.glob(str(workdir / "tmp" / "pids" / "*")) == []
    assert [row[2] for row in worker_rows(db)] == ["custom"]

    result = run_cli("stop", "--pidfile", "run/%{identifier}.pid", "--id", "custom", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert worker_rows(db) == [] and not alive(custom)
    assert "no daemonized workers" in run_cli("stop", "--all", cwd=workdir).stdout


def test_restart_replaces_the_process_with_the_new_options(workdir, db):
    (workdir / "config").mkdir()
    (workdir / "config" / "exekutor.yml").write_text("exekutor:\n  queues: [from-default-file]\n")
    start_daemon(workdir, "--identifier", "r")
    pidfile = workdir / "tmp" / "pids" / "exekutor.r.pid"
    old_pid = read_pid(pidfile)

    result = run_cli("restart", "--identifier", "r", "--max_threads", "7", "--app", "tests.jobs_app", cwd=workdir)
    assert result.returncode == 0, result.stderr
    new_pid = read_pid(pidfile)
    assert new_pid != old_pid and not alive(old_pid)
    (_, pid, identifier, status, queues, _, max_threads, _), = worker_rows(db)
    assert (pid, identifier, status, queues, max_threads) == (new_pid, "r", "r", ["from-default-file"], 7)


def test_restart_with_no_worker_running_starts_one(workdir, db):
    result = run_cli("restart", "--identifier", "fresh", "--app", "tests.jobs_app", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "no worker running (no pidfile there)" in result.stdout
    pid = read_pid(workdir / "tmp" / "pids" / "exekutor.fresh.pid")
    wait_for(lambda: [row[1] for row in worker_rows(db)] == [pid], 30, message="the new worker to register")
    assert run_cli("stop", "--identifier", "fresh", cwd=workdir).returncode == 0


def test_a_stale_pidfile_is_cleaned_up(workdir, db):
    dead = subprocess.Popen(["true"])
    dead.wait()
    pidfile = workdir / "tmp" / "pids" / "exekutor.s.pid"
    pidfile.parent.mkdir(parents=True)
    pidfile.write_text(f"{dead.pid}\n")

    result = run_cli("stop", "--identifier", "s", cwd=workdir)
    assert result.returncode == 0
    assert f"(pid {dead.pid}) was not running; removed the stale pidfile" in result.stdout
    assert not pidfile.exists()

    pidfile.write_text(f"{dead.pid}\n")
    result = start_daemon(workdir, "--identifier", "s")
    assert f"removed stale pidfile tmp/pids/exekutor.s.pid (pid {dead.pid} was not running)" in result.stderr
    assert read_pid(pidfile) == worker_rows(db)[0][1]


def test_stop_cancels_jobs_after_the_shutdown_timeout(workdir, db):
    start_daemon(workdir, "--identifier", "slow", env={"EXEKUTOR_WAIT_FOR_TERMINATION": "true"})
    pid = read_pid(workdir / "tmp" / "pids" / "exekutor.slow.pid")
    job = scalar(db, "INSERT INTO exekutor_jobs (payload) VALUES (%s) RETURNING id",
                 (json.dumps({"job": "tests.sleep", "args": [120], "kwargs": {}}),))
    wait_for(lambda: scalar(db, "SELECT status FROM exekutor_jobs WHERE id = %s", (job,)) == "e", 30,
             message="the job to start")

    started = time.monotonic()
    result = run_cli("stop", "--identifier", "slow", "--shutdown_timeout", "1s", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert time.monotonic() - started < 15
    assert "still running after 1s; sending SIGTERM to cancel its jobs" in result.stdout
    assert "its unfinished jobs went back to pending" in result.stdout
    assert not alive(pid)
    assert query(db, "SELECT status, worker_id FROM exekutor_jobs") == [("p", None)]
    assert worker_rows(db) == []


STUBBORN = """
import fcntl, os, signal, sys, time
fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT)
fcntl.flock(fd, fcntl.LOCK_EX)
os.write(fd, f"{os.getpid()}\\n".encode())
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.timeout(60)
def test_stop_kills_a_process_that_ignores_sigterm(workdir):
    # A stand-in that holds its pidfile as a worker does but ignores SIGTERM, as a worker stuck in C code would.
    pidfile = workdir / "stubborn.pid"
    stub = subprocess.Popen([sys.executable, "-c", STUBBORN, str(pidfile)], stdout=subprocess.PIPE, text=True)
    try:
        assert stub.stdout.readline() == "ready\n"
        result = run_cli("stop", "--pidfile", pidfile, "--shutdown-timeout", "0.2", cwd=workdir)
        assert stub.wait(5) == -signal.SIGKILL
    finally:
        stub.kill()
        stub.wait()
    assert "sending SIGKILL" in result.stdout and "killed" in result.stdout
    assert result.returncode == 0
    assert not pidfile.exists()


# ---------------------------------------------------------------------------------------------------------------
# info


def _info_fixture_rows(db):
    """Jobs of queues the worker does not take: 'later' scheduled in an hour, 'backlog' due for ten minutes."""
    for _ in range(2):
        insert_job(db, queue="later", scheduled_ago="-1 hour")
    for _ in range(3):
        insert_job(db, queue="backlog", scheduled_ago="10 minutes")


def test_info_marks_estimated_counts_of_a_big_backlog(db, database_url):
    # Above queue_stats' exact limit a count is the planner's estimate: shown with "~", flagged in the JSON.
    from exekutor.queue_stats import EXACT_COUNT_LIMIT

    query(db, "INSERT INTO exekutor_jobs (queue, payload, scheduled_at) SELECT 'big', '{\"job\": \"tests.noop\"}', "
              "now() - interval '5 minutes' FROM generate_series(1, %s)", (3 * EXACT_COUNT_LIMIT,))
    insert_job(db, queue="small", scheduled_ago="1 minute")
    query(db, "ANALYZE exekutor_jobs")
    result = run_cli("info", "--database-url", database_url)
    assert result.returncode == 0, result.stderr
    big = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["big"])
    small = next(line for line in result.stdout.splitlines() if line.split()[:1] == ["small"])
    assert big.split()[1].startswith("~") and big.split()[2].startswith("~"), big
    assert int(big.split()[1][1:]) > EXACT_COUNT_LIMIT
    assert small.split()[1:3] == ["1", "1"]
    assert "Jobs: ~" in result.stdout
    data = json.loads(run_cli("info", "--json", "--database-url", database_url).stdout)
    queues = {queue["queue"]: queue for queue in data["queues"]}
    assert queues["big"]["estimated"] and not queues["small"]["estimated"] and data["totals"]["estimated"]
    assert queues["small"]["pending"] == 1


def test_info_shows_workers_and_pending_jobs_as_tables_and_json(start_worker, db, database_url):
    worker = start_worker("--identifier", "info-w", "--queue", "busy", "--threads", "2:5")
    worker_id = worker.wait_started(db)
    _info_fixture_rows(db)
    url = ["--database-url", with_password(database_url)]

    result = run_cli("info", *url)
    assert result.returncode == 0, result.stderr
    assert "\x1b[" not in result.stdout  # not a terminal: no styles
    assert PASSWORD not in result.stdout
    assert result.stdout.startswith("Database: root@")  # named by its parsed parts, not its text
    lines = result.stdout.splitlines()
    header = next(line for line in lines if "IDENTIFIER" in line)
    row = next(line for line in lines if worker_id in line)
    assert row.split()[1:6] == [worker_id, "info-w", str(worker.pid), "running", "busy"]
    assert row.index(worker_id) == header.index("ID")  # aligned under its header
    backlog = next(line for line in lines if line.split()[:1] == ["backlog"])
    later = next(line for line in lines if line.split()[:1] == ["later"])
    assert backlog.split()[1:4] == ["3", "3", "0"] and "10m" in backlog
    assert later.split()[1:4] == ["2", "0", "0"] and "in 59m" in later
    assert "Jobs: 5 pending (3 due), 0 executing" in result.stdout

    data = json.loads(run_cli("info", "--json", *url).stdout)
    assert PASSWORD not in json.dumps(data)
    (listed,) = data["workers"]
    assert (listed["id"], listed["identifier"], listed["status"], listed["min_threads"], listed["max_threads"]) == \
        (worker_id, "info-w", "running", 2, 5)
    queues = {queue["queue"]: queue for queue in data["queues"]}
    assert (queues["backlog"]["pending"], queues["backlog"]["due"], queues["backlog"]["overdue"]) == (3, 3, True)
    assert (queues["later"]["pending"], queues["later"]["due"], queues["later"]["overdue"]) == (2, 0, False)
    assert data["totals"] == {"workers": 1, "hosts": 1, "pending": 5, "due": 3, "executing": 0, "failed": 0,
                              "discarded": 0, "cancelled": 0, "estimated": False, "due_estimated": False,
                              "held_back_total": 0, "held_back_estimated": False, "paused_queues": 0}


def _run_on_terminal(*args):
    """Run the CLI with stdout on a pseudo-terminal; returns what it printed."""
    master, slave = pty.openpty()
    try:
        result = run_cli(*args, stdout=slave)
        os.close(slave)
        output = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the terminal's other end is closed and everything was read
                break
            if not chunk:
                break
            output += chunk
    finally:
        os.close(master)
    return result.returncode, output.decode()


def test_info_highlights_late_heartbeats_and_overdue_queues_on_a_terminal_only(db, database_url):
    insert_worker(db, "1 hour", identifier="silent")
    insert_worker(db, "1 second", identifier="fresh")
    _info_fixture_rows(db)
    red = "\x1b[31m\x1b[1m"

    status, output = _run_on_terminal("info")
    assert status == 0
    silent = next(line for line in output.splitlines() if "silent" in line)
    fresh = next(line for line in output.splitlines() if "fresh" in line)
    backlog = next(line for line in output.splitlines() if "backlog" in line)
    assert f"{red}1h 00m ago" in silent
    assert "ago" in fresh and red not in fresh
    assert f"{red}backlog" in backlog and f"{red}10m" in backlog
    assert red not in next(line for line in output.splitlines() if "later" in line)

    plain = run_cli("info").stdout
    assert "\x1b[" not in plain and "silent" in plain
    assert "\x1b[" not in _run_on_terminal("info", "--json")[1]


@pytest.mark.parametrize("state", ["empty", "no-worker-due-jobs", "stale-worker", "overdue-and-failed"])
def test_info_reports_every_state_of_the_queue_on_a_terminal_and_in_a_pipe(db, state):
    if state != "empty":
        _info_fixture_rows(db)
    if state == "stale-worker":
        insert_worker(db, "1 hour", identifier="stale")
    if state == "overdue-and-failed":
        insert_job(db, queue="backlog", scheduled_ago="3 days")
        insert_job(db, queue="backlog", scheduled_ago="1 hour", status="f")
    status, output = _run_on_terminal("info")
    assert status == 0, output
    piped = run_cli("info")
    assert piped.returncode == 0, piped.stderr
    expected = {"empty": "Jobs: none pending or executing", "stale-worker": "stale"}.get(state, "backlog")
    assert expected in output and expected in piped.stdout
    if state != "stale-worker":
        assert "Workers: none running" in piped.stdout
    assert json.loads(run_cli("info", "--json").stdout)["totals"]


@pytest.fixture
def empty_database(db, database_url):
    """The URL (with a password) of a database without exekutor's tables."""
    name = f"{psycopg2.extensions.parse_dsn(database_url)['dbname']}_empty"
    db.cursor().execute(f'CREATE DATABASE "{name}"')
    yield with_password(psycopg2.extensions.make_dsn(database_url, dbname=name))
    db.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.parametrize("command", ["info", "cleanup", "schedules"])
def test_a_database_without_the_tables_says_to_migrate(command, empty_database):
    result = run_cli(command, "--database-url", empty_database)
    assert result.returncode == 1
    assert "exekutor's tables are missing" in result.stderr and "run 'exekutor-gevent migrate'" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and PASSWORD not in result.stderr


# ---------------------------------------------------------------------------------------------------------------
# cleanup


def test_cleanup_deletes_what_it_should_and_nothing_else(db, database_url):
    dead = insert_worker(db, "5 hours", identifier="dead")
    fresh = insert_worker(db, "5 seconds", identifier="fresh")
    released = insert_job(db, "e", worker_id=dead)
    running = insert_job(db, "e", scheduled_ago="5 days", worker_id=fresh)
    pending = insert_job(db, "p", scheduled_ago="5 days")
    recent = insert_job(db, "c", scheduled_ago="1 hour", finished_ago="1 hour")
    old = [insert_job(db, status, scheduled_ago="3 days", finished_ago="3 days") for status in "cfd"]

    result = run_cli("cleanup")
    assert result.returncode == 0, result.stderr
    assert "workers: deleted 1" in result.stdout and dead in result.stdout
    assert "jobs: deleted 3" in result.stdout
    assert [row[2] for row in worker_rows(db)] == ["fresh"]
    left = dict(query(db, "SELECT id::text, status FROM exekutor_jobs"))
    assert left == {released: "p", running: "e", pending: "p", recent: "c"}
    assert not set(old) & set(left)


def test_cleanup_specific_timeouts_override_the_general_one(db, database_url):
    insert_worker(db, "2 hours", identifier="quiet")
    jobs = {status: insert_job(db, status, scheduled_ago="3 days", finished_ago="3 days") for status in "cfd"}

    result = run_cli("cleanup", "jobs", "--timeout", "1", "--job_timeout", "100")
    assert "jobs: deleted 0" in result.stdout  # 3 days < 100 hours, although > 1 hour
    result = run_cli("cleanup", "workers", "--timeout", "100", "--worker-timeout", "90m")
    assert "workers: deleted 1" in result.stdout and worker_rows(db) == []
    result = run_cli("cleanup", "jobs", "--timeout", "1d", "--job-status", "failed")
    assert "jobs: deleted 1 (failed;" in result.stdout
    assert set(dict(query(db, "SELECT id::text, status FROM exekutor_jobs"))) == {jobs["c"], jobs["d"]}


# ---------------------------------------------------------------------------------------------------------------
# configuration layers


def test_each_configuration_layer_wins_over_the_ones_below(start_worker, db, tmp_path):
    yaml_file, ini_file = tmp_path / "exekutor.yml", tmp_path / "exekutor.ini"
    yaml_file.write_text("exekutor:\n  max_execution_threads: 11\n  polling_interval: 11\n"
                         "production:\n  exekutor:\n    max_execution_threads: 21\n")
    ini_file.write_text("[exekutor]\nmax_execution_threads = 12\npolling_interval = 12s\n")
    env = {"EXEKUTOR_MAX_EXECUTION_THREADS": "13", "EXEKUTOR_POLLING_INTERVAL": "13"}
    layers = {
        "yaml": (["--configfile", yaml_file], None),
        "yaml-env-section": (["--configfile", yaml_file, "--env", "production"], None),
        "ini-after-yaml": (["--configfile", yaml_file, "--configfile", ini_file], None),
        "environment": (["--configfile", yaml_file, "--configfile", ini_file], env),
        "flags": (["--configfile", yaml_file, "--configfile", ini_file, "--max_threads", "14",
                   "--poll_interval", "14"], env),
    }
    workers = [start_worker("--identifier", name, *args, env=environ, wait=False)
               for name, (args, environ) in layers.items()]
    for worker in workers:
        worker.wait_started(db)
    effective = {row[2]: (row[6], row[7]["polling_interval"]) for row in worker_rows(db)}
    assert effective == {"yaml": (11, 11), "yaml-env-section": (21, 11), "ini-after-yaml": (12, 12),
                         "environment": (13, 13), "flags": (14, 14)}


# ---------------------------------------------------------------------------------------------------------------
# bad input: one line, status 2, nothing started

BAD_INPUT = {
    "threads-reversed": (["start", "--threads", "20:10"], {}, "minimum 20 is greater than maximum 10"),
    "threads-not-a-number": (["start", "--threads", "x"], {}, "invalid --threads 'x'"),
    "max-threads-not-a-number": (["start", "--max-threads", "lots"], {}, "'--max-threads'"),
    "priority-out-of-range": (["start", "--priority", "0:10"], {}, "min_priority in command line"),
    "poll-interval": (["start", "--poll_interval", "soon"], {}, "polling_interval in command line"),
    "unknown-yaml-key": (["start", "--configfile", "bad.yml"], {},
                         "unknown option 'poling_interval' in bad.yml line 2 (did you mean 'polling_interval'?)"),
    "missing-config-file": (["start", "--configfile", "missing.yml"], {}, "config file not found: missing.yml"),
    "bad-environment-variable": (["start"], {"EXEKUTOR_MAX_EXECUTION_THREADS": "lots"},
                                 "environment variable EXEKUTOR_MAX_EXECUTION_THREADS"),
    "unknown-flag": (["start", "--bogus"], {}, "No such option '--bogus'"),
    "extra-argument-with-password": (["start", f"postgresql://u:{PASSWORD}@h/db"], {}, "unexpected extra argument"),
    "bad-database-url": (["start", "--database-url", f"mysql://u:{PASSWORD}@h/db"], {},
                         "invalid value for database_url"),
    "identifier-with-slash": (["start", "--identifier", "a/b"], {}, "cannot be part of a file name"),
    "daemon-bad-app": (["start", "--app", "no_such_module_xyz"], {}, "cannot import application module"),
    "stop-timeout": (["stop", "--shutdown-timeout", "soon"], {}, "invalid value for --shutdown-timeout"),
    "restart-threads": (["restart", "--threads", "0"], {}, "min_execution_threads in command line"),
    "cleanup-timeout": (["cleanup", "--timeout", "abc"], {}, "invalid value for --timeout"),
    "cleanup-job-timeout": (["cleanup", "--timeout", "1", "--job-timeout", "-5"], {},
                            "invalid value for --job-timeout"),
    "cleanup-pending": (["cleanup", "--job_status", "pending"], {}, "cleanup never deletes pending jobs"),
    "cleanup-live-workers": (["cleanup", "--worker-timeout", "30s"], {}, "shorter than worker_timeout"),
    "cleanup-what": (["cleanup", "everything"], {}, "Invalid value for '[all|jobs|workers]'"),
    "info-config": (["info", "--configfile", "missing.yml"], {}, "config file not found"),
}


@pytest.mark.parametrize("case", BAD_INPUT, ids=list(BAD_INPUT))
def test_bad_input_is_one_line_exit_2_and_nothing_started(case, workdir, db):
    args, env, message = BAD_INPUT[case]
    (workdir / "bad.yml").write_text("exekutor:\n  poling_interval: 5\n")
    insert_job(db, "c", scheduled_ago="3 days", finished_ago="3 days")
    if args[0] in ("start", "restart"):
        args = [*args, "--daemonize", "--app", "tests.jobs_app"] if "--app" not in args else [*args, "--daemonize"]

    result = run_cli(*args, cwd=workdir, env=env)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith("exekutor-gevent: error: ") and message in result.stderr
    assert PASSWORD not in result.stderr
    assert worker_rows(db) == []
    assert glob.glob(str(workdir / "**" / "*.pid"), recursive=True) == []
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs") == 1  # cleanup deleted nothing


# ---------------------------------------------------------------------------------------------------------------
# install, examples, spellings, version


def test_install_writes_the_starter_config_and_never_overwrites_it_unless_forced(tmp_path):
    target = tmp_path / "config" / "exekutor.yml"
    result = run_cli("install", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert target.read_text() == open(os.path.join(ROOT, "conf", "exekutor.yml")).read()

    target.write_text("exekutor:\n  queues: [mine]\n")
    refused = run_cli("install", cwd=tmp_path)
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert target.read_text() == "exekutor:\n  queues: [mine]\n"
    assert run_cli("install", "--force", cwd=tmp_path).returncode == 0
    assert target.read_text() == STARTER_CONFIG


@pytest.mark.parametrize("env", [None, "production"])
def test_the_example_yaml_and_ini_files_say_the_same(env):
    effective = []
    for name in ("exekutor.yml", "exekutor.ini"):
        config.reset()
        config.load(files=[os.path.join(ROOT, "conf", name)], env=env, environ={})
        effective.append({option: config.get(option) for option in config.OPTIONS})
    assert effective[0] == effective[1]
    assert effective[0]["max_execution_threads"] == (200 if env else 100)


def test_every_option_has_both_spellings():
    context = click.Context(cli.main)
    for command in map(functools.partial(cli.main.get_command, context), cli.main.list_commands(context)):
        for param in command.params:
            for flag in getattr(param, "opts", []):
                if param.param_type_name == "option" and ("-" in flag[2:] or "_" in flag[2:]):
                    other = "--" + (flag[2:].replace("-", "_") if "-" in flag[2:] else flag[2:].replace("_", "-"))
                    assert other in param.opts, f"{command.name} {flag} has no {other}"


def test_help_lists_each_command_with_its_own_summary():
    # `--help` lists cli.COMMANDS without importing the commands: each summary must be the command's own help.
    context = click.Context(cli.main)
    for name, (_, summary) in cli.COMMANDS.items():
        command = cli.main.get_command(context, name)
        assert " ".join(command.help.split("\n\n")[0].split()) == summary, name
        assert command.name == name


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"exekutor-gevent, version {__import__('exekutor').__version__}"


def _exec_start(unit):
    line = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    return line.split("=", 1)[1].split()


@pytest.mark.parametrize("name", ["exekutor-gevent.service", "exekutor-gevent@.service"])
def test_the_systemd_units_run_a_foreground_worker_with_valid_flags(name):
    with open(os.path.join(ROOT, "conf", name)) as f:
        unit = f.read()
    program, command, *args = _exec_start(unit.replace("%i", "mail"))
    assert (os.path.basename(program), command) == ("exekutor-gevent", "start")
    assert "Type=notify" in unit and "--daemonize" not in args  # systemd supervises; READY=1 says it runs
    start.make_context("start", args)  # raises on a flag that does not exist


@pytest.mark.timeout(60)
def test_start_on_a_database_never_migrated_says_to_migrate(database_url, db):
    name = f"exekutor_unmigrated_{os.getpid()}"
    with db.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}"')
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        url = psycopg2.extensions.make_dsn(database_url, dbname=name)
        result = run_cli("start", "--app", "tests.jobs_app", env={"EXEKUTOR_DATABASE_URL": url})
        assert result.returncode == 1
        assert "run `exekutor-gevent migrate`" in result.stderr.strip().splitlines()[-1]
        assert "could not delete its row" not in result.stderr
        assert "killed" not in result.stderr  # a failed start is not a kill
    finally:
        with db.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
