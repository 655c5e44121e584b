"""The completer: writes job outcomes in batches, fenced by owner.

Outcomes accumulate while a flush is in flight, so one statement writes all jobs that finished in the
meantime; the provider reserves on its own connection and never waits for it. Outcomes that cannot be
written (the database is down) stay in memory and are written when it is back.
"""
import logging

from gevent.event import Event

from exekutor.db.queries import COMPLETE_JOBS
from exekutor.execution import RELEASE, RETRY
from exekutor.worker.component import Component

logger = logging.getLogger("exekutor")

MAX_BATCH = 2000
# What an outcome is stored as: retried and released jobs go back to pending.
_STORED_STATUS = {RETRY: "p", RELEASE: "p"}


class Completer(Component):
    name = "completer"

    def __init__(self, worker, json_dumps, delete_statuses):
        super().__init__(worker)
        self._dumps = json_dumps
        self._delete_statuses = list(delete_statuses)
        self._pending = []
        self._wake = Event()
        self._flushing = False
        self.written = 0
        self.fenced_off = 0

    def add(self, outcome):
        self._pending.append(outcome)
        self._wake.set()

    def pending_count(self):
        return len(self._pending)

    def run(self):
        while True:
            if not self._pending:
                if self.worker.completer_done():
                    return
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            self.flush()
            self.succeeded()

    def flush(self):
        batch = self._pending[:MAX_BATCH]
        params = self._params(batch)
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(COMPLETE_JOBS, params)
            written, _ = cursor.fetchone()
        del self._pending[:len(batch)]
        self.written += written
        if written < len(batch):
            # Jobs we no longer own were rescued from us (our heartbeat was presumed dead): not written.
            self.fenced_off += len(batch) - written
            logger.warning("exekutor completer: %d outcome(s) not written because the jobs are no longer "
                           "owned by this worker", len(batch) - written)

    def _params(self, batch):
        # Each column goes as one array literal ('{a,b,c}'): psycopg2 would send a Python list as
        # ARRAY[...] with one constant per element, which costs the planner more than the update itself.
        dumps = self._dumps
        ids, statuses, runtimes, delays, errors = [], [], [], [], []
        for outcome in batch:
            ids.append(outcome.job_id)
            statuses.append(_STORED_STATUS.get(outcome.status, outcome.status))
            runtimes.append(_number(outcome.runtime))
            delays.append(_number(outcome.delay))
            errors.append(_quoted(dumps(outcome.error)) if outcome.error is not None else "NULL")
        return {"ids": _array(ids), "statuses": _array(statuses), "runtimes": _array(runtimes),
                "delays": _array(delays), "errors": _array(errors), "delete_statuses": _array(self._delete_statuses),
                "worker_id": self.worker.id}

    def stop(self):
        self._wake.set()


def _array(items):
    return "{" + ",".join(items) + "}"


def _number(value):
    return "NULL" if value is None else repr(float(value))


def _quoted(text):
    """An element of an array literal: in double quotes, with backslashes and quotes escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
