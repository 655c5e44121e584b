"""Jobs for the health check, metrics, logging and Sentry tests (`--app tests.health_jobs`).

Environment switches, read when the worker imports this module:
- EXEKUTOR_TEST_DEBUG_LOG=1: the "exekutor" logger logs DEBUG lines (job start and finish);
- EXEKUTOR_TEST_SENTRY_FILE=path: initialize sentry-sdk with a transport that appends every event and transaction
  it is given to that file (one JSON object a line; no network), and load the sentry plugin.
"""
import json
import logging
import os
import time

import gevent
from gevent import monkey

import exekutor

blocking_sleep = monkey.get_original("time", "sleep")


@exekutor.job(name="health.block_hub")
def block_hub(seconds):
    """Sleeps with the original time.sleep: nothing else in the worker runs meanwhile."""
    blocking_sleep(seconds)


@exekutor.job(name="health.busy_loop")
def busy_loop(seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        pass


@exekutor.job(name="health.sleep")
def sleep(seconds):
    gevent.sleep(seconds)


@exekutor.job(name="health.fails")
def fails(secret=None):
    raise RuntimeError("health job failed on purpose")


@exekutor.job(name="health.discarded")
def discarded(secret=None):
    raise exekutor.DiscardJob("not worth doing")


@exekutor.job(name="health.retried", retry=exekutor.Retry(attempts=2, backoff="fixed", wait=0.1))
def retried():
    raise IOError("fails every time")


@exekutor.job(name="health.slow", execution_timeout=0.3)
def slow(seconds=10):
    gevent.sleep(seconds)


if os.environ.get("EXEKUTOR_TEST_DEBUG_LOG"):
    logging.getLogger("exekutor").setLevel(logging.DEBUG)


def _setup_sentry(path):
    import sentry_sdk
    from sentry_sdk.transport import Transport

    class FileTransport(Transport):
        def capture_envelope(self, envelope):
            with open(path, "a", encoding="utf-8") as file:
                for item in envelope.items:
                    if item.type in ("event", "transaction"):
                        file.write(json.dumps({"type": item.type, "event": item.payload.json}, default=str) + "\n")

    sentry_sdk.init(dsn="https://key@sentry.invalid/1", transport=FileTransport, traces_sample_rate=1.0,
                    default_integrations=False)
    exekutor.load_plugin("sentry")


if os.environ.get("EXEKUTOR_TEST_SENTRY_FILE"):
    _setup_sentry(os.environ["EXEKUTOR_TEST_SENTRY_FILE"])
