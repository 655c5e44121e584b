"""The completer: writes job outcomes in batches, fenced by owner.

Outcomes accumulate while a flush is in flight, so one statement writes all jobs that finished in the
meantime; the provider reserves on its own connection and never waits for it. Outcomes that cannot be
written (the database is down) stay in memory and are written when it is back.
"""
import logging

from gevent.event import Event

from exekutor.db.arrays import array, number, quoted
from exekutor.db.queries import complete_jobs
from exekutor.execution import RELEASE, RETRY
from exekutor.worker.component import Component

logger = logging.getLogger("exekutor")

MAX_BATCH = 2000


class Completer(Component):
    name = "completer"

    def __init__(self, worker, json_dumps, delete_statuses):
        super().__init__(worker)
        self._dumps = json_dumps
        self._delete_statuses = list(delete_statuses)
        self._pending = []
        self._wake = Event()
        self.written = 0
        self.fenced_off = 0

    def add(self, outcome):
        self._pending.append(outcome)
        self._wake.set()

    def pending_count(self):
        return len(self._pending)

    def run(self):
        # Runs until the worker kills it after the last outcomes are written (see Worker._write_outcomes).
        while True:
            if not self._pending:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self.flush()
            self.succeeded()

    def flush(self):
        batch = self._pending[:MAX_BATCH]
        sql, params = completion(batch, self.worker.id, self._dumps, self._delete_statuses)
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(sql, params)
            written = cursor.fetchone()[0]
        del self._pending[:len(batch)]
        self.written += written
        # Written outcomes free capacity the provider held back while they piled up.
        self.worker.capacity_freed()
        if written < len(batch):
            # Jobs we no longer own were rescued from us (our heartbeat was presumed dead): not written.
            self.fenced_off += len(batch) - written
            logger.warning("exekutor completer: %d outcome(s) not written because the jobs are no longer "
                           "owned by this worker", len(batch) - written)

    def stop(self):
        self._wake.set()


def completion(batch, worker_id, dumps, delete_statuses=()):
    """(sql, params) writing a batch of outcomes in one statement, with only the parts the batch needs.

    Each column goes as one array literal (see exekutor.db.arrays).
    """
    finished, requeued, deleted, errors = ([], [], []), ([], [], []), [], ([], [])
    for outcome in batch:
        status = outcome.status
        if status in _REQUEUED:
            ids, runtimes, delays = requeued
            delays.append(number(outcome.delay or 0.0))
        elif status in delete_statuses:
            deleted.append(outcome.job_id)
            continue
        else:
            ids, runtimes, statuses = finished
            statuses.append(status)
        ids.append(outcome.job_id)
        runtimes.append(number(outcome.runtime))
        if outcome.error is not None:
            errors[0].append(outcome.job_id)
            errors[1].append(quoted(dumps(outcome.error)))
    params = {"worker_id": worker_id}
    parts = []
    if finished[0]:
        parts.append("finished")
        params.update(finished_ids=array(finished[0]), finished_runtimes=array(finished[1]),
                      finished_statuses=array(finished[2]))
    if requeued[0]:
        parts.append("requeued")
        params.update(requeued_ids=array(requeued[0]), requeued_runtimes=array(requeued[1]),
                      requeued_delays=array(requeued[2]))
    if deleted:
        parts.append("deleted")
        params["deleted_ids"] = array(deleted)
    with_errors = bool(errors[0]) and parts != ["deleted"]
    if with_errors:
        params.update(error_ids=array(errors[0]), errors=array(errors[1]))
    return complete_jobs(tuple(parts), with_errors), params


_REQUEUED = (RETRY, RELEASE)
