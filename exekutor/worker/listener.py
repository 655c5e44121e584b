"""The listener: a dedicated autocommit connection that LISTENs for new jobs and wakes the provider, and for
cancel requests, which it hands to the worker's cancellation component.

It waits on the connection's socket (cooperatively), filters notifications by the worker's queues and
priority range, and tells the provider "work now" or "work at T". A silent connection is pinged, so a
half-open socket is noticed; after any reconnect the provider polls to catch up on missed notifications.

Any role may NOTIFY on the channel, so a notification is untrusted input: one that is not what exekutor sends
(not JSON, missing fields, a priority out of range, a time that is not a finite number) is ignored and counted,
never allowed to stop the listener or a timer.
"""
import json
import logging
import math
import time

import gevent
from gevent.socket import wait_read

from exekutor.db.connection import close_quietly, connect
from exekutor.db.queries import CANCEL_CHANNEL, LISTEN
from exekutor.worker.component import Component

logger = logging.getLogger("exekutor")


class Listener(Component):
    name = "listener"

    def __init__(self, worker, provider, ping_interval=15.0, ping_timeout=10.0):
        super().__init__(worker)
        self.provider = provider
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.connected = False
        self.conn = None
        self.malformed = 0  # notifications ignored as malformed

    def run(self):
        self.conn = connect(application_name=self.worker.connection_name("listener"), autocommit=True)
        try:
            with self.conn.cursor() as cursor:
                cursor.execute(LISTEN)
            self.connected = True
            self.succeeded()
            # Notifications sent while we were not listening are lost: poll once to catch up.
            self.provider.notifications_lost()
            self.worker.cancellation.check_now()
            self._listen()
        finally:
            self.connected = False
            close_quietly(self.conn)

    def _listen(self):
        last_activity = time.monotonic()
        while not self.worker.stopping:
            try:
                wait_read(self.conn.fileno(), timeout=self.ping_interval)
            except gevent.socket.timeout:
                pass
            self.conn.poll()
            if self.conn.notifies:
                last_activity = time.monotonic()
            elif time.monotonic() - last_activity >= self.ping_interval:
                self._ping()
                last_activity = time.monotonic()
            # Including those that arrived with the ping's answer: they must not wait for the next wake.
            self._drain()

    def _drain(self):
        while self.conn.notifies:
            notifications, self.conn.notifies[:] = list(self.conn.notifies), []
            for notification in notifications:
                if notification.channel == CANCEL_CHANNEL:
                    self.worker.cancellation.notified(notification.payload)
                else:
                    self._handle(notification.payload)

    def _ping(self):
        """A silent connection may be half-open: a query that does not answer in time proves it. One to a server
        that turned read-only (a primary fenced after a failover) listens where no job is enqueued any more: it
        counts as lost, and the reconnect finds the server that writes."""
        with gevent.Timeout(self.ping_timeout, ConnectionError(
                f"listener connection did not answer a ping within {self.ping_timeout}s")):
            with self.conn.cursor() as cursor:
                cursor.execute("SELECT current_setting('transaction_read_only')")
                read_only = cursor.fetchone()[0] == "on"
        if read_only:
            raise ConnectionError("the listener's server is read-only now (a standby, or a primary fenced after a "
                                  "failover): connecting again")

    def _handle(self, payload):
        parsed = parse_notification(payload)
        if parsed is None:
            self.malformed += 1
            logger.warning("exekutor listener ignored a malformed notification: %.200r", payload)
            return
        queue, lowest, highest, earliest, latest = parsed
        if self.worker.accepts(queue, lowest, highest):
            self.provider.job_available(earliest, latest, lowest, highest, queue)

    def stop(self):
        """Wake the listener out of its wait so it sees the worker stopping."""
        self.kill(block=False)


def parse_notification(payload):
    """(queue, lowest priority, highest priority, earliest time, latest time) of a notification, or None if it
    is not one exekutor sends. Notifications of schema 0001 have no P and T: they read as p and t."""
    try:
        message = json.loads(payload)
        queue, lowest, earliest = message["q"], message["p"], message["t"]
        highest, latest = message.get("P", lowest), message.get("T", earliest)
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
        return None
    if not isinstance(queue, str) or not all(_is_priority(p) for p in (lowest, highest)) or lowest > highest:
        return None
    if not all(_is_time(t) for t in (earliest, latest)) or earliest > latest:
        return None
    return queue, int(lowest), int(highest), float(earliest), float(latest)


def _is_priority(value):
    return isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 32767


# The epoch seconds PostgreSQL's timestamps can hold (4714 BC to 294276 AD): a time outside cannot be a job's, and a
# floor lowered to it would make the reservation's to_timestamp() fail.
OLDEST, NEWEST = -210866803200.0, 9224318016000.0


def _is_time(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) \
        and OLDEST <= value < NEWEST
