"""The executor: a pool of greenlets between min_threads and max_threads that runs reserved jobs.

Greenlets above the minimum exit after max_thread_idletime without work. Each job runs under its
execution_timeout (gevent.Timeout, which a job's `except Exception` cannot swallow; a job whose bare `except:`
swallows it still ends as timed out), and its outcome goes to the completer while the greenlet is already free
for the next job. Whatever a job raises, its greenlet survives and its bookkeeping is done; only the worker's own
kill (at stop) ends a job without an outcome.
"""
import logging
import time

import gevent
from gevent.queue import Empty, Queue

from exekutor.errors import JobBlockedError, JobCancelled, JobTimeoutError, LoopBlocked
from exekutor.execution import DISCARDED, FAILED, Outcome, error_record, execute, find_definition, run
from exekutor.log import job_swallowed_timeout

logger = logging.getLogger("exekutor")

# Reserving ahead (see `free`): only jobs of a kind whose recent runs took at most this long are expected to end at
# a predictable time, and their kind's runtime is the moving average of its runs (this much weight to the latest).
PREDICTED_RUNTIME_MAX = 1.0
RUNTIME_WEIGHT = 0.2
PREDICTED_KINDS_MAX = 1000  # kinds of job (names) whose runtimes are kept: names come from rows anyone can write


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
        self.held = {}  # job id -> job info, from its reservation to its outcome: what this worker owns
        self.running = {}  # job id -> (greenlet, job info, time.monotonic() at its start)
        self.adopted = 0  # reservations of a job this worker was still running (see submit)
        self.stopped_unowned = 0  # jobs stopped because this worker may have been presumed dead
        self.cancelled = 0  # jobs ended because an operator cancelled them
        self._killing = set()  # greenlets the worker is killing: their GreenletExit is not the job's failure
        self.unwritten = lambda: 0  # outcomes not yet written (the worker hooks the completer's count up)
        self._runtimes = {}  # job name -> moving average of its runs' seconds
        self._expected_ends = {}  # job id -> time.monotonic() when the running job is expected to end

    # --- capacity -------------------------------------------------------------------------------------

    def free(self, ahead=0.0):
        """Jobs the worker can take up now; with `ahead` (seconds), also one per running job expected to end
        within that time, so that a reservation made now has its jobs waiting when their greenlets free up: a
        wave of short jobs ending together then starts the next wave at once, instead of a reservation's round
        trip later. A job reserved ahead waits in this worker's queue for the first greenlet that frees up."""
        if self.worker.ownership_uncertain:
            return 0  # until a heartbeat shows whether this worker was presumed dead (see worker.ownership)
        # Outcomes waiting to be written hold back reservations once they exceed a pool's worth: while the
        # database is slow to take them, reserving more would only pile up more.
        backlog = self.unwritten() - self.max_threads
        free = self.max_threads - self._outstanding - (backlog if backlog > 0 else 0)
        if ahead:
            free += self.ending_within(ahead)
        return free if free > 0 else 0

    def ending_within(self, seconds):
        """Running jobs expected to end within `seconds` from now (those already late by more are not: a job
        that overruns its kind's usual time may run much longer)."""
        now = time.monotonic()
        early, late = now - seconds, now + seconds
        return sum(1 for end in list(self._expected_ends.values()) if early <= end <= late)

    def next_expected_end(self, after):
        """The earliest time.monotonic() after `after` at which a running job is expected to end, or None."""
        ends = [end for end in list(self._expected_ends.values()) if end > after]
        return min(ends) if ends else None

    def _expect_end(self, job_id, kind, started):
        runtime = self._runtimes.get(kind)
        if runtime is not None and runtime <= PREDICTED_RUNTIME_MAX:
            self._expected_ends[job_id] = started + runtime

    def _learn_runtime(self, kind, seconds):
        known = self._runtimes.get(kind)
        if known is not None:
            self._runtimes[kind] = known + RUNTIME_WEIGHT * (seconds - known)
        elif kind is not None and len(self._runtimes) < PREDICTED_KINDS_MAX:
            self._runtimes[kind] = seconds

    def busy(self):
        return self._outstanding

    def size(self):
        return len(self._greenlets)

    def start(self):
        for _ in range(self.min_threads):
            self._spawn()

    def submit(self, info):
        held = self.held.get(info["id"])  # until its greenlet has ended, a stopped job is still held
        if held is not None:
            # Reserved again while still running here: the job was released (this worker's row was deleted:
            # presumed dead) and nobody else took it. One run, not two: the running one carries on under the new
            # reservation, whose attempt fences its outcome.
            held["attempts"] = info["attempts"]
            self.adopted += 1
            logger.warning("exekutor job %s was reserved again while this worker still ran it (its row had been "
                           "released); the running copy carries on as attempt %s", info["id"], info["attempts"])
            return
        if self.worker.stopping:
            # Newly reserved by a reservation that was in flight when the stop came: not started; it goes back to
            # pending with the worker's row (or sooner, by its reconciliation).
            return
        self.held[info["id"]] = info
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
        current = gevent.getcurrent()
        started = time.monotonic()
        self.running[info["id"]] = (current, info, started)
        kind = _kind(info)
        self._expect_end(info["id"], kind, started)
        outcome = None
        try:
            if info.get("cancel") is None:  # not cancelled while it waited for a greenlet
                self.worker.job_started(info)
                outcome = execute(info, call=self._call_with_time_limit, own_server=self.worker.database_server,
                                  interrupted_by_worker=self._killed_by_worker)
            outcome = self._unless_cancelled(outcome, info)
        except BaseException as error:  # noqa: BLE001 - a bug of ours must not leave the job executing forever
            if self._killed_by_worker(error):
                raise
            logger.exception("exekutor job %s: unexpected error outside the job", info["id"])
            outcome = Outcome(info["id"], FAILED, None, error_record(error))
        finally:
            self.running.pop(info["id"], None)
            self._expected_ends.pop(info["id"], None)
            self._killing.discard(current)
            self._outstanding -= 1
            # A killed job has no outcome: it stays executing until the worker's row is deleted or the heartbeat's
            # reconciliation finds it, either of which releases it to pending.
            if outcome is not None:
                self._learn_runtime(kind, time.monotonic() - started)
                outcome.attempts = info["attempts"]  # the reservation it ran under (adoption may have renewed it)
                outcome.holds = info.get("holds")
                self._on_outcome(outcome, info)
            self.held.pop(info["id"], None)
            self._on_free()

    # --- cancellation ---------------------------------------------------------------------------------

    def cancel(self, job_id):
        """An operator cancelled this job: interrupt it within this loop iteration (with JobCancelled, which also
        cancels a statement it runs on a pool connection), or drop it if it waits for a greenlet. False if this
        worker does not hold it (it finished, or never was ours)."""
        info = self.held.get(job_id)
        if info is None or info.get("cancel") is not None:
            return info is not None
        info["cancel"] = "requested"
        entry = self.running.get(job_id)
        if entry is not None:
            gevent.get_hub().loop.run_callback(self._interrupt, entry[0], info)
        logger.info("exekutor job %s: cancelled by an operator; interrupting it", job_id)
        return True

    def _interrupt(self, greenlet, info):
        # From the hub: the job is interrupted now, unless it finished meanwhile (it then keeps its outcome).
        if self.running.get(info["id"], (None,))[0] is greenlet and not greenlet.dead:
            info["cancel"] = "delivered"
            greenlet.throw(JobCancelled("cancelled by an operator while it ran"))

    def _unless_cancelled(self, outcome, info):
        """A job interrupted by a cancel (or cancelled before it started) ends discarded with JobCancelled,
        whatever it did with the exception; one that finished before the interruption keeps its outcome."""
        state = info.get("cancel")
        if state is None or (state == "requested" and outcome is not None):
            return outcome
        self.cancelled += 1
        if outcome is not None and outcome.error and outcome.error["type"].endswith(".JobCancelled"):
            return Outcome(info["id"], DISCARDED, outcome.runtime, outcome.error)  # where it was interrupted
        error = JobCancelled("cancelled by an operator before it started" if outcome is None else
                             "cancelled by an operator while it ran (the job caught the interruption)")
        return Outcome(info["id"], DISCARDED, outcome.runtime if outcome else 0.0, error_record(error))

    def _killed_by_worker(self, error):
        return isinstance(error, gevent.GreenletExit) and gevent.getcurrent() in self._killing

    @staticmethod
    def _call_with_time_limit(definition, args, kwargs, info):
        # While "calling", the watchdog's interruption may land (only in the job's own code, not in the executor's
        # bookkeeping around it).
        info["calling"] = True
        try:
            result = _call_with_timer(definition, args, kwargs, info)
        except LoopBlocked as interruption:  # the watchdog's (see exekutor.worker.watchdog)
            raise _blocked(info, swallowed=False) from interruption
        finally:
            info["calling"] = False
        if info.get("blocked") is not None:  # interrupted by the watchdog, the job caught it and returned
            raise _blocked(info, swallowed=True)
        return result

    def running_now(self):
        """(greenlet, info, started) of the job running in the worker's thread right now, asked from another thread
        (the watchdog): the one running job greenlet without a suspended frame. None when no job runs."""
        for _ in range(3):
            try:
                entries = list(self.running.values())
                break
            except RuntimeError:  # the dict changed while it was copied
                continue
        else:
            return None
        for entry in entries:
            greenlet = entry[0]
            if greenlet.gr_frame is None and not greenlet.dead:
                return entry
        return None

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
        greenlets = [entry[0] for entry in list(self.running.values())]
        self._killing.update(greenlets)
        gevent.killall(greenlets, block=True, timeout=timeout)

    def drop_queued(self):
        """Forget the jobs reserved that no greenlet has taken up yet (reserved ahead, or waiting for a greenlet):
        they stay executing in the database until the worker's row is deleted or its reconciliation finds them,
        either of which releases them to pending. Never switches."""
        dropped = 0
        while not self._queue.empty():
            info = self._queue.get_nowait()
            self.held.pop(info["id"], None)
            self._outstanding -= 1
            dropped += 1
        return dropped

    def stop_unowned(self):
        """Stop, without an outcome, every job this worker holds: it may have been presumed dead, so they may be
        released and run elsewhere. Queued jobs are dropped. Called from the hub (the ownership guard, in the event
        loop's prepare phase), each running job is interrupted at once, before any of them resumes; called from a
        greenlet, at its next switch."""
        self.drop_queued()
        greenlets = [entry[0] for entry in list(self.running.values())]
        self._killing.update(greenlets)
        in_hub = gevent.getcurrent() is gevent.get_hub()
        for greenlet in greenlets:
            if in_hub:
                greenlet.throw(gevent.GreenletExit)  # runs it until it switches back here
            else:
                greenlet.kill(block=False)
        self.stopped_unowned += len(greenlets)
        return len(greenlets)

    def stop(self):
        gevent.killall(list(self._greenlets), block=False)


