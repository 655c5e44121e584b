"""The Sentry plugin with the real sentry-sdk and transports that record what would be sent (no network)."""
import json
import os
import sys
import uuid

import psycopg2
import psycopg2.extensions
import pytest
import sentry_sdk
from sentry_sdk.transport import Transport

import exekutor
from exekutor import hooks
from exekutor.db.connection import connect
from exekutor.db.pool import ConnectionPool
from exekutor.errors import PluginError
from exekutor.plugins import sentry as sentry_plugin
from tests import health_jobs, jobs_app
from tests.conftest import ROOT, query, scalar, wait_for
from tests.tcpproxy import TCPProxy


class MemoryTransport(Transport):
    """Keeps (type, payload) of every event and transaction sentry-sdk hands over."""

    def __init__(self, options=None):
        super().__init__(options)
        self.sent = []

    def capture_envelope(self, envelope):
        self.sent += [(item.type, item.payload.json) for item in envelope.items
                      if item.type in ("event", "transaction")]

    def of_type(self, kind):
        return [payload for item_type, payload in self.sent if item_type == kind]


@pytest.fixture
def sentry():
    transport = MemoryTransport()
    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=transport, traces_sample_rate=1.0,
                    default_integrations=False)
    exekutor.load_plugin("sentry")
    yield transport
    sentry_plugin.uninstall()
    sentry_sdk.init()  # no DSN: an inactive client again


def exception_of(event):
    (value,) = event["exception"]["values"]
    return value["type"], value["value"]


def test_a_job_failure_is_reported_with_the_job_context_and_its_transaction(sentry):
    with pytest.raises(RuntimeError):
        health_jobs.fails.perform_now(secret="x")

    (event,) = sentry.of_type("event")
    assert exception_of(event) == ("RuntimeError", "health job failed on purpose")
    context = event["contexts"]["exekutor_job"]
    assert (context["job"], context["queue"], context["attempts"]) == ("health.fails", "default", 1)
    assert event["tags"]["exekutor.job"] == "health.fails" and event["tags"]["exekutor.queue"] == "default"
    (transaction,) = sentry.of_type("transaction")
    assert transaction["transaction"] == "health.fails"
    assert transaction["contexts"]["trace"]["op"] == "queue.process"
    assert transaction["contexts"]["trace"]["status"] == "internal_error"


def test_a_completed_job_has_an_ok_transaction_and_no_error(sentry):
    jobs_app.noop.perform_now()
    assert sentry.of_type("event") == []
    (transaction,) = sentry.of_type("transaction")
    assert (transaction["transaction"], transaction["contexts"]["trace"]["status"]) == ("tests.noop", "ok")
    assert transaction["contexts"]["exekutor_job"]["job"] == "tests.noop"


def test_a_discarded_job_is_not_reported_as_a_failure(sentry):
    with pytest.raises(exekutor.DiscardJob):
        health_jobs.discarded.perform_now()
    assert sentry.of_type("event") == []
    (transaction,) = sentry.of_type("transaction")
    assert transaction["contexts"]["trace"]["status"] == "cancelled"


def test_fatal_errors_are_reported_and_tagged(sentry):
    hooks.run_on("on_fatal_error", ConnectionError("the database went away"))
    (event,) = sentry.of_type("event")
    assert exception_of(event) == ("ConnectionError", "the database went away")
    assert event["tags"]["exekutor.fatal"] == "true"


def test_loading_the_plugin_again_reports_each_failure_once(sentry):
    exekutor.load_plugin("sentry")
    with pytest.raises(RuntimeError):
        health_jobs.fails.perform_now()
    assert len(sentry.of_type("event")) == 1
    assert len(sentry.of_type("transaction")) == 1


def test_an_unknown_plugin_is_a_clear_error():
    with pytest.raises(PluginError, match=r"unknown exekutor plugin 'appsignal'; available: sentry"):
        exekutor.load_plugin("appsignal")


