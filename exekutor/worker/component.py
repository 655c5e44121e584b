"""A worker component: one long-lived greenlet that restarts itself after errors, with backoff.

A component whose loop raises (the database went away, a query failed) reports the error through the
on_fatal_error hooks and the log, sleeps with exponential backoff (capped at 10 s, at 2 s when the connection was
lost), and runs again: the worker
never busy-loops and never exits because the database was down for a while.
"""
import logging

import gevent
import psycopg2

from exekutor import hooks
from exekutor.db.connection import on_read_only_server

logger = logging.getLogger("exekutor")

# The longest wait before connecting again after the database was lost. Connecting is cheap (refused at once, or
# bounded by connect_timeout), and a server that comes back (a restart, a standby promoted after a failover) should
# find every loop back within this, not after the 10 s the backoff reaches for other errors: measured with a
# promotion 15 s after the primary stopped, the worker sat idle 7.5 s after it while the enqueuer already wrote.
RECONNECT_BACKOFF = 2.0


class Backoff:
    def __init__(self, initial=0.1, maximum=10.0):
        self.initial, self.maximum = initial, maximum
        self.current = initial

    def next(self):
        delay = self.current
        self.current = min(self.maximum, self.current * 2)
        return delay

    def reset(self):
        self.current = self.initial


class ErrorStreak:
    """Errors in a row of a loop that never dies of one: counted, logged, reported to the metrics, and spaced by
    the backoff. Components have one; so has the heartbeat, which runs on the liveness thread."""

    name = "component"
    # After this many errors in a row the loop counts as unhealthy (health checks say so).
    ERROR_THRESHOLD = 5

    def __init__(self, worker):
        self.worker = worker
        self.consecutive_errors = 0
        self.last_error = None
        self._backoff = Backoff()

    @property
    def healthy(self):
        return self.consecutive_errors < self.ERROR_THRESHOLD

    def succeeded(self):
        """Called by the loop after a round that worked: clears the error streak."""
        if self.consecutive_errors:
            logger.info("exekutor %s recovered after %d error(s)", self.name, self.consecutive_errors)
        self.consecutive_errors = 0
        self.last_error = None
        self._backoff.reset()

    def failed(self, error, longest=None):
        """Count and report `error`; the seconds to wait before the next round (at most `longest`)."""
        self.consecutive_errors += 1
        self.last_error = error
        self.worker.metrics.component_error(self.name, error)
        delay = self._backoff.next()
        if lost_connection(error):
            delay = min(delay, RECONNECT_BACKOFF)
        if longest is not None:
            delay = min(delay, longest)
        logger.error("exekutor %s error (%d in a row, retrying in %.1fs): %s: %s", self.name,
                     self.consecutive_errors, delay, type(error).__name__, str(error).strip())
        return delay


def lost_connection(error):
    """Whether `error` means the database is out of reach (or read-only: see on_read_only_server)."""
    return isinstance(error, (psycopg2.OperationalError, psycopg2.InterfaceError, ConnectionError)) \
        or on_read_only_server(error)


class Component(ErrorStreak):
    def __init__(self, worker):
        super().__init__(worker)
        self.greenlet = None

    def start(self):
        self.greenlet = gevent.spawn(self._supervise)
        self.greenlet.name = f"exekutor-{self.name}"
        return self.greenlet

    def _supervise(self):
        while True:
            try:
                self.run()
                return
            except gevent.GreenletExit:
                raise
            except Exception as error:  # noqa: BLE001 - a component never dies of an error
                delay = self.failed(error)
                if lost_connection(error):
                    self.worker.database_unreachable()
                hooks.run_on("on_fatal_error", error)
                if self.worker.stopped_or_killed():
                    return
                gevent.sleep(delay)

    def run(self):
        raise NotImplementedError

    def kill(self, block=True, timeout=None):
        if self.greenlet is not None:
            self.greenlet.kill(block=block, timeout=timeout)

    def join(self, timeout=None):
        if self.greenlet is not None:
            self.greenlet.join(timeout)