def _kind(info):
    """The job's name from its payload (None when the payload names none)."""
    payload = info.get("payload")
    name = payload.get("job") if isinstance(payload, dict) else None
    return name if isinstance(name, str) else None


def execution_timeout_of(info, definition=None):
    """The job's execution_timeout in seconds (its enqueue options, else its definition's), or None."""
    limit = (info.get("options") or {}).get("execution_timeout")
    if limit:
        return limit
    if definition is None:
        try:
            definition = find_definition(info)
        except Exception:  # noqa: BLE001 - an unknown job: it has none we know of
            return None
    return definition.options.get("execution_timeout")


def _call_with_timer(definition, args, kwargs, info):
    limit = execution_timeout_of(info, definition)
    if not limit:
        return run(definition, args, kwargs, info)
    timer = gevent.Timeout(limit)
    timer.start()
    try:
        result = run(definition, args, kwargs, info)
    except gevent.Timeout as timeout:
        if timeout is not timer and timer.pending:
            raise  # the job's own Timeout: its failure, under its retry rules
        # Chained, so the recorded traceback shows where the job was interrupted.
        raise _timed_out(limit, swallowed=timeout is not timer, info=info) from timeout
    except BaseException as error:
        if timer.pending:
            raise
        # The timer fired, the job caught it and raised something else while being interrupted.
        raise _timed_out(limit, swallowed=True, info=info) from error
    finally:
        fired = not timer.pending
        timer.close()
    if fired:  # the job swallowed the interruption (a bare `except:`) and returned
        raise _timed_out(limit, swallowed=True, info=info)
    return result


def _blocked(info, swallowed):
    """The error of a job the watchdog interrupted for blocking the event loop."""
    limit_name, limit, seconds = info["blocked"]
    caught = " (the job caught the interruption)" if swallowed else ""
    if limit_name == "execution_timeout":
        return JobTimeoutError(f"job exceeded its execution_timeout of {limit:g}s while blocking the event loop "
                               f"({seconds:.1f}s without yielding); interrupted{caught}")
    return JobBlockedError(f"job blocked the worker's event loop for {seconds:.1f}s without yielding, longer than "
                           f"blocking_timeout ({limit:g}s), and was interrupted{caught}: run CPU-bound or blocking "
                           "code in a thread pool or a process (see docs/reliability.md)")


def _timed_out(limit, swallowed, info):
    if not swallowed:
        return JobTimeoutError(f"job exceeded its execution_timeout of {limit:g}s")
    job_swallowed_timeout(info, limit)
    return JobTimeoutError(f"job exceeded its execution_timeout of {limit:g}s and swallowed the interruption "
                           "(a bare `except:` or `except BaseException:` in the job caught gevent.Timeout)")
