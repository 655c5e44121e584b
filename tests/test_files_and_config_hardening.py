"""Pidfiles, log files, the database URL and config files against hostile or careless input, run for real:
CLI subprocesses, daemons, real symlinks and files in a tmp dir, real PostgreSQL."""
import glob
import json
import os
import resource
import signal
import stat
import subprocess
import sys
import time

import psycopg2.extensions
import pytest

from tests.conftest import ROOT, query, wait_for
from tests.test_cli import _stop_by_pidfile, alive, read_pid, run_cli

VICTIM = "precious data that is not a pidfile\n"


def worker_count(db):
    return query(db, "SELECT count(*) FROM exekutor_workers")[0][0]


@pytest.fixture
def workdir(tmp_path, database_url, db):
    """A directory to run the CLI in; whatever daemon a test started there is stopped at the end (through its
    pidfile, or through a file a symlinked pidfile pointed at)."""
    yield tmp_path
    for path in glob.glob(str(tmp_path / "**" / "*"), recursive=True):
        if os.path.isfile(path):
            _stop_by_pidfile(path)


def one_error_line(result):
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    return lines[0]


def make_victim(workdir):
    victim = workdir / "victim.txt"
    victim.write_text(VICTIM)
    victim.chmod(0o640)
    return victim


def assert_untouched(victim):
    assert victim.read_text() == VICTIM
    assert stat.S_IMODE(victim.stat().st_mode) == 0o640


# ---------------------------------------------------------------------------------------------------------------
# (5) pidfiles and log files: no symlink is followed, only regular files of ours are used


@pytest.mark.timeout(120)
@pytest.mark.parametrize("which", ["pidfile", "logfile"])
def test_start_refuses_a_symlinked_pidfile_or_log_file_and_leaves_its_target_alone(which, workdir, db):
    victim = make_victim(workdir)
    link = workdir / ("tmp/pids/exekutor.sym.pid" if which == "pidfile" else "log/exekutor.sym.log")
    link.parent.mkdir(parents=True)
    link.symlink_to(victim)

    result = run_cli("start", "--daemonize", "--identifier", "sym", "--app", "tests.jobs_app", cwd=workdir)
    assert result.returncode != 0
    line = one_error_line(result)
    assert "symbolic link" in line, line
    assert_untouched(victim)
    assert link.is_symlink()
    assert worker_count(db) == 0


@pytest.mark.timeout(60)
def test_stop_refuses_a_symlinked_pidfile_and_leaves_its_target_alone(workdir):
    victim = make_victim(workdir)
    (workdir / "tmp" / "pids").mkdir(parents=True)
    link = workdir / "tmp" / "pids" / "exekutor.sym.pid"
    link.symlink_to(victim)

    result = run_cli("stop", "--identifier", "sym", cwd=workdir)
    assert result.returncode == 1
    assert "symbolic link" in one_error_line(result)
    assert_untouched(victim)
    assert link.is_symlink()


@pytest.mark.timeout(120)
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another user")
@pytest.mark.parametrize("which", ["pidfile", "logfile"])
def test_start_refuses_a_pidfile_or_log_file_of_another_user(which, workdir, db):
    victim = make_victim(workdir)
    os.chown(victim, 65534, 65534)
    option = "--pidfile" if which == "pidfile" else "--logfile"

    result = run_cli("start", "--daemonize", "--identifier", "other", option, victim, "--app", "tests.jobs_app",
                     cwd=workdir)
    assert result.returncode != 0
    assert "belongs to uid 65534" in one_error_line(result)
    assert_untouched(victim)
    assert worker_count(db) == 0


