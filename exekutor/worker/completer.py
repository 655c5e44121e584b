"""The completer: writes job outcomes in batches, fenced by owner.

Outcomes accumulate while a flush is in flight, so one statement writes all jobs that finished in the
meantime; the provider reserves on its own connection and never waits for it. Outcomes that cannot be
written because the database is unavailable stay in memory and are written when it is back.

An outcome the database refuses for what it contains (a data error: text the server's encoding lacks, a value out
of range, anything the serializer cannot encode) must never hold back the others, or the worker would stall with
its heartbeat still beating and nothing would rescue its jobs. Error records are made storable before they are
written (exekutor.error_records); if a batch is refused all the same, it is split in halves until the outcome
that is refused is alone, and that one is written with a minimal error record, then without one. No outcome is
retried for its content.
"""
import datetime as _dt
import logging
import time
from collections import Counter

import psycopg2
from gevent.event import Event

from exekutor.db.arrays import array, number, quoted
from exekutor.db.queries import UNBLOCK, complete_jobs
from exekutor.definitions import clamp_delay
from exekutor.error_records import codec_for, fit_record, minimal_record
from exekutor.execution import RELEASE, RETRY, Outcome
from exekutor.worker.component import Component
from exekutor.worker.provider import job_info

logger = logging.getLogger("exekutor")

MAX_BATCH = 2000


class Completer(Component):
    name = "completer"

    def __init__(self, worker, json_dumps, delete_statuses):
        super().__init__(worker)
        self.dumps = json_dumps
        self._delete_statuses = list(delete_statuses)
        self._pending = []
        self._handed_off = Counter()  # per limit key: slots of the batch being written passed on (see _write)
        self._wake = Event()
        self.written = 0
        self.fenced_off = 0
        self.refused = 0  # outcomes written with a minimal record, or dropped, because the database refused them
        self.statements = 0  # completion statements that went through, and the seconds they took (for /metrics)
        self.statement_seconds = 0.0

    def add(self, outcome):
        self._pending.append(outcome)
        self._wake.set()

    def pending_count(self):
        return len(self._pending)

    def job_ids(self):
        """The jobs whose outcome waits to be written (they are still executing in the database)."""
        return {outcome.job_id for outcome in self._pending}

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
        self._handed_off = Counter()
        written = self._write_splitting(batch)
        self.written += written
        # Slots the batch freed that no handed-off job took (a retry, a job with several limits, nothing waiting).
        freed = Counter(key for outcome in batch if outcome.holds for key in outcome.holds)
        self._unblock({key for key, count in freed.items() if count > self._handed_off[key]})
        # Written outcomes free capacity the provider held back while they piled up.
        self.worker.capacity_freed()
        if written < len(batch):
            # Jobs we no longer own at the attempt we ran were rescued from us (we were presumed dead): not written.
            self.fenced_off += len(batch) - written
            logger.warning("exekutor completer: %d outcome(s) not written because the jobs are no longer "
                           "owned by this worker", len(batch) - written)

    def _unblock(self, keys):
        """The slots these outcomes freed go to the next jobs their limits hold back (one statement, after the
        outcomes committed, so that it sees the slots free). If it fails, the provider's sweep does it later."""
        if not keys:
            return
        try:
            with self.worker.db() as conn, conn.cursor() as cursor:
                cursor.execute(UNBLOCK, (sorted(keys),))
        except Exception as error:  # noqa: BLE001 - outcomes are written; promotion has a safety net
            logger.warning("exekutor completer: could not promote the jobs waiting for %d limit(s): %s",
                           len(keys), error)

    def _write_splitting(self, batch):
        """Write `batch` (the head of the pending list), taking each part off the list once it is written. A data
        error splits the batch in halves, in order, so the head of the list is always the next part to write."""
        try:
            written = self._write(batch)
        except _DATA_ERRORS as error:
            if len(batch) == 1:
                written = self._write_refused(batch[0], error)
            else:
                middle = len(batch) // 2
                return self._write_splitting(batch[:middle]) + self._write_splitting(batch[middle:])
        del self._pending[:len(batch)]
        return written

    def _write(self, batch):
        handoff = self._handoff_params(batch)
        if handoff is None:
            return self._execute(batch, None)[0]
        # Jobs handed off to this worker are reserved by this statement: the reconciler must know, as for the
        # provider's reservations (see Reconciler), and the executor gets them at once.
        provider = self.worker.provider
        with provider.reservation_lock:
            provider.reservations_begun += 1
            written, started = self._execute(batch, handoff)
            for row in started or ():
                info = job_info(_reservation_row(row), provider._loads)
                self._handed_off.update(info["holds"] or ())
                self.worker.executor.submit(info)
        return written

    def _execute(self, batch, handoff):
        with self.worker.db() as conn, conn.cursor() as cursor:
            codec = codec_for(conn.info.parameter_status("server_encoding"))
            sql, params = completion(batch, self.worker.id, self.dumps, self._delete_statuses, codec, handoff)
            started = time.monotonic()
            cursor.execute(sql, params)
            row = cursor.fetchone()
        self.statements += 1
        self.statement_seconds += time.monotonic() - started
        return row[0], (row[1] if "handoff_limit" in params else None)

    def _handoff_params(self, batch):
        """The worker's filters and free greenlets, when finished outcomes of the batch held a slot to pass on."""
        if self.worker.stopping or not any(o.holds and o.status not in _REQUEUED for o in batch):
            return None
        limit = self.worker.executor.free()
        if limit <= 0:
            return None
        params = self.worker.reserve_params(limit)
        params["handoff_limit"] = params.pop("limit")
        return params

    def _write_refused(self, outcome, error):
        """One outcome the database refused: written with a minimal error record, else without one, else dropped
        (the job then stays executing until this worker's row is deleted, and runs again)."""
        self.refused += 1
        reason = _describe(error)
        logger.error("exekutor completer: the outcome of job %s was refused by the database (%s); writing it with a "
                     "minimal error record", outcome.job_id, reason)
        record = minimal_record(outcome.error or {}, reason)
        delay = clamp_delay(outcome.delay) if outcome.delay is not None else None
        for fallback in (Outcome(outcome.job_id, outcome.status, None, record, delay, attempts=outcome.attempts),
                         Outcome(outcome.job_id, outcome.status, None, None, 0.0 if delay is not None else None,
                                 attempts=outcome.attempts)):
            try:
                return self._write([fallback])
            except _DATA_ERRORS as again:
                reason = _describe(again)
        logger.error("exekutor completer: the outcome of job %s could not be written at all (%s); the job runs "
                     "again after this worker stops", outcome.job_id, reason)
        return 0

    def stop(self):
        self._wake.set()


