"""The health check server against real worker processes: real HTTP, real PostgreSQL (through a TCP proxy where
the database must misbehave)."""
import json
import re
import signal
import socket
import time
from datetime import datetime, timezone

import pytest

import exekutor
from tests import health_jobs
from tests.conftest import scalar, wait_for
from tests.health_support import (
    SlowClients,
    closed_by_peer,
    get,
    idle_connections,
    open_file_limit,
    wait_for_status,
    worker_starter,
)
from tests.tcpproxy import TCPProxy

PASSWORD = "pw-never-shown-7f3a"
# Promptly: well under a Kubernetes probe's usual timeout, even when the answer is bad news.
PROMPT = 2.0
# /live while idle and slow clients hold connections open (the hardening requirement).
LIVE_UNDER_LOAD = 1.0
# The server closes a connection that sent no complete request within 5 s; generous for a shared machine.
CLOSED_WITHIN = 15.0


@pytest.fixture
def health_worker(start_worker):
    return worker_starter(start_worker)


@pytest.fixture
def proxy(database_url):
    """A proxy in front of the test database; tests list it before the worker fixture, so it outlives the worker
    (which needs the database to stop cleanly)."""
    with TCPProxy.for_url(database_url) as proxy:
        yield proxy


def job_status(handle):
    row = handle.fetch()
    return row and row["status"]


@pytest.mark.timeout(60)
def test_endpoints_answer_with_the_original_bodies(health_worker, db):
    worker = health_worker()
    worker_id = worker.worker_id(db)

    root = get(worker.port, "/")
    assert root.status == 200 and root.content_type.startswith("text/plain")
    assert root.body.startswith("[Exekutor]\n")
    for endpoint in ("/ready", "/live", "/threads", "/metrics"):
        assert f"GET {endpoint} " in root.body

    ready = wait_for_status(worker.port, "/ready", 200, 20)  # once the listener is connected too
    assert ready.body == f"[OK] ID: {worker_id}; State: started"

    live = get(worker.port, "/live")
    assert live.status == 200
    match = re.fullmatch(rf"\[OK\] ID: {worker_id}; State: started; Heartbeat: (\S+)Z", live.body)
    assert match, live.body
    beat = datetime.fromisoformat(match.group(1)).replace(tzinfo=timezone.utc)
    assert abs((datetime.now(timezone.utc) - beat).total_seconds()) < 60

    threads = get(worker.port, "/threads")
    assert (threads.status, threads.content_type) == (200, "application/json")
    assert json.loads(threads.body) == {"minimum": 1, "maximum": 100, "available": 100, "usage_percent": 0.0}

    for path in ("/nope", "/ready/x", "/favicon.ico"):
        assert get(worker.port, path).status == 404


@pytest.mark.timeout(60)
def test_threads_match_the_pool_and_checks_answer_promptly_when_every_greenlet_is_busy(health_worker):
    worker = health_worker("--threads", "2:5", env={"EXEKUTOR_WAIT_FOR_TERMINATION": "0"})
    exekutor.enqueue_many([health_jobs.sleep.job(30) for _ in range(3)])
    wait_for(lambda: json.loads(get(worker.port, "/threads").body)["available"] == 2, 20, message="3 busy")
    assert json.loads(get(worker.port, "/threads").body) == {
        "minimum": 2, "maximum": 5, "available": 2, "usage_percent": 60.0}

    exekutor.enqueue_many([health_jobs.sleep.job(30) for _ in range(4)])  # two more than the pool holds
    wait_for(lambda: json.loads(get(worker.port, "/threads").body)["available"] == 0, 20, message="all busy")
    assert json.loads(get(worker.port, "/threads").body)["usage_percent"] == 100.0
    for path in ("/live", "/ready", "/threads", "/metrics"):
        response = get(worker.port, path)
        assert response.status == 200 and response.seconds < PROMPT, (path, response)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("job", [health_jobs.block_hub, health_jobs.busy_loop], ids=["time.sleep", "busy-loop"])
def test_live_fails_while_a_job_blocks_the_event_loop_and_recovers(health_worker, db, job):
    worker = health_worker(env={"EXEKUTOR_MAX_BLOCKING_TIME": "1"})
    worker_id = worker.worker_id(db)
    assert get(worker.port, "/live").status == 200
    handle = job.perform_later(6)

    live = wait_for_status(worker.port, "/live", 503, 15, "/live to report the blocked event loop")
    assert live.seconds < PROMPT
    assert live.body.startswith(f"[Service unavailable] ID: {worker_id}; State: started; ")
    assert "Reason: event loop blocked for " in live.body
    assert f"by job {handle.id} ({job.definition.name})" in live.body
    ready = get(worker.port, "/ready")
    assert ready.status == 503 and "event loop blocked" in ready.body and ready.seconds < PROMPT
    threads = get(worker.port, "/threads")  # the server itself is not blocked
    assert threads.status == 200 and threads.seconds < PROMPT

    wait_for_status(worker.port, "/live", 200, 20, "/live to recover after the block")
    wait_for_status(worker.port, "/ready", 200, 20, "/ready to recover after the block")
    wait_for(lambda: job_status(handle) == "completed", 20, message="the blocking job to complete")
    log = worker.output()
    assert f"job {handle.id} ({job.definition.name}) blocked the event loop for " in log
    assert f"in {job.__name__}" in log  # the stack of the block


