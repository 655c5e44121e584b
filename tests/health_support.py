"""Helpers for the tests of the health check server, metrics, logging and Sentry: real HTTP, real workers."""
import contextlib
import http.client
import resource
import select
import socket
import threading
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


@contextlib.contextmanager
def open_file_limit(soft):
    """This process's soft RLIMIT_NOFILE set to `soft` (within the hard limit) for the block, then restored; worker
    processes started meanwhile inherit it."""
    old_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY:
        soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        yield soft
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (old_soft, hard))


@contextlib.contextmanager
def idle_connections(port, count, batch=50, connect_timeout=15):
    """`count` TCP connections to 127.0.0.1:`port` that never send a byte, opened `batch` at a time (each batch
    connected before the next starts, so the server sees them in that order) without blocking: a server that stops
    accepting cannot hang the test. Yields (sockets, connected) and closes them all afterwards."""
    sockets, connected = [], []
    deadline = time.monotonic() + connect_timeout
    try:
        while len(sockets) < count and time.monotonic() < deadline:
            pending = {}
            for _ in range(min(batch, count - len(sockets))):
                sock = socket.socket()
                sockets.append(sock)
                sock.setblocking(False)
                sock.connect_ex(("127.0.0.1", port))
                pending[sock.fileno()] = sock
            poller = select.poll()
            for fd in pending:
                poller.register(fd, select.POLLOUT)
            while pending and time.monotonic() < deadline:
                for fd, _ in poller.poll(200):
                    poller.unregister(fd)
                    sock = pending.pop(fd)
                    if sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                        connected.append(sock)
        yield sockets, connected
    finally:
        for sock in sockets:
            sock.close()


class SlowClients:
    """`count` connections that send a request line one byte at a time, every `interval` seconds (slowloris), on
    a thread of their own until the block ends; the ones the server closed stop sending."""

    REQUEST = b"GET /live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 1000

    def __init__(self, port, count, interval=0.5):
        self.port, self.count, self.interval = port, count, interval
        self.sockets = []
        self.closed = 0  # by the server
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        try:
            for _ in range(self.count):
                self.sockets.append(socket.create_connection(("127.0.0.1", self.port), timeout=15))
        except BaseException:
            self._close()
            raise
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(30)
        self._close()

    def _run(self):
        live = list(self.sockets)
        for index in range(len(self.REQUEST)):
            for sock in list(live):
                try:
                    sock.send(self.REQUEST[index:index + 1])
                except OSError:
                    live.remove(sock)
                    self.closed += 1
            if not live or self._stop.wait(self.interval):
                return

    def _close(self):
        for sock in self.sockets:
            sock.close()


def closed_by_peer(sock):
    """True when the server closed `sock` (EOF or reset), False while it stays open; never blocks."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    try:
        return sock.recv(65536, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True  # ECONNRESET and the like
    finally:
        sock.settimeout(timeout)
