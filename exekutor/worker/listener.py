"""The listener: a dedicated autocommit connection that LISTENs for new jobs and wakes the provider.

It waits on the connection's socket (cooperatively), filters notifications by the worker's queues and
priority range, and tells the provider "work now" or "work at T". A silent connection is pinged, so a
half-open socket is noticed; after any reconnect the provider polls to catch up on missed notifications.
"""
import json
import logging
import time

import gevent
from gevent.socket import wait_read

from exekutor.db.connection import close_quietly, connect
from exekutor.db.queries import LISTEN
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

    def run(self):
        self.conn = connect(application_name=self.worker.connection_name("listener"), autocommit=True)
        try:
            with self.conn.cursor() as cursor:
                cursor.execute(LISTEN)
            self.connected = True
            self.succeeded()
            # Notifications sent while we were not listening are lost: poll once to catch up.
            self.provider.poll_now()
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
                notifications, self.conn.notifies[:] = list(self.conn.notifies), []
                for notification in notifications:
                    self._handle(notification.payload)
            elif time.monotonic() - last_activity >= self.ping_interval:
                self._ping()
                last_activity = time.monotonic()

    def _ping(self):
        """A silent connection may be half-open: a query that does not answer in time proves it."""
        with gevent.Timeout(self.ping_timeout, ConnectionError(
                f"listener connection did not answer a ping within {self.ping_timeout}s")):
            with self.conn.cursor() as cursor:
                cursor.execute("SELECT 1")

    def _handle(self, payload):
        try:
            message = json.loads(payload)
            queue, priority, scheduled = message["q"], int(message["p"]), float(message["t"])
        except (ValueError, KeyError, TypeError):
            logger.warning("exekutor listener ignored a malformed notification: %.200r", payload)
            return
        if self.worker.accepts(queue, priority):
            self.provider.job_available(scheduled)

    def stop(self):
        """Wake the listener out of its wait so it sees the worker stopping."""
        self.kill(block=False)
