"""The reconciler: releases jobs the database says this worker owns but it does not run.

A reservation whose reply never arrived (cut off by statement_timeout after it committed, a lost reply) and jobs the
worker stopped without an outcome (the ownership guard) stay executing under this worker's id. Every
heartbeat_interval, while no reservation of its own is in flight, this component compares the database with what
the executor holds and releases the difference, each at the attempt seen (fenced like a completion).
"""
import logging

import gevent

from exekutor.db.arrays import array
from exekutor.db.queries import OWNED_JOBS, RELEASE_UNHELD
from exekutor.worker.component import Component

logger = logging.getLogger("exekutor")


class Reconciler(Component):
    name = "reconciler"

    def __init__(self, worker, interval):
        super().__init__(worker)
        self.interval = interval
        self.reconciled_jobs = 0

    def run(self):
        while True:
            gevent.sleep(self.interval)
            self.reconcile()
            self.succeeded()

    def reconcile(self):
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
