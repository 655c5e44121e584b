"""The health check server: `/`, `/ready`, `/live`, `/threads` and `/metrics` over HTTP.

    $ curl localhost:9000/ready
    [OK] ID: f1a2ee6a-cdac-459c-a4b8-de7c6a8bbae6; State: started
    $ curl localhost:9000/live
    [OK] ID: f1a2ee6a-cdac-459c-a4b8-de7c6a8bbae6; State: started; Heartbeat: 2023-04-05T16:27:00Z
    $ curl localhost:9000/threads
    {"minimum": 1, "maximum": 10, "available": 4, "usage_percent": 60.0}

A failing check answers 503 with `[Service unavailable] ...; Reason: ...`.

- `/live`: the worker is started, its heartbeat is younger than `healthcheck_timeout`, its components and its
  liveness thread are running, and no greenlet has blocked the event loop for longer than `max_blocking_time` (right
  now, as the worker's watchdog sees it: exekutor.worker.watchdog).
- `/ready`: `/live`, and the database answers a query on the worker's pool within `DATABASE_TIMEOUT`, the listener
  is connected (when enabled), and no component has failed `Component.ERROR_THRESHOLD` times in a row.

The server is gevent's WSGI server on an OS thread of its own with a hub of its own: it answers while every
job greenlet is busy, and while a job blocks the worker's event loop (which it then reports). What it needs
from the worker's hub (the database probe, the metrics) runs there through `eventloop.call_in_hub`.

Idle and slow clients cannot starve the probes: a client has `REQUEST_TIMEOUT` seconds to send each request's line
and headers (and the server that long for each socket read or write), or its connection is closed. A connection
waiting for a request holds no slot of its own: with `connection_limit()` connections open, a new one closes the
connection that has waited longest for its request, so a probe gets through however many idle connections there are.
"""
import json
import logging
import resource
import socket
import time
from datetime import datetime, timezone

import gevent
from gevent import monkey
from gevent.pywsgi import Input, WSGIHandler, WSGIServer

from exekutor.config import redact_url
from exekutor.errors import ConfigError
from exekutor.eventloop import SingleFlight, call_in_hub

logger = logging.getLogger("exekutor")

DATABASE_TIMEOUT = 3.0  # the /ready probe; the answer comes within about this long
METRICS_TIMEOUT = 10.0
REQUEST_TIMEOUT = 5.0  # for a request line and headers to arrive; also for each socket read or write
MAX_CONNECTIONS = 1000  # open connections at most (a quarter of the open-file limit when that is lower)
TEXT = "text/plain; charset=utf-8"
JSON = "application/json"
_REASONS = {200: "OK", 404: "Not Found", 500: "Internal Server Error", 503: "Service Unavailable"}
_start_new_thread = monkey.get_original("_thread", "start_new_thread")