@pytest.mark.timeout(90)
def test_live_fails_when_the_heartbeat_is_stale_and_recovers(proxy, health_worker, database_url):
    env = {"EXEKUTOR_HEALTHCHECK_TIMEOUT": "3s", "EXEKUTOR_HEARTBEAT_INTERVAL": "0.5"}
    worker = health_worker("--database-url", proxy.url(database_url), env=env)
    assert get(worker.port, "/live").status == 200

    proxy.down()  # heartbeats fail from now on
    live = wait_for_status(worker.port, "/live", 503, 20, "/live to report the stale heartbeat")
    assert re.search(r"Reason: last heartbeat \d+s ago \(healthcheck_timeout: 3s\)", live.body), live.body
    assert live.seconds < PROMPT

    proxy.up()
    wait_for_status(worker.port, "/live", 200, 40, "/live to recover with the heartbeat")


@pytest.mark.timeout(120)
def test_ready_fails_while_postgresql_is_unreachable_and_recovers(proxy, health_worker, database_url, db):
    worker = health_worker("--database-url", proxy.url(database_url, password=PASSWORD))
    worker_id = worker.worker_id(db)
    assert wait_for_status(worker.port, "/ready", 200, 20).body == f"[OK] ID: {worker_id}; State: started"

    proxy.down()
    ready = wait_for_status(worker.port, "/ready", 503, 30, "/ready to report the database down")
    assert ready.body.startswith(f"[Service unavailable] ID: {worker_id}; State: started; Reason: ")
    assert "database unreachable" in ready.body or "listener is not connected" in ready.body
    wait_for(lambda: "database unreachable (OperationalError" in get(worker.port, "/ready").body, 30,
             message="the failed probe in /ready")
    assert get(worker.port, "/ready").seconds < PROMPT
    assert get(worker.port, "/live").status == 200  # a database outage is not a reason to restart the worker

    bodies = [get(worker.port, path).body for path in ("/", "/ready", "/live", "/threads", "/metrics")]
    proxy.up()
    wait_for_status(worker.port, "/ready", 200, 60, "/ready to recover with the database")
    bodies += [get(worker.port, path).body for path in ("/ready", "/metrics")]
    assert not [body for body in bodies if PASSWORD in body]
    assert PASSWORD not in worker.output()


@pytest.mark.timeout(90)
def test_ready_answers_promptly_while_the_database_stalls(proxy, health_worker, database_url):
    worker = health_worker("--database-url", proxy.url(database_url))
    wait_for_status(worker.port, "/ready", 200, 20)

    proxy.stall()  # connections stay open, nothing answers
    try:
        ready = get(worker.port, "/ready")
        assert ready.status == 503 and "database did not answer within 3s" in ready.body, ready
        assert ready.seconds < 3 + PROMPT
        live = get(worker.port, "/live")
        assert live.status == 200 and live.seconds < PROMPT
    finally:
        proxy.resume()
    wait_for_status(worker.port, "/ready", 200, 30, "/ready to recover")


@pytest.mark.timeout(60)
def test_checks_fail_while_the_worker_stops(health_worker, db):
    worker = health_worker(env={"EXEKUTOR_WAIT_FOR_TERMINATION": "20"})
    handle = health_jobs.sleep.perform_later(3)
    wait_for(lambda: job_status(handle) == "executing", 20, message="the job to start")

    worker.signal(signal.SIGTERM)
    live = wait_for_status(worker.port, "/live", 503, 10, "/live to report the stop")
    assert "State: stopping" in live.body and "Reason: worker is stopping" in live.body
    assert get(worker.port, "/ready").status == 503
    threads = get(worker.port, "/threads")
    assert (threads.status, json.loads(threads.body)) == (503, {"error": "Worker not running"})

    assert worker.wait(30) == 0
    assert job_status(handle) == "completed"
    with pytest.raises(OSError):  # the server went away with the worker
        get(worker.port, "/live", timeout=2)


@pytest.mark.timeout(60)
def test_a_port_in_use_is_a_one_line_error_and_nothing_starts(health_worker, db):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        worker = health_worker("--healthcheck-port", port, wait=False)  # the last --healthcheck-port wins
        assert worker.wait(30) == 2
    output = worker.output()
    assert f"healthcheck_port {port}: cannot listen on 127.0.0.1:{port}" in output
    assert "Traceback" not in output
    assert scalar(db, "SELECT count(*) FROM exekutor_workers") == 0



