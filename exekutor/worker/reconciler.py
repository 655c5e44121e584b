"""The reconciler: releases jobs the database says this worker owns but it does not run.

A reservation whose reply never arrived (cut off by statement_timeout after it committed, a lost reply) and jobs the
worker stopped without an outcome (the ownership guard) stay executing under this worker's id. Every
heartbeat_interval, when no reservation of its own was in flight while it asked, this component compares the
database with what the executor holds and releases the difference, each at the attempt seen (fenced like a
completion).

Each round asks only for the runs started since a bound (`since`, the database's clock), not for every run the
executing index remembers (an entry per run until a VACUUM, which a long-held snapshot prevents). The invariant:
every job executing under this worker's id in the database started at or after `since`. It holds at the start
(all runs), and a round that saw no reservation of its own in flight sets the next bound to the earliest of the
round's now() and the start of every run it saw and kept (held, or its outcome still to be written): a job owned at
the next round either was seen by this one (kept, so not earlier than the bound, or released) or was started after
it by a reservation or a slot hand-over of this worker, which began after this round's question, so at a later
now(). MARGIN covers the database's clock stepping back; every FULL_EVERY rounds the question covers all runs.
"""
import logging

import gevent

from exekutor.db.arrays import array
from exekutor.db.queries import OWNED_JOBS, OWNED_JOBS_SINCE, RELEASE_UNHELD, UNBLOCK
from exekutor.worker.component import Component

logger = logging.getLogger("exekutor")

MAX_OVERLAPPED = 3
MARGIN = 5.0  # seconds
FULL_EVERY = 50  # rounds


class Reconciler(Component):
    name = "reconciler"

    def __init__(self, worker, interval):
        super().__init__(worker)
        self.interval = interval
        self.reconciled_jobs = 0
        self._overlapped = 0  # rounds in a row skipped because a reservation overlapped them
        self._since = None  # no job this worker owns in the database started before (None: unknown)
        self._rounds = 0

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
        self._rounds += 1
        since = None if self._rounds % FULL_EVERY == 0 else self._since
        with self.worker.db() as conn, conn.cursor() as cursor:
            if since is None:
                cursor.execute(OWNED_JOBS, {"worker_id": self.worker.id})
            else:
                cursor.execute(OWNED_JOBS_SINCE, {"worker_id": self.worker.id, "since": since})
            ids, attempts, starts, now = cursor.fetchone()
            if not locked and (provider.reservation_lock.locked() or provider.reservations_begun != begun):
                return None  # one overlapped the query: next time
            # Read after the query: an outcome written meanwhile is fenced in RELEASE_UNHELD by status and attempt.
            unwritten = completer.job_ids()
            stray = [(job_id, str(attempt)) for job_id, attempt in zip(ids, attempts)
                     if job_id not in executor.held and job_id not in unwritten]
            kept = [start for job_id, start in zip(ids, starts) if job_id in executor.held or job_id in unwritten]
            released = 0
            if stray:
                stray_ids, stray_attempts = zip(*stray)
                cursor.execute(RELEASE_UNHELD, {"ids": array(stray_ids), "attempts": array(stray_attempts),
                                                "worker_id": self.worker.id})
                released = cursor.fetchone()[0]
                if released:
                    cursor.execute(UNBLOCK, (None,))  # the slots of limited jobs among them came free
        # A kept run without a start time (reserved by a worker of schema 0001) keeps the next question whole.
        self._since = None if None in kept else min([now, *kept]) - MARGIN
        return released
