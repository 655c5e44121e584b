"""The Sentry plugin with the real sentry-sdk and transports that record what would be sent (no network)."""
import json
import sys

import pytest
import sentry_sdk
from sentry_sdk.transport import Transport

import exekutor
from exekutor import hooks
from exekutor.errors import PluginError
from exekutor.plugins import sentry as sentry_plugin
from tests import health_jobs, jobs_app
from tests.conftest import wait_for


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