def test_a_missing_sentry_sdk_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "sentry_sdk", None)  # what `import sentry_sdk` meets when it is not installed
    monkeypatch.delitem(sys.modules, "exekutor.plugins.sentry")
    expected = r"the sentry plugin needs sentry-sdk: pip install 'exekutor-gevent\[sentry\]'"
    with pytest.raises(PluginError, match=expected):
        exekutor.load_plugin("sentry")
    assert not hooks.has_hooks("on_job_failure")


@pytest.mark.timeout(60)
def test_a_worker_reports_failures_and_transactions_with_the_job_context(start_worker, db, tmp_path):
    sent = tmp_path / "sentry.jsonl"
    start_worker("--app", "tests.health_jobs", env={"EXEKUTOR_TEST_SENTRY_FILE": str(sent)})
    failing, completing, discarded = (health_jobs.fails.perform_later(), jobs_app.noop.perform_later(),
                                      health_jobs.discarded.perform_later())

    def transactions():
        items = [json.loads(line) for line in sent.read_text().splitlines()] if sent.exists() else []
        found = {item["event"]["contexts"]["exekutor_job"]["id"]: item["event"]
                 for item in items if item["type"] == "transaction"}
        return len(found) == 3 and (found, [item["event"] for item in items if item["type"] == "event"])

    found, events = wait_for(transactions, 30, message="three job transactions")
    assert {job_id: event["contexts"]["trace"]["status"] for job_id, event in found.items()} == {
        failing.id: "internal_error", completing.id: "ok", discarded.id: "cancelled"}
    (event,) = events
    assert exception_of(event) == ("RuntimeError", "health job failed on purpose")
    context = event["contexts"]["exekutor_job"]
    assert (context["id"], context["job"], context["queue"], context["attempts"]) == (
        failing.id, "health.fails", "default", 1)
    assert context["enqueued_at"] and context["scheduled_at"]


def test_a_database_password_on_the_command_line_is_masked(monkeypatch):
    from sentry_sdk.integrations.argv import ArgvIntegration

    monkeypatch.setattr(sys, "argv", ["exekutor-gevent", "start", "--database-url",
                                      "postgresql://app:hunter2-pw@db/app", "--app", "myapp.jobs"])
    transport = MemoryTransport()
    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=transport, default_integrations=False,
                    integrations=[ArgvIntegration()])
    exekutor.load_plugin("sentry")
    try:
        hooks.run_on("on_fatal_error", RuntimeError("boom"))
    finally:
        sentry_plugin.uninstall()
        sentry_sdk.init()
    (event,) = transport.of_type("event")
    assert event["extra"]["sys.argv"][3] == "postgresql://app:***@db/app"
    assert "hunter2-pw" not in json.dumps(transport.sent)


# --- no database password, no job argument in any event (include_local_variables=True) ----------------------------

# Secrets are made at run time: a literal would show in the source lines Sentry sends with each frame.
SECRET_ARGUMENT = f"arg-SECRET-{uuid.uuid4().hex[:12]}"  # reaches the job through its arguments only


def _user_code_that_fails(reference, items):
    """User code below the job function: its frame holds the argument too (by value, not by a filtered name)."""
    copied = dict(items)
    raise ValueError(f"could not use {len(reference)} characters and {len(copied)} items")


@exekutor.job(name="tests.sentry_leaky")
def leaky_job(reference, options=None):
    _user_code_that_fails(reference, {"nested": [reference], "count": 3})


def password_url(database_url, password, port=None):
    params = psycopg2.extensions.parse_dsn(database_url)
    host = params.get("host") or "127.0.0.1"
    return f"postgresql://{params.get('user') or 'root'}:{password}@{host}:{port or params.get('port') or 5432}" \
           f"/{params['dbname']}"


