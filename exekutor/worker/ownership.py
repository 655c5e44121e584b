"""The ownership guard: a worker that may have been presumed dead stops its jobs before they go on.

Other workers presume this one dead when its heartbeat is older than worker_timeout, and release its jobs, which
may then run elsewhere. The heartbeat beats from a thread of its own, so a job blocking the event loop does not
cause that; what does is the whole process stopped (SIGSTOP, swapping), the worker cut off from the database for
that long, or a loop wedged for good (the watchdog then stops the heartbeat). If its jobs simply carried on
afterwards, they would run twice at the same time.

So the guard watches the time since the last heartbeat that went through (measured from when it was sent, which
is no later than the time the database recorded). Once that exceeds worker_timeout less a margin, every job the
worker holds is stopped without an outcome (the release, or the heartbeat's reconciliation, puts it back to
pending) and the worker reserves nothing until a heartbeat goes through again; the same happens at once when the
heartbeat finds the worker's row deleted. The check runs in the event loop's *prepare* phase, which comes before
any greenlet resumes after a block: the jobs are killed before they run another line. A periodic timer keeps the
check going while the loop is otherwise idle (cut off from the database).

Each check also records when the loop last turned (`loop_seen`): the watchdog, on the liveness thread, reads it to
see that the loop is blocked.
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
        self.loop_seen = time.monotonic()  # when the worker's event loop last turned
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
        now = self.loop_seen = time.monotonic()
        if self.tripped:
            return
        silent = now - self.heartbeat.last_success
        if silent < self.limit and not self.heartbeat.lost:
            return
        try:
            stopped = self.trip()
            # Logged from a greenlet: a log handler may do IO, which the hub (where this runs) cannot wait for.
            gevent.spawn(logger.warning, "exekutor worker %s: no heartbeat went through for %.1fs (worker_timeout "
                         "%gs): other workers may presume it dead and run its jobs, so it stopped the %d job(s) it "
                         "ran and reserves nothing until a heartbeat goes through", self.worker.id, silent,
                         self.heartbeat.worker_timeout, stopped)
        except Exception:  # noqa: BLE001 - this runs in the hub, which must not see our errors
            logger.exception("exekutor worker %s: the ownership guard failed", self.worker.id)

    def trip(self):
        """Stop every job the worker holds (in the hub: before any of them resumes); the number stopped. Nothing is
        reserved until `confirmed`."""
        if self.tripped:
            return 0
        self.tripped = True
        self.trips += 1
        return self.worker.executor.stop_unowned()

    def confirmed(self):
        """A heartbeat found the worker's row (called from the liveness thread): it owns its jobs again."""
        if self.tripped:
            self.tripped = False
            self.worker.in_hub(self.worker.provider.poll_now)  # reserve again now, not at the next poll
