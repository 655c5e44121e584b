"""Scenario 3, silent network failure: a TCP proxy between the worker and PostgreSQL stops forwarding on the
connections open at that moment without closing them (half-open sockets, as when a NAT or a firewall loses its
state), while new connections get through.

Nothing tells the worker: no RST, no FIN, and the proxy's kernel still acknowledges every segment, so TCP
keepalives see a live peer. The listener notices because its silent connection is pinged (every
PING_INTERVAL of silence, answered within PING_TIMEOUT), reconnects, and the provider polls once to catch up
on the notifications it missed; the pooled connections fail by the client-side statement_timeout. The
polling interval is long, so the jobs enqueued during the failure start through that catch-up, not a poll.
"""
import time

import pytest

from exekutor.worker.listener import Listener
from tests.reliability.support import enqueue_work, log, query, reconcile, scalar, wait_drained, wait_for
from tests.tcpproxy import TCPProxy

pytestmark = pytest.mark.slow

_defaults = Listener.__init__.__defaults__
PING_INTERVAL, PING_TIMEOUT = _defaults[0], _defaults[1]
STATEMENT_TIMEOUT = 5
ENV = {"EXEKUTOR_POLLING_INTERVAL": "120", "EXEKUTOR_STATEMENT_TIMEOUT": str(STATEMENT_TIMEOUT),
       "EXEKUTOR_HEARTBEAT_INTERVAL": "2", "EXEKUTOR_WORKER_TIMEOUT": "60"}


def _listeners(rel, worker_id):
    return [row[0] for row in query(rel.db, "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                                    (f"exekutor {worker_id[:8]} listener",))]


def _started_at(rel, tag):
    value = scalar(rel.db, "SELECT extract(epoch FROM min(started_at)) FROM rel_executions WHERE tag = %s", (tag,))
    return float(value) if value is not None else None


def _latency(rel, prefix, timeout):
    """Enqueue one job and return how long it took to start."""
    enqueued = time.time()
    enqueue_work(rel.url, 1, prefix)
    wait_for(lambda: _started_at(rel, f"{prefix}-0"), timeout, f"job {prefix}-0 to run")
    return _started_at(rel, f"{prefix}-0") - enqueued


@pytest.mark.timeout(180)
def test_half_open_connections_are_noticed_and_replaced(rel):
    acknowledged = []
    with TCPProxy.for_url(rel.url) as proxy:
        worker = rel.start_worker(url=proxy.url(rel.url), env=ENV)
        worker_id = worker.worker_id(rel.db)
        wait_for(lambda: _listeners(rel, worker_id), 20, "the worker's listener to connect")
        for i in range(3):  # jobs start through LISTEN within a fraction of a second
            latency = _latency(rel, f"warm{i}", 10)
            acknowledged.append(f"warm{i}-0")
            assert latency < 2, f"a job took {latency:.1f}s to start before the failure"
        (old_listener,) = _listeners(rel, worker_id)

        proxy.stall_existing()
        stalled_at = time.time()
        log(f"proxy stalled {proxy.connection_count} open connection(s) (new ones get through)")
        time.sleep(0.5)
        acknowledged += enqueue_work(rel.url, 20, "during")  # their notification goes into the stalled socket

        bound = PING_INTERVAL + PING_TIMEOUT + 5
        wait_for(lambda: [pid for pid in _listeners(rel, worker_id) if pid != old_listener], bound,
                 f"a new listener connection within ping interval + ping timeout ({bound:g}s)")
        reconnected = time.time() - stalled_at
        wait_for(lambda: all(_started_at(rel, f"during-{i}") for i in range(20)), 30,
                 "the jobs enqueued during the failure to start")
        caught_up = max(_started_at(rel, f"during-{i}") for i in range(20)) - stalled_at
        log(f"listener reconnected {reconnected:.1f}s after the stall (ping every {PING_INTERVAL:g}s of silence, "
            f"{PING_TIMEOUT:g}s to answer); jobs enqueued during the failure all started {caught_up:.1f}s after it")

        after = _latency(rel, "after", 10)
        acknowledged.append("after-0")
        log(f"a job enqueued after the reconnect started in {after:.2f}s (polling interval 120s)")
        assert worker.proc.poll() is None, worker.output()[-3000:]
        assert reconnected <= bound
        assert caught_up <= bound + STATEMENT_TIMEOUT + 5
        assert after < 2, f"notifications do not reach the worker after its reconnect ({after:.1f}s)"
        proxy.resume()
        wait_drained(rel.db, 30)
        result = reconcile(rel.db, "half-open connections", acknowledged=acknowledged)
        worker.stop()
    result.check(failed=0, discarded=0, enqueued=len(acknowledged))


@pytest.mark.timeout(180)
def test_network_partition_then_heal(rel):
    """Every connection, old and new, stalls for a while (a partition): the worker waits it out without
    crashing and runs what was enqueued meanwhile once the network heals."""
    with TCPProxy.for_url(rel.url) as proxy:
        worker = rel.start_worker(url=proxy.url(rel.url), env=dict(ENV, EXEKUTOR_POLLING_INTERVAL="5",
                                                                   EXEKUTOR_CONNECT_TIMEOUT="3"))
        acknowledged = enqueue_work(rel.url, 10, "before")
        wait_drained(rel.db, 20)
        proxy.stall()
        log("network partitioned (old and new connections stall)")
        acknowledged += enqueue_work(rel.url, 50, "partition")
        time.sleep(12)  # the partition itself
        assert worker.proc.poll() is None, worker.output()[-3000:]
        proxy.cut()  # what the kernel does to connections whose peer never answers, in the end
        proxy.resume()
        healed = time.time()
        log("network healed")
        wait_drained(rel.db, PING_INTERVAL + PING_TIMEOUT + 20)
        log(f"the jobs enqueued during the partition ran {time.time() - healed:.1f}s after it healed")
        result = reconcile(rel.db, "network partition", acknowledged=acknowledged)
        worker.stop()
    result.check(failed=0, discarded=0, enqueued=len(acknowledged))