@pytest.fixture
def leaky_sentry(request):
    """sentry-sdk with local variables on (unless parametrized False), the default integrations and a before_send
    of the user's own, which must still run (and see the event masked already)."""
    transport = MemoryTransport()
    seen_by_before_send = []

    def before_send(event, hint):
        seen_by_before_send.append(json.dumps(event, default=str))
        event.setdefault("tags", {})["user.before_send"] = "ran"
        return event

    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=transport, traces_sample_rate=1.0,
                    include_local_variables=getattr(request, "param", True), before_send=before_send)
    exekutor.load_plugin("sentry")
    yield transport, seen_by_before_send
    sentry_plugin.uninstall()
    sentry_sdk.init()


def test_a_failing_job_sends_none_of_its_arguments(leaky_sentry):
    transport, seen_by_before_send = leaky_sentry
    with pytest.raises(ValueError):
        leaky_job.perform_now(SECRET_ARGUMENT, options={"label": f"label-{SECRET_ARGUMENT}"})

    (event,) = transport.of_type("event")
    assert exception_of(event)[0] == "ValueError"
    assert SECRET_ARGUMENT not in json.dumps(transport.sent, default=str)
    assert not any(SECRET_ARGUMENT in seen for seen in seen_by_before_send)
    assert event["contexts"]["exekutor_job"]["job"] == "tests.sentry_leaky"
    assert event["tags"]["user.before_send"] == "ran"
    frames = event["exception"]["values"][-1]["stacktrace"]["frames"]
    assert frames[-1]["function"] == "_user_code_that_fails"
    # User code keeps its local variables (the argument masked by value); exekutor's frames keep none.
    assert frames[-1]["vars"]["copied"] == {"nested": ["'[Filtered]'"], "count": "3"}
    assert frames[-1]["vars"]["reference"] == "'[Filtered]'"
    assert all("vars" not in frame for frame in frames if frame["module"].startswith("exekutor"))


@pytest.mark.timeout(30)
def test_a_lost_database_connection_sends_no_password(leaky_sentry, database_url, db):
    transport, seen_by_before_send = leaky_sentry
    password = f"pw-SECRET-{uuid.uuid4().hex[:12]}"
    with TCPProxy.for_url(database_url) as proxy:
        exekutor.config.database_url = password_url(database_url, password, port=proxy.port)
        pool = ConnectionPool(1)
        with pool.connection() as conn:
            pid = scalar(conn, "SELECT pg_backend_pid()")
        query(db, "SELECT pg_terminate_backend(%s)", (pid,))
        proxy.refuse()  # the reconnection fails too
        with pytest.raises(psycopg2.OperationalError) as lost:
            with pool.connection() as conn:
                scalar(conn, "SELECT 1")
        pool.close()
    hooks.run_on("on_fatal_error", lost.value)  # what a worker component does with it
    # the same with a password that only a keyword string in the code knows (not the configuration)
    keyword_password = f"kw-SECRET-{uuid.uuid4().hex[:12]}"
    with pytest.raises(psycopg2.OperationalError) as refused:
        connect(f"host=127.0.0.1 port=1 user=root password={keyword_password} connect_timeout=3")
    hooks.run_on("on_fatal_error", refused.value)

    events = transport.of_type("event")
    assert len(events) == 2 and all(event["tags"]["exekutor.fatal"] == "true" for event in events)
    assert all(exception_of(event)[0] == "OperationalError" for event in events)
    assert all(event["tags"]["user.before_send"] == "ran" for event in events)
    everything = json.dumps(transport.sent, default=str)
    assert password not in everything and keyword_password not in everything
    assert not any(password in seen or keyword_password in seen for seen in seen_by_before_send)