LOCK_HOLDER = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDWR)
fcntl.flock(fd, fcntl.LOCK_EX)
print("ready", flush=True)
time.sleep(300)
"""


@pytest.mark.timeout(90)
def test_stop_signals_nothing_but_the_process_that_holds_the_pidfile_lock(workdir):
    # The pid in the pidfile is a sleeping process of the test's own, which holds no lock: a dead worker's pid
    # that got reused.
    bystander = subprocess.Popen(["sleep", "300"])
    holder = None
    pidfile = workdir / "w.pid"
    try:
        pidfile.write_text(f"{bystander.pid}\n")
        result = run_cli("stop", "--pidfile", pidfile, "--shutdown-timeout", "0.2", cwd=workdir)
        assert result.returncode == 0, result.stderr
        assert f"(pid {bystander.pid}) was not running; removed the stale pidfile" in result.stdout
        assert bystander.poll() is None and alive(bystander.pid)

        # Now another process holds the lock (a child the worker left behind), and the file names the bystander.
        pidfile.write_text(f"{bystander.pid}\n")
        holder = subprocess.Popen([sys.executable, "-c", LOCK_HOLDER, str(pidfile)], stdout=subprocess.PIPE, text=True)
        assert holder.stdout.readline() == "ready\n"
        result = run_cli("stop", "--pidfile", pidfile, "--shutdown-timeout", "0.2", cwd=workdir)
        time.sleep(0.2)  # a signal sent at the very end would land by now
        assert bystander.poll() is None, f"stop signalled pid {bystander.pid}: {result.stdout}{result.stderr}"
        assert holder.poll() is None
        assert result.returncode == 1
        line = one_error_line(result)
        assert f"pid {bystander.pid} does not hold the pidfile's lock" in line and "not signalling" in line
        assert "SIG" not in result.stdout
        assert pidfile.read_text() == f"{bystander.pid}\n"
    finally:
        for process in (bystander, holder):
            if process is not None:
                process.kill()
                process.wait()


# ---------------------------------------------------------------------------------------------------------------
# (6) an empty EXEKUTOR_DATABASE_URL / DATABASE_URL is not set; the embedded server only when nothing is


@pytest.mark.timeout(120)
@pytest.mark.parametrize("flag", [[], ["--database-url", ""]], ids=["empty-variables", "empty-flag-too"])
def test_empty_database_url_variables_do_not_hide_the_config_files_url(flag, tmp_path, database_url, db):
    config_file = tmp_path / "exekutor.yml"
    config_file.write_text(f"exekutor:\n  database_url: {json.dumps(database_url)}\n")
    embedded_dir = tmp_path / "embedded"
    env = {"EXEKUTOR_DATABASE_URL": "", "DATABASE_URL": "", "EXEKUTOR_EMBEDDED_DIR": str(embedded_dir)}
    dbname = psycopg2.extensions.parse_dsn(database_url)["dbname"]

    result = run_cli("info", "--json", "--configfile", config_file, *flag, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert dbname in json.loads(result.stdout)["database"]
    result = run_cli("migrate", "--configfile", config_file, *flag, cwd=tmp_path, env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "schema is up to date"
    assert "embedded" not in result.stderr
    assert not embedded_dir.exists() and not (tmp_path / ".exekutor").exists()


@pytest.mark.timeout(120)
def test_a_worker_on_the_embedded_server_says_so_in_one_info_line(tmp_path):
    embedded_dir = tmp_path / "embedded"
    env = {"EXEKUTOR_DATABASE_URL": "", "DATABASE_URL": "", "EXEKUTOR_EMBEDDED_DIR": str(embedded_dir)}
    # Nothing is configured: the worker starts the embedded server, which is not migrated, so it stops at once.
    result = run_cli("start", "--app", "tests.jobs_app", cwd=tmp_path, env=env)
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if "embedded PostgreSQL" in line]
    assert len(lines) == 1, result.stderr
    assert " INFO " in lines[0] and str(embedded_dir) in lines[0]


# ---------------------------------------------------------------------------------------------------------------
# (7) config files: YAML tags and alias bombs are one short line, status 2, in bounded memory

LAUGHS = "\n".join(f"{name}: &{name} [{', '.join([f'*{prev}'] * 9)}]" for prev, name in zip("abcdefgh", "bcdefghi"))
HOSTILE_YAML = {
    "python-tag": "exekutor:\n  queues: !!python/object/apply:os.system ['echo pwned > pwned.txt']\n",
    "billion-laughs": f"a: &a ['lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol', 'lol']\n{LAUGHS}\n"
                      f"exekutor:\n  queues: *i\n",
    "small-bomb": "x: &a ['" + "x" * 200 + "']\n" + "".join(f"y{n}: &{chr(98 + n)} [*{chr(97 + n)}, *{chr(97 + n)}, "
                                                         f"*{chr(97 + n)}, *{chr(97 + n)}]\n" for n in range(8))
                  + "exekutor:\n  queues: *i\n",
}


def _limit_memory():
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))


@pytest.mark.timeout(60)
@pytest.mark.parametrize("case", HOSTILE_YAML, ids=list(HOSTILE_YAML))
def test_hostile_yaml_is_one_short_line_and_status_2_in_bounded_memory(case, tmp_path):
    path = tmp_path / "exekutor.yml"
    path.write_text(HOSTILE_YAML[case])
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "exekutor", "info", "--configfile", str(path)], cwd=tmp_path,
                            env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True, timeout=50,
                            preexec_fn=_limit_memory)
    assert time.monotonic() - started < 30
    assert result.returncode == 2, result.stderr[-2000:]
    line = one_error_line(result)
    assert len(line) < 300, line
    assert f"{path} line" in line
    assert not (tmp_path / "pwned.txt").exists()


# ---------------------------------------------------------------------------------------------------------------
# (10) a bad json_serializer is bad input; the daemon's log file is private


@pytest.mark.timeout(120)
@pytest.mark.parametrize("daemonize", [[], ["--daemonize"]], ids=["foreground", "daemon"])
def test_a_bad_json_serializer_exits_2_in_one_line(daemonize, workdir, db):
    env = {"EXEKUTOR_JSON_SERIALIZER": "no_such_module_xyz:codec"}
    result = run_cli("start", *daemonize, "--app", "tests.jobs_app", cwd=workdir, env=env)
    assert result.returncode == 2, result.stderr
    assert "json_serializer 'no_such_module_xyz:codec' cannot be imported" in one_error_line(result)
    assert worker_count(db) == 0
    assert glob.glob(str(workdir / "**" / "*.pid"), recursive=True) == []


@pytest.mark.timeout(120)
def test_the_daemons_log_file_is_created_0600(workdir, db):
    old_umask = os.umask(0o022)
    try:
        result = run_cli("start", "--daemonize", "--identifier", "private", "--logfile", "log/w.log",
                         "--app", "tests.jobs_app", cwd=workdir)
    finally:
        os.umask(old_umask)
    assert result.returncode == 0, result.stderr
    pid = read_pid(workdir / "tmp" / "pids" / "exekutor.private.pid")
    log = workdir / "log" / "w.log"
    assert stat.S_IMODE(log.stat().st_mode) == 0o600
    assert "started" in log.read_text()

    stopped = run_cli("stop", "--identifier", "private", cwd=workdir)
    assert stopped.returncode == 0, stopped.stderr
    wait_for(lambda: not alive(pid), 15, message="the daemon to exit")


# --- day one: connect timeout, SIGHUP, a stop that misses -----------------------------------------------------


@pytest.fixture
def silent_database(silent_server):
    """A database URL whose server accepts connections and never answers."""
    return f"postgresql://root@127.0.0.1:{silent_server}/silent"


@pytest.mark.timeout(60)
def test_a_worker_gives_up_connecting_after_connect_timeout_and_says_so(silent_database):
    started = time.monotonic()
    result = run_cli("start", "--app", "tests.jobs_app", "--database-url", silent_database,
                     env={"EXEKUTOR_CONNECT_TIMEOUT": "3", "EXEKUTOR_STATEMENT_TIMEOUT": "30"}, timeout=50)
    elapsed = time.monotonic() - started
    assert result.returncode != 0
    assert "could not connect within 3s to root@127.0.0.1:" in result.stderr, result.stderr[-2000:]
    assert elapsed < 15, elapsed  # not the 30 s statement_timeout


@pytest.mark.timeout(60)
def test_sighup_stops_a_foreground_worker_gracefully(start_worker, db):
    worker = start_worker("--threads", "2")
    wait_for(lambda: "started on " in worker.output(), 10, message="the first log line naming the database")
    worker.signal(signal.SIGHUP)
    assert worker.wait(30) == 0, worker.output()[-2000:]
    assert query(db, "SELECT count(*) FROM exekutor_workers")[0][0] == 0  # it deleted its row: a graceful stop


def test_stop_where_no_pidfile_is_fails_and_names_the_absolute_path(workdir):
    result = run_cli("stop", "--identifier", "elsewhere", cwd=workdir)
    assert result.returncode == 1
    assert f"{workdir}/tmp/pids/exekutor.elsewhere.pid: no worker running" in result.stderr
