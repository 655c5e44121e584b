"""The executor: a pool of greenlets between min_threads and max_threads that runs reserved jobs.

Greenlets above the minimum exit after max_thread_idletime without work. Each job runs under its
execution_timeout (gevent.Timeout, which a job's `except Exception` cannot swallow), and its outcome goes
to the completer while the greenlet is already free for the next job.
"""
import logging

import gevent
from gevent.queue import Empty, Queue

from exekutor.errors import JobTimeoutError
from exekutor.execution import FAILED, Outcome, error_record, execute, run

logger = logging.getLogger("exekutor")


class Executor:
    def __init__(self, worker, min_threads, max_threads, idletime, on_outcome, on_free):
        self.worker = worker
        self.min_threads, self.max_threads, self.idletime = min_threads, max_threads, idletime
        self._on_outcome = on_outcome
        self._on_free = on_free
        self._queue = Queue()
        self._greenlets = set()
        self._idle = 0
        self._outstanding = 0  # reserved and not yet finished
        self.running = {}  # job id -> (greenlet, job info)
        self.unwritten = lambda: 0  # outcomes not yet written (the worker hooks the completer's count up)

    # --- capacity -------------------------------------------------------------------------------------

    def free(self):
        # Outcomes waiting to be written hold back reservations once they exceed a pool's worth: while the
        # database is slow to take them, reserving more would only pile up more.
        backlog = self.unwritten() - self.max_threads
        return self.max_threads - self._outstanding - (backlog if backlog > 0 else 0)

    def busy(self):
        return self._outstanding

    def size(self):
        return len(self._greenlets)

    def start(self):
        for _ in range(self.min_threads):
            self._spawn()

    def submit(self, info):
        self._outstanding += 1
        self._queue.put(info)
        if self._queue.qsize() > self._idle and len(self._greenlets) < self.max_threads:
            self._spawn()

    def _spawn(self):
        greenlet = gevent.spawn(self._loop)
        self._greenlets.add(greenlet)
        greenlet.link(self._greenlets.discard)

    # --- the greenlets --------------------------------------------------------------------------------

    def _loop(self):
        while True:
            self._idle += 1
            try:
                keep = len(self._greenlets) <= self.min_threads
                info = self._queue.get(timeout=None if keep else self.idletime)
            except Empty:
                if len(self._greenlets) > self.min_threads:
                    # Leave the set now, not when the link callback runs: greenlets timing out together
                    # must see each other go, or they would all leave and take the pool below its minimum.
                    self._greenlets.discard(gevent.getcurrent())
                    return
                continue
            finally:
                self._idle -= 1
            self._run(info)

    def _run(self, info):
        self.running[info["id"]] = (gevent.getcurrent(), info)
        outcome = None
        try:
            self.worker.job_started(info)
            outcome = execute(info, call=self._call_with_time_limit)
        except Exception as error:  # noqa: BLE001 - a bug of ours must not leave the job executing forever
            logger.exception("exekutor job %s: unexpected error outside the job", info["id"])
            outcome = Outcome(info["id"], FAILED, None, error_record(error))
        finally:
            del self.running[info["id"]]
            self._outstanding -= 1
            # A killed job has no outcome: it stays executing until the worker's row is deleted, which
            # releases it to pending.
            if outcome is not None:
                self._on_outcome(outcome, info)
            self._on_free()

    @staticmethod
    def _call_with_time_limit(definition, args, kwargs, info):
        limit = (info.get("options") or {}).get("execution_timeout") or definition.options.get("execution_timeout")
        if not limit:
            return run(definition, args, kwargs, info)
        timer = gevent.Timeout(limit)
        timer.start()
        try:
            return run(definition, args, kwargs, info)
        except gevent.Timeout as timeout:
            if timeout is not timer:
                raise
            # Chained, so the recorded traceback shows where the job was interrupted.
            raise JobTimeoutError(f"job exceeded its execution_timeout of {limit:g}s") from timeout
        finally:
            timer.close()

    # --- shutdown -------------------------------------------------------------------------------------

    def wait_idle(self, timeout=None):
        """Wait until no job is running; True if that happened within the timeout."""
        with gevent.Timeout(timeout, False):
            while self._outstanding:
                gevent.sleep(0.02)
            return True
        return False

    def kill_jobs(self, timeout=5):
        """Interrupt running jobs; they end without an outcome and are released with the worker row."""
        greenlets = [greenlet for greenlet, _ in list(self.running.values())]
        gevent.killall(greenlets, block=True, timeout=timeout)

    def stop(self):
        gevent.killall(list(self._greenlets), block=False)