class HealthcheckServer:
    def __init__(self, worker, host, port):
        self.worker = worker
        self.host, self.port = host, port
        self.address = None  # (host, port) once listening
        self.heartbeat_timeout = worker.options["healthcheck_timeout"] * 60  # the option is in minutes
        self._probe = SingleFlight(self._probe_database)
        self._worker_hub = None
        self._routes = {"/": self._root, "/ready": self._ready, "/live": self._live, "/threads": self._threads,
                        "/metrics": self._metrics}
        self._started = self._stopping = self._done = False

    # --- lifecycle (in the worker's hub) ----------------------------------------------------------------

    def start(self):
        sock = _listen(self.host, self.port)
        self.address = sock.getsockname()[:2]
        self._worker_hub = gevent.get_hub()
        self._started = True
        _start_new_thread(self._serve, (sock,))
        logger.info("exekutor worker %s: health check server on http://%s:%d/ (/ready, /live, /threads%s)",
                    self.worker.id, *self.address, ", /metrics" if self.worker.metrics.enabled else "")
        return self

    def stop(self):
        if not self._started or self._stopping:
            return
        self._stopping = True
        with gevent.Timeout(5, False):
            while not self._done:
                gevent.sleep(0.02)

    def _serve(self, sock):
        """The server's thread: its own hub, gevent's WSGI server, until stop() says so."""
        hub = gevent.get_hub()
        try:
            server = _Server(sock, self.app, connection_limit())
            server.start()
            while not self._stopping:
                gevent.sleep(0.1)
            server.stop(timeout=1)
        finally:
            sock.close()
            self._done = True
            hub.destroy(destroy_loop=True)

    # --- the WSGI application (in the server's thread) ---------------------------------------------------

    def app(self, environ, start_response):
        path = environ.get("PATH_INFO") or "/"
        handler = self._routes.get(path.rstrip("/") or "/")
        try:
            status, content_type, body = handler() if handler else (404, TEXT, "Not found")
        except Exception as error:  # noqa: BLE001 - a health check must answer
            status, content_type, body = 500, TEXT, f"[Error] {type(error).__name__}"
        data = body if isinstance(body, bytes) else body.encode()
        start_response(f"{status} {_REASONS[status]}", [("Content-Type", content_type),
                                                        ("Content-Length", str(len(data))),
                                                        ("Cache-Control", "no-store")])
        return [data]

    def _root(self):
        lines = ["[Exekutor]",
                 " - Use GET /ready to check whether the worker is running and connected to the DB",
                 " - Use GET /live to check whether the worker is running and is not hanging",
                 " - Use GET /threads to check thread usage"]
        if self.worker.metrics.enabled:
            lines.append(" - Use GET /metrics for Prometheus metrics")
        return 200, TEXT, "\n".join(lines) + "\n"

    def _live(self):
        beat = datetime.fromtimestamp(self.worker.heartbeat.last_beat, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        return self._answer(self.live_problems(), f"Heartbeat: {beat}")

    def _ready(self):
        return self._answer(self.ready_problems())

    def _answer(self, problems, *fields):
        parts = [f"ID: {self.worker.id}", f"State: {self.worker.state}", *fields]
        if problems:
            return 503, TEXT, "[Service unavailable] " + "; ".join(parts + ["Reason: " + ", ".join(problems)])
        return 200, TEXT, "[OK] " + "; ".join(parts)

    def _threads(self):
        if self.worker.state != "started":
            return 503, JSON, json.dumps({"error": "Worker not running"})
        return 200, JSON, json.dumps(self.worker.thread_stats())

    def _metrics(self):
        metrics = self.worker.metrics
        if not metrics.enabled:
            return 404, TEXT, ("Not found: metrics are off (install exekutor-gevent[metrics], "
                               "and do not set metrics: false)")
        try:
            content_type, data = call_in_hub(self._worker_hub, metrics.render, METRICS_TIMEOUT)
        except TimeoutError:
            return 503, TEXT, (f"[Service unavailable] metrics could not be collected within {METRICS_TIMEOUT:g}s: "
                               "the worker's event loop is blocked or overloaded")
        return 200, content_type, data

    # --- the checks -------------------------------------------------------------------------------------

    def live_problems(self):
        worker = self.worker
        problems = []
        if worker.state != "started":
            problems.append(f"worker is {worker.state}")
        age = time.time() - worker.heartbeat.last_beat
        if age > self.heartbeat_timeout:
            problems.append(f"last heartbeat {age:.0f}s ago (healthcheck_timeout: {self.heartbeat_timeout:g}s)")
        threshold, blocked = worker.watchdog.report_after, worker.watchdog.blocked_for()
        if threshold and blocked >= threshold:
            problems.append(f"event loop blocked for {blocked:.1f}s by {worker.watchdog.culprit()}")
        if worker.state == "started":
            problems += [f"{c.name} is not running" for c in worker.components() if c.greenlet and c.greenlet.dead]
            if not worker.liveness.running:
                problems.append("the liveness thread (heartbeat) is not running")
        return problems

    def ready_problems(self):
        problems = self.live_problems()
        if problems:
            return problems
        listener = self.worker.listener
        if listener is not None and not listener.connected:
            problems.append("listener is not connected")
        problems += [f"{c.name} failing ({c.consecutive_errors} errors in a row, last: {describe_error(c.last_error)})"
                     for c in (*self.worker.components(), self.worker.heartbeat) if not c.healthy]
        try:
            problem = call_in_hub(self._worker_hub, lambda: self._probe(DATABASE_TIMEOUT), DATABASE_TIMEOUT + 1)
        except TimeoutError:
            problem = f"database did not answer within {DATABASE_TIMEOUT:g}s"
        if problem:
            problems.append(problem)
        return problems

    def _probe_database(self):
        """SELECT 1 on the worker's pool (in the worker's hub); None when it worked, else why not."""
        try:
            with self.worker.db() as conn, conn.cursor() as cursor:
                cursor.execute("SELECT 1")
        except Exception as error:  # noqa: BLE001
            self.worker.metrics.component_error("healthcheck", error)
            return f"database unreachable ({describe_error(error)})"
        return None


def connection_limit():
    """MAX_CONNECTIONS, or a quarter of the process's open-file limit when that is lower (the worker's database
    connections and files need the rest; an accept that fails for lack of descriptors would stall the server)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS
    return max(16, min(MAX_CONNECTIONS, soft // 4))


class _Server(WSGIServer):
    """gevent's WSGI server, a greenlet per connection, at most `limit` connections.

    Connections waiting for a request (idle, or sending it slowly) are evictable, oldest first: a new connection
    beyond the limit closes one of them. Only when every connection is busy with a request does the server stop
    accepting until one is done (each request is bounded: REQUEST_TIMEOUT, then at most the application's time).
    """

    def __init__(self, sock, application, limit):
        super().__init__(sock, application, log=None, error_log=None, handler_class=_Handler)
        self.limit = limit
        self.connections = {}  # handler -> its greenlet
        self.waiting = {}  # the connections waiting for a request, oldest first: handler -> greenlet
        self._paused = False
        # One accept per turn of the loop: a connection's greenlet evicts the oldest waiting one before the next
        # accept, so descriptors stay at `limit` plus one. (gevent's default accepts up to 100 in a row before
        # any greenlet runs: a burst of idle connections then ran out of descriptors, and accept failed.)
        self.max_accept = 1

    def full(self):  # asked before each accept
        if len(self.connections) < self.limit or self.waiting:
            return False
        self._paused = True  # _resume() starts accepting again
        return True

    def handle(self, sock, address):
        while len(self.connections) >= self.limit and self.waiting:
            oldest = next(iter(self.waiting))
            greenlet = self.waiting.pop(oldest)
            self.connections.pop(oldest, None)
            greenlet.kill(block=False)  # its handler closes the socket
        handler = self.handler_class(sock, address, self)
        self.connections[handler] = gevent.getcurrent()
        try:
            handler.handle()
        finally:
            self.connections.pop(handler, None)
            self.waiting.pop(handler, None)
            self._resume()

    def request_awaited(self, handler):
        if handler in self.connections:
            self.waiting[handler] = self.connections[handler]
            self._resume()

    def request_arrived(self, handler):
        self.waiting.pop(handler, None)

    def _resume(self):
        if self._paused:
            self._paused = False
            self._start_accepting_if_started()

    def stop(self, timeout=None):
        super().stop(timeout)
        gevent.killall(list(self.connections.values()), block=True, timeout=1)


class _Handler(WSGIHandler):
    """pywsgi's handler with deadlines: REQUEST_TIMEOUT for each request line and headers, and for each socket
    read or write. A request body is never read: the connection closes after the answer instead."""

    _deadline = None

    def __init__(self, sock, address, server):
        sock.settimeout(REQUEST_TIMEOUT)
        super().__init__(sock, address, server)

    def handle_one_request(self):
        self.server.request_awaited(self)
        deadline = self._deadline = gevent.Timeout(REQUEST_TIMEOUT)
        deadline.start()
        try:
            return super().handle_one_request()
        except gevent.Timeout as timeout:
            if timeout is not deadline:
                raise
            return None  # too slow: the connection closes
        finally:
            deadline.close()

    def get_environ(self):  # the request line and headers are in
        self._deadline.cancel()
        self.server.request_arrived(self)
        environ = super().get_environ()
        if self.content_length or self.wsgi_input.chunked_input:
            self.close_connection = True
            self.wsgi_input = environ["wsgi.input"] = Input(self.rfile, 0)
        return environ


def describe_error(error):
    """`Type: first line of the message`, with any database password masked."""
    if error is None:
        return "unknown error"
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {redact_url(lines[0])}" if lines else type(error).__name__


def _listen(host, port):
    """A listening socket of the original (unpatched) socket module: the server's own hub takes it over."""
    original = monkey.get_original("socket", ["socket", "getaddrinfo"])
    try:
        family, kind, proto, _, address = original[1](host, port, 0, socket.SOCK_STREAM, 0, socket.AI_PASSIVE)[0]
        sock = original[0](family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(128)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
    except OSError as error:
        raise ConfigError(f"healthcheck_port {port}: cannot listen on {host}:{port}: "
                          f"{error.strerror or error}") from None
    return sock
