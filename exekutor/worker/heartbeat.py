"""The heartbeat: keeps this worker's row fresh on its own schedule, rescues orphaned jobs, reconciles its own.

Every heartbeat_interval, until the worker's row is deleted at the very end of its stop, it:

- updates last_heartbeat_at. If the row is gone, another worker presumed this one dead and its jobs were released
  (they may run elsewhere): it says so (log, `exekutor_worker_presumed_dead` metric), stops the jobs it still runs,
  without an outcome, and registers again (unless it is stopping);
- deletes the rows of workers whose heartbeat is older than worker_timeout (the trigger on that delete puts their
  executing jobs back to pending; the log line and `exekutor_rescued_jobs` count them with the ownerless jobs
  it releases), but only once its own heartbeats have gone through without a gap for
  worker_timeout: after an outage every worker reconnects at its own pace, and the first one back must not take
  the others, whose heartbeats are still in backoff, for dead;
- releases the jobs the database says it owns but it does not hold (a reservation whose reply never arrived),
  while no reservation of its own is in flight.
"""
import logging
import random
import time

import gevent

from exekutor.db.arrays import array
from exekutor.db.queries import HEARTBEAT, OWNED_JOBS, RELEASE_UNHELD, RESCUE_ORPHANS
from exekutor.worker.component import Component

logger = logging.getLogger("exekutor")


class Heartbeat(Component):
    name = "heartbeat"

    def __init__(self, worker, interval, worker_timeout):
        super().__init__(worker)
        self.interval = interval
        self.worker_timeout = worker_timeout
        self.last_beat = time.time()  # registration counts as the first beat
        # time.monotonic() when the last heartbeat that went through was sent, and when the current run of
        # heartbeats without a gap began.
        self.last_success = self.healthy_since = time.monotonic()
        self.gap = 2 * interval + 1.0
        self.rescued_workers = 0
        self.rescued_jobs = 0
        self.presumed_dead = 0
        self.reconciled_jobs = 0

    def run(self):
        # Beats while the worker stops too (its jobs may run for a long wait_for_termination): the worker kills
        # this greenlet right before it deletes its row.
        while True:
            self.beat()
            self.rescue()
            self.reconcile()
            self.succeeded()
            # Jitter keeps workers started together from beating together.
            gevent.sleep(self.interval * (0.9 + 0.2 * random.random()))

    def beat(self):
        sent = time.monotonic()
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(HEARTBEAT, (self.worker.id,))
            alive = cursor.fetchone() is not None
        if not alive:
            self._presumed_dead()
        if not alive or sent - self.last_success > self.gap:
            self.healthy_since = sent
        self.last_success = sent
        self.last_beat = time.time()
        self.worker.ownership_confirmed()

    def _presumed_dead(self):
        self.presumed_dead += 1
        stopped = self.worker.executor.stop_unowned()
        logger.warning("exekutor worker %s: its row was deleted: another worker presumed it dead (no heartbeat "
                       "for worker_timeout, %gs) and released its jobs; stopped %d job(s) it still ran (they run "
                       "again)%s", self.worker.id, self.worker_timeout, stopped,
                       "" if self.worker.stopping else "; registering again")
        if not self.worker.stopping:
            self.worker.register()

    def rescue(self):
        if time.monotonic() - self.healthy_since < self.worker_timeout:
            return  # not yet beating steadily for worker_timeout: others may just be reconnecting, as we were
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(RESCUE_ORPHANS, {"worker_timeout": self.worker_timeout, "worker_id": self.worker.id})
            dead, ownerless, _, released = cursor.fetchone()
        if dead or ownerless:
            self.rescued_workers += dead
            self.rescued_jobs += released + ownerless
            logger.warning("exekutor worker %s: removed %d dead worker(s) (no heartbeat for %gs), whose %d "
                           "executing job(s) went back to pending to run again, and released %d ownerless job(s)",
                           self.worker.id, dead, self.worker_timeout, released, ownerless)

    def reconcile(self):
        """Release jobs owned by this worker in the database that it does not hold."""
        lock = self.worker.provider.reservation_lock
        if not lock.acquire(timeout=1.0):
            return  # a reservation is taking long (a lock on the table): next time
        try:
            released = self._release_unheld()
        finally:
            lock.release()
        if released:
            self.reconciled_jobs += released
            logger.warning("exekutor worker %s: released %d job(s) it owned in the database but was not running "
                           "(a reservation whose reply was lost, or jobs it stopped)", self.worker.id, released)

    def _release_unheld(self):
        executor, completer = self.worker.executor, self.worker.completer
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(OWNED_JOBS, (self.worker.id,))
            rows = cursor.fetchall()
            # Read after the query: an outcome written meanwhile is fenced in RELEASE_UNHELD by status and attempt.
            unwritten = completer.job_ids()
            stray = [(job_id, str(attempts)) for job_id, attempts in rows
                     if job_id not in executor.held and job_id not in unwritten]
            if not stray:
                return 0
            ids, attempts = zip(*stray)
            cursor.execute(RELEASE_UNHELD, {"ids": array(ids), "attempts": array(attempts),
                                            "worker_id": self.worker.id})
            return cursor.fetchone()[0]