def completion(batch, worker_id, dumps, delete_statuses=(), codec=None, handoff=None):
    """(sql, params) writing a batch of outcomes in one statement, with only the parts the batch needs.

    Each column goes as one array literal (see exekutor.db.arrays). `codec` is the Python codec of a database
    whose encoding is not UTF-8: error records are fitted to it. `handoff`: the worker's reservation parameters,
    to pass the slots of finished jobs on to the jobs their limits hold back (see queries._HANDOFF).
    """
    finished, requeued, deleted, errors = ([], [], [], []), ([], [], [], [], []), ([], []), ([], [])
    for outcome in batch:
        status = outcome.status
        if status in _REQUEUED:
            ids, runtimes, attempts, delays, released = requeued
            delays.append(number(outcome.delay or 0.0))
            released.append("1" if status == RELEASE else "0")  # counted apart from the Retry policy's attempts
        elif status in delete_statuses:
            deleted[0].append(outcome.job_id)
            deleted[1].append(str(outcome.attempts))
            continue
        else:
            ids, runtimes, attempts, statuses = finished
            statuses.append(status)
        ids.append(outcome.job_id)
        runtimes.append(number(outcome.runtime))
        attempts.append(str(outcome.attempts))
        if outcome.error is not None:
            errors[0].append(outcome.job_id)
            errors[1].append(quoted(dumps(fit_record(outcome.error, codec))))
    params = {"worker_id": worker_id}
    parts = []
    if finished[0]:
        parts.append("finished")
        params.update(finished_ids=array(finished[0]), finished_runtimes=array(finished[1]),
                      finished_attempts=array(finished[2]), finished_statuses=array(finished[3]))
    if requeued[0]:
        parts.append("requeued")
        params.update(requeued_ids=array(requeued[0]), requeued_runtimes=array(requeued[1]),
                      requeued_attempts=array(requeued[2]), requeued_delays=array(requeued[3]),
                      requeued_released=array(requeued[4]))
    if deleted[0]:
        parts.append("deleted")
        params.update(deleted_ids=array(deleted[0]), deleted_attempts=array(deleted[1]))
    with_errors = bool(errors[0]) and parts != ["deleted"]
    if with_errors:
        params.update(error_ids=array(errors[0]), errors=array(errors[1]))
    if handoff is not None and finished[0]:
        params.update(handoff)
        return complete_jobs(tuple(parts), with_errors, True), params
    return complete_jobs(tuple(parts), with_errors), params


_REQUEUED = (RETRY, RELEASE)


def _reservation_row(row):
    """A handed-off job's JSON row as a reservation row: times from epoch seconds to datetimes."""
    row = list(row)
    for index in (5, 6):
        row[index] = _dt.datetime.fromtimestamp(row[index], _dt.timezone.utc)
    return row

# Errors a statement gets for what it contains, the same however often it is retried. ValueError: psycopg2
# refuses a NUL in a string; UnicodeError: a text the connection's encoding lacks; TypeError, OverflowError: what
# a JSON serializer refuses.
_DATA_ERRORS = (psycopg2.DataError, psycopg2.IntegrityError, ValueError, UnicodeError, TypeError, OverflowError)


def _describe(error):
    code = getattr(error, "pgcode", None)
    first_line = (str(error).strip().splitlines() or [""])[0]
    return f"{type(error).__name__}{f' {code}' if code else ''}: {first_line[:300]}"