@pytest.mark.parametrize("leaky_sentry", [True, False], indirect=True, ids=["local-variables", "no-local-variables"])
def test_passwords_are_masked_by_value_in_user_frames_breadcrumbs_and_extra(leaky_sentry, monkeypatch):
    transport, seen_by_before_send = leaky_sentry
    monkeypatch.setenv("EXEKUTOR_DATABASE_URL", "postgresql://app:env-SECRET-c0ffee@db.example/app")

    def user_code(settings):
        raise ConnectionError("the database went away")

    sentry_sdk.add_breadcrumb(message="connecting to postgresql://app:crumb-SECRET-5a5a@db/app", category="user")
    sentry_sdk.set_extra("settings", {"dsn": "host=db password='quoted SECRET 77' user=app", "note": "env-SECRET"
                                      "-c0ffee!"})
    try:
        user_code({"url": "postgres://app:frame-SECRET-1b2c@db/app", "retries": 3})
    except ConnectionError as error:
        hooks.run_on("on_fatal_error", error)

    (event,) = transport.of_type("event")
    everything = json.dumps(event, default=str)
    for secret in ("env-SECRET-c0ffee", "crumb-SECRET-5a5a", "quoted SECRET 77", "frame-SECRET-1b2c"):
        assert secret not in everything and secret not in seen_by_before_send[0]
    assert event["breadcrumbs"]["values"][-1]["message"] == "connecting to postgresql://app:***@db/app"
    assert event["extra"]["settings"] == {"dsn": "host=db password=*** user=app", "note": "***!"}
    (frame,) = [frame for frame in event["exception"]["values"][0]["stacktrace"]["frames"]
                if frame["function"] == "user_code"]
    if frame.get("vars") is not None:  # include_local_variables: user code keeps its variables, masked
        assert frame["vars"]["settings"] == {"url": "'postgres://app:***@db/app'", "retries": "3"}


@pytest.mark.timeout(120)
def test_a_worker_sends_no_database_password_and_no_job_argument(start_worker, database_url, db, tmp_path):
    """A real worker with local variables on: a job that fails with a recognizable argument, then a database
    that goes away (connections cut, new ones refused); every event it sends is searched for both."""
    password = f"pw-SECRET-{uuid.uuid4().hex[:12]}"
    sent = tmp_path / "sentry.jsonl"
    (tmp_path / "sentry_leak_app.py").write_text(SENTRY_LEAK_APP)
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), ROOT]), "EXEKUTOR_TEST_SENTRY_LEAK_FILE": str(sent)}
    with TCPProxy.for_url(database_url) as proxy:
        url = password_url(database_url, password, port=proxy.port)
        worker = start_worker("--poll-interval", "0.5", url=url, env=env,
                              apps=("tests.health_jobs", "sentry_leak_app"))
        failing = health_jobs.fails.perform_later(SECRET_ARGUMENT)

        def events():
            items = [json.loads(line) for line in sent.read_text().splitlines()] if sent.exists() else []
            return [item["event"] for item in items if item["type"] == "event"]

        def failure_reported():
            return [e for e in events() if e.get("contexts", {}).get("exekutor_job", {}).get("id") == failing.id]

        wait_for(failure_reported, 30, message="the job failure event")
        proxy.down()

        def fatal_events():
            found = [e for e in events() if e.get("tags", {}).get("exekutor.fatal") == "true"]
            return len(found) >= 4 and found

        fatal = wait_for(fatal_events, 60, message="fatal errors of a worker that lost its database")
        proxy.up()
        worker.stop()
    assert any(exception_of(event)[0] == "OperationalError" for event in fatal)
    assert all(event.get("tags", {}).get("user.before_send") == "ran" for event in events())
    text = sent.read_text()
    assert password not in text
    assert SECRET_ARGUMENT not in text


SENTRY_LEAK_APP = '''
import json
import os

import sentry_sdk
from sentry_sdk.transport import Transport

import exekutor

PATH = os.environ["EXEKUTOR_TEST_SENTRY_LEAK_FILE"]


class FileTransport(Transport):
    def capture_envelope(self, envelope):
        with open(PATH, "a", encoding="utf-8") as file:
            for item in envelope.items:
                if item.type in ("event", "transaction"):
                    file.write(json.dumps({"type": item.type, "event": item.payload.json}, default=str) + "\\n")


def before_send(event, hint):
    event.setdefault("tags", {})["user.before_send"] = "ran"
    return event


sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=FileTransport, traces_sample_rate=1.0,
                include_local_variables=True, before_send=before_send)
exekutor.load_plugin("sentry")
'''