def probe(port, path, timeout=10):
    """get(), or the error that kept it from answering (a starved server times out)."""
    try:
        return get(port, path, timeout=timeout)
    except OSError as error:
        return error


@pytest.mark.timeout(120)
def test_live_and_ready_answer_while_300_idle_and_20_slow_connections_are_open(health_worker):
    worker = health_worker()
    with open_file_limit(4096), SlowClients(worker.port, 20, interval=0.3) as slow, \
            idle_connections(worker.port, 300) as (_, connected):
        time.sleep(1)  # the slow clients have sent a few bytes each
        live = probe(worker.port, "/live")
        ready = probe(worker.port, "/ready")
        threads = probe(worker.port, "/threads")
        assert not isinstance(live, OSError), f"/live did not answer: {live!r}"
        assert live.status == 200 and live.seconds < LIVE_UNDER_LOAD, live
        assert not isinstance(ready, OSError), f"/ready did not answer: {ready!r}"
        assert ready.status == 200 and ready.seconds < PROMPT, ready
        assert not isinstance(threads, OSError) and threads.status == 200, threads
        assert len(connected) == 300  # all of them were accepted, none refused
        assert slow.closed == 0  # within the request timeout, the slow ones are still open
    assert get(worker.port, "/live").status == 200


@pytest.mark.timeout(120)
def test_idle_slow_and_kept_alive_connections_are_closed_within_seconds(health_worker):
    worker = health_worker()
    idle = socket.create_connection(("127.0.0.1", worker.port), timeout=15)
    partial = socket.create_connection(("127.0.0.1", worker.port), timeout=15)
    kept_alive = socket.create_connection(("127.0.0.1", worker.port), timeout=15)
    try:
        kept_alive.sendall(b"GET /live HTTP/1.1\r\nHost: x\r\n\r\n")
        answer = b""
        while b"[OK]" not in answer:
            chunk = kept_alive.recv(65536)
            assert chunk, answer
            answer += chunk
        assert answer.startswith(b"HTTP/1.1 200 ") and b"Connection: close" not in answer, answer

        slowloris = b"GET /live HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 100
        started = time.monotonic()
        open_ones = {"idle": idle, "partial": partial, "kept alive": kept_alive}
        closed_after = {}
        sent = 0
        while open_ones and time.monotonic() - started < CLOSED_WITHIN + 5:
            try:  # a byte every 0.5 s: each read gets data in time, the request as a whole never completes
                partial.send(slowloris[sent:sent + 1])
                sent += 1
            except OSError:
                pass  # closed: the check below sees it
            time.sleep(0.5)
            for name, sock in list(open_ones.items()):
                if closed_by_peer(sock):
                    closed_after[name] = time.monotonic() - started
                    del open_ones[name]
        assert not open_ones, f"still open after {CLOSED_WITHIN + 5:g}s: {sorted(open_ones)} (closed: {closed_after})"
        assert max(closed_after.values()) < CLOSED_WITHIN, closed_after
        assert min(closed_after.values()) > 2, closed_after  # not at once: each had its few seconds
    finally:
        for sock in (idle, partial, kept_alive):
            sock.close()
    assert get(worker.port, "/live").status == 200


@pytest.mark.timeout(120)
def test_connections_beyond_the_limit_close_the_longest_idle_ones_first(health_worker):
    with open_file_limit(256):  # the worker inherits it: at most 64 health check connections
        worker = health_worker()
    with open_file_limit(4096), idle_connections(worker.port, 300) as (sockets, connected):
        live = probe(worker.port, "/live")
        assert not isinstance(live, OSError), f"/live did not answer: {live!r}"
        assert live.status == 200 and live.seconds < LIVE_UNDER_LOAD, live
        assert len(connected) == 300
        # room was made by closing the oldest connections, long before their request timeout (5 s)
        wait_for(lambda: all(closed_by_peer(sock) for sock in sockets[:200]), 3,
                 message="the oldest 200 connections to be closed to make room", interval=0.1)
        assert not any(closed_by_peer(sock) for sock in sockets[-50:])  # the newest ones are still open
    assert "Traceback" not in worker.output()


@pytest.mark.timeout(120)
def test_live_answers_at_once_while_150_ready_requests_wait_on_a_stalled_database(proxy, health_worker,
                                                                                    database_url):
    worker = health_worker("--database-url", proxy.url(database_url))
    proxy.stall()
    try:
        with idle_connections(worker.port, 150) as (_, connected):
            for sock in connected:
                sock.sendall(b"GET /ready HTTP/1.1\r\nHost: x\r\n\r\n")
            time.sleep(0.5)  # they wait for the database (3 s)
            live = probe(worker.port, "/live")
            assert not isinstance(live, OSError), f"/live did not answer: {live!r}"
            assert live.status == 200 and live.seconds < LIVE_UNDER_LOAD, live
            assert len(connected) == 150
    finally:
        proxy.resume()
    wait_for_status(worker.port, "/ready", 200, 30, "/ready to recover")
