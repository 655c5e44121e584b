"""The ownership guard: a worker that may have been presumed dead stops its jobs before they go on.

Other workers presume this one dead when its heartbeat is older than worker_timeout, and release its jobs, which
may then run elsewhere. That happens to a live worker whose event loop was blocked (a job doing CPU work or a
blocking C call, the process stopped with SIGSTOP) or that was cut off from the database for that long. If its
jobs simply carried on afterwards, they would run twice at the same time.

So the guard watches the time since the last heartbeat that went through (measured from when it was sent, which
is no later than the time the database recorded). Once that exceeds worker_timeout less a margin, every job the
worker holds is stopped without an outcome (the release, or the heartbeat's reconciliation, puts it back to
pending) and the worker reserves nothing until a heartbeat goes through again. The check runs in the event loop's
*prepare* phase, which comes before any greenlet resumes after a block: the jobs are killed before they run
another line. A periodic timer keeps the check going while the loop is otherwise idle (cut off from the database).
"""
import logging
import time

import gevent

logger = logging.getLogger("exekutor")

CHECK_PERIOD = 0.25


class OwnershipGuard:
    def __init__(self, worker, heartbeat, worker_timeout):
        self.worker = worker
        self.heartbeat = heartbeat
        self.limit = worker_timeout - max(1.0, 0.1 * worker_timeout)
        self.tripped = False
        self.trips = 0
        self._watchers = []

    def start(self):
        loop = gevent.get_hub().loop
        prepare = loop.prepare(ref=False)
        prepare.start(self.check)
        timer = loop.timer(CHECK_PERIOD, CHECK_PERIOD, ref=False)
        timer.start(self.check)
        self._watchers = [prepare, timer]

    def stop(self):
        for watcher in self._watchers:
            watcher.stop()
            watcher.close()
        self._watchers = []

    def check(self):
        if self.tripped or time.monotonic() - self.heartbeat.last_success < self.limit:
            return
        try:
            self._trip(time.monotonic() - self.heartbeat.last_success)
        except Exception:  # noqa: BLE001 - this runs in the hub, which must not see our errors
            logger.exception("exekutor worker %s: the ownership guard failed", self.worker.id)

    def _trip(self, silent):
        self.tripped = True
        self.trips += 1
        stopped = self.worker.executor.stop_unowned()
        # Logged from a greenlet: a log handler may do IO, which the hub (where this runs) cannot wait for.
        gevent.spawn(logger.warning, "exekutor worker %s: no heartbeat went through for %.1fs (worker_timeout %gs): "
                     "other workers may presume it dead and run its jobs, so it stopped the %d job(s) it ran and "
                     "reserves nothing until a heartbeat goes through", self.worker.id, silent,
                     self.heartbeat.worker_timeout, stopped)

    def confirmed(self):
        """A heartbeat went through: the worker owns its jobs again."""
        self.tripped = False
