"""Helpers for the tests of the health check server, metrics, logging and Sentry: real HTTP, real workers."""
import http.client
import socket
import time
from typing import NamedTuple

from tests.conftest import wait_for


class Response(NamedTuple):
    status: int
    body: str
    content_type: str
    seconds: float  # how long the answer took


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get(port, path, timeout=15):
    """A real HTTP GET to the health check server on 127.0.0.1."""
    started = time.monotonic()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read().decode()
        return Response(response.status, body, response.getheader("Content-Type"), time.monotonic() - started)
    finally:
        conn.close()


def wait_for_status(port, path, status, timeout=30, message=None):
    """Poll `path` until it answers `status`; returns that response."""
    def check():
        response = get(port, path)
        return response if response.status == status else None

    return wait_for(check, timeout, message or f"{path} to answer {status}", interval=0.1)


def metric_values(port):
    """{(name, frozenset(labels.items())): value} of every sample /metrics exposes (parsed as Prometheus text)."""
    from prometheus_client.parser import text_string_to_metric_families

    response = get(port, "/metrics")
    assert response.status == 200, response
    return {(sample.name, frozenset(sample.labels.items())): sample.value
            for family in text_string_to_metric_families(response.body) for sample in family.samples}


def metric(values, name, **labels):
    return values.get((name, frozenset(labels.items())), 0.0)


def worker_starter(start_worker):
    """For a `health_worker` fixture: start(*cli_args, env=...) starts a worker with `--app tests.health_jobs` and a
    health check port (`.port`), and returns it once /ready says 200 (with wait=False: at once)."""

    def start(*args, env=None, wait=True):
        port = free_port()
        worker = start_worker("--app", "tests.health_jobs", "--healthcheck-port", port, *args, env=env, wait=wait)
        worker.port = port
        if wait:
            wait_for_status(port, "/ready", 200, 30, "the worker to be ready")
        return worker

    return start
