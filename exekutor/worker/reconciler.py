"""The reconciler: releases jobs the database says this worker owns but it does not run.

A reservation whose reply never arrived (cut off by statement_timeout after it committed, a lost reply) and jobs the
worker stopped without an outcome (the ownership guard) stay executing under this worker's id. Every
heartbeat_interval, when no reservation of its own was in flight while it asked, this component compares the
database with what the executor holds and releases the difference, each at the attempt seen (fenced like a
completion).
"""
import logging

import gevent

from exekutor.db.arrays import array
from exekutor.db.queries import OWNED_JOBS, RELEASE_UNHELD, UNBLOCK
from exekutor.worker.component import Component

logger = logging.getLogger("exekutor")

MAX_OVERLAPPED = 3


class Reconciler(Component):
    name = "reconciler"

    def __init__(self, worker, interval):
        super().__init__(worker)
        self.interval = interval
        self.reconciled_jobs = 0
        self._overlapped = 0  # rounds in a row skipped because a reservation overlapped them

    def run(self):
        while True:
            gevent.sleep(self.interval)
            self.reconcile()
            self.succeeded()

    def reconcile(self):
        released = self._release_unheld()
        if released is None:  # a reservation overlapped: after a few such rounds, hold reservations back briefly
            self._overlapped += 1
            if self._overlapped < MAX_OVERLAPPED:
                return
            lock = self.worker.provider.reservation_lock
            if not lock.acquire(timeout=1.0):
                return
            try:
                released = self._release_unheld(locked=True)
            finally:
                lock.release()
        self._overlapped = 0
        if released:
            self.reconciled_jobs += released
            logger.warning("exekutor worker %s: released %d job(s) it owned in the database but was not running "
                           "(a reservation whose reply was lost, or jobs it stopped)", self.worker.id, released)

    def _release_unheld(self, locked=False):
        """The number of jobs released, or None when a reservation of ours overlapped the question (`locked`: the
        caller holds the provider's reservation lock, so none can)."""
        executor, completer, provider = self.worker.executor, self.worker.completer, self.worker.provider
        # No reservation of ours may be in flight while the owned jobs are read: its jobs would look unheld. Checked
        # before and after instead of holding the provider's lock, which a slow query would hold against it.
        begun = provider.reservations_begun
        if provider.reservation_lock.locked() and not locked:
            return None
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(OWNED_JOBS, (self.worker.id,))
            rows = cursor.fetchall()
            if not locked and (provider.reservation_lock.locked() or provider.reservations_begun != begun):
                return None  # one overlapped the query: next time
            # Read after the query: an outcome written meanwhile is fenced in RELEASE_UNHELD by status and attempt.
            unwritten = completer.job_ids()
            stray = [(job_id, str(attempts)) for job_id, attempts in rows
                     if job_id not in executor.held and job_id not in unwritten]
            if not stray:
                return 0
            ids, attempts = zip(*stray)
            cursor.execute(RELEASE_UNHELD, {"ids": array(ids), "attempts": array(attempts),
                                            "worker_id": self.worker.id})
            released = cursor.fetchone()[0]
            if released:
                cursor.execute(UNBLOCK, (None,))  # the slots of limited jobs among them came free
            return released
