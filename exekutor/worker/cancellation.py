"""Cancellation: operators' cancel requests for the jobs this worker runs reach the executor.

A request is recorded in the job's row (exekutor.operations) and announced on the `exekutor::job_cancelled`
channel. The listener hands announcements for this worker here, and the executor interrupts the job at once. A
notification can be missed (the listener was reconnecting, it is disabled behind PgBouncer), so every
polling_interval, and after each reconnect of the listener, this component also asks the database which of this
worker's jobs have a cancel request: a request is honoured within one poll interval at the latest.
"""
import json
import logging

from gevent.event import Event

from exekutor.db.arrays import array
from exekutor.db.queries import CANCEL_REQUESTED
from exekutor.worker.component import Component

logger = logging.getLogger("exekutor")


class Cancellation(Component):
    name = "cancellation"

    def __init__(self, worker, executor):
        super().__init__(worker)
        self.executor = executor
        self._wake = Event()
        self.malformed = 0

    def run(self):
        # Also while the worker stops: its jobs may run for all of wait_for_termination. The worker kills it.
        while True:
            self.check()
            self.succeeded()
            self._wake.wait(self.worker.provider.poll_delay())
            self._wake.clear()

    def check_now(self):
        self._wake.set()

    def check(self):
        # A reservation in flight holds jobs that are ours in the database but not yet in the executor: wait for
        # it, so that a check made for it (see notified) finds them.
        with self.worker.provider.reservation_lock:
            pass
        held = list(self.executor.held)
        if not held:
            return  # nothing of ours can be cancelled: no query for an idle worker
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(CANCEL_REQUESTED, {"ids": array(held), "worker_id": self.worker.id})
            rows = cursor.fetchall()
        for (job_id,) in rows:
            self.executor.cancel(job_id)

    def notified(self, payload):
        """A notification on the cancel channel; anyone may NOTIFY there, so it is checked like untrusted input."""
        try:
            message = json.loads(payload)
            worker_id, job_ids = message["w"], message["j"]
        except (ValueError, KeyError, TypeError, RecursionError):
            worker_id, job_ids = None, None
        if not isinstance(worker_id, str) or not isinstance(job_ids, list):
            self.malformed += 1
            logger.warning("exekutor listener ignored a malformed cancel notification: %.200r", payload)
            return
        if worker_id != self.worker.id:
            return
        unknown = [job_id for job_id in job_ids if isinstance(job_id, str) and not self.executor.cancel(job_id)]
        if unknown and self.worker.provider.reservation_lock.locked():
            # Reserved by the statement whose answer is still on its way: the check after it finds them.
            self.check_now()
