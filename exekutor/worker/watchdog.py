"""The watchdog: notices a job that blocks the worker's event loop, names it, and ends it as that job's failure.

It runs on the liveness thread (exekutor.worker.liveness). The ownership guard records each turn of the worker's
event loop (`loop_seen`, at least every 0.25 s even when idle); when the loop has not turned for BLOCK_THRESHOLD,
some greenlet runs without yielding. The watchdog finds which job that is (the one running job greenlet without a
suspended frame) and where it blocks (its stack), and:

- at the job's limit (its execution_timeout counted from its start, or blocking_timeout counted from the start of
  the block, whichever comes first) interrupts it: a signal to the worker's thread, whose handler raises
  LoopBlocked in the job if it is still the one running. That stops Python code (CPU loops) and blocking calls
  that return on a signal (the original time.sleep, most IO). The job ends discarded with JobTimeoutError (past its
  execution_timeout) or failed with JobBlockedError (past blocking_timeout), also if it swallows the interruption;
- GIVE_UP seconds later, if the loop is still blocked (a C call that ignores signals, a job that caught the
  interruption and blocks on), writes that job's outcome itself (failed, fenced by worker and attempt: nothing
  runs it again) and stops the heartbeat: other workers then presume this one dead after worker_timeout and run
  the jobs that wait behind the block; if the loop ever turns again, the ownership guard stops those here first.
  A block by code that is not a job is given up on the same way after blocking_timeout;
- when a block longer than max_blocking_time ends, logs it with the job's name and where it blocked, and counts it
  in /metrics; `/live` reports a block in progress.

Only time the watchdog saw pass counts as blocked: while the whole process is stopped (SIGSTOP), nothing is.
"""
import logging
import signal
import sys
import time
import traceback

import gevent

from exekutor.db.queries import UNBLOCK
from exekutor.error_records import error_record
from exekutor.errors import JobBlockedError, LoopBlocked
from exekutor.execution import FAILED, Outcome
from exekutor.log import job_name
from exekutor.worker.completer import completion
from exekutor.worker.executor import execution_timeout_of

logger = logging.getLogger("exekutor")

PERIOD = 0.1
BLOCK_THRESHOLD = 0.5  # the guard's timer turns an idle loop every 0.25 s
GIVE_UP = 2.0  # after an interruption that did not end the block
_MAX_STEP = 0.5  # a longer pause between two ticks was not observed (the process was stopped)
# Real-time signals are free for applications; glibc keeps SIGRTMIN-2 and -1 for itself.
INTERRUPT_SIGNAL = getattr(signal, "SIGRTMIN", 34) + 3
_STACK_FRAMES = 25
_installed = set()  # the watchdogs of this process's workers (one handler serves them all)


def _on_signal(signum, frame):
    for watchdog in list(_installed):
        watchdog.interrupt_if_current()


class Block:
    """A block of the loop the watchdog is watching."""

    def __init__(self, seen, entry, stack):
        self.seen = seen  # the guard's loop_seen when the loop last turned before the block
        self.greenlet, self.info, self.job_started = entry if entry else (None, None, None)
        self.stack = stack
        self.observed = BLOCK_THRESHOLD  # seconds the watchdog saw it last
        self.interrupted_at = None
        self.given_up = False

    def culprit(self):
        if self.info is None:
            return "code outside any job"
        return f"job {self.info['id']} ({job_name(self.info)})"


class Watchdog:
    def __init__(self, worker, blocking_timeout, report_after):
        self.worker = worker
        self.blocking_timeout = blocking_timeout
        self.report_after = report_after  # max_blocking_time; 0: blocks are neither logged nor reported by /live
        self.block = None
        self.interrupted = self.given_up = 0  # for /metrics
        self._last_tick = None
        self._thread_ident = None
        self._signal_installed = False
        self._target = None  # (greenlet, error, info): the signal handler raises error in that job's greenlet

    # --- in the worker's thread ---------------------------------------------------------------------------

    def install(self):
        """Called in the worker's thread at start: the signal handler that interrupts a blocking job."""
        self._thread_ident = gevent.get_hub().thread_ident  # the OS thread's id, even under monkey-patching
        try:
            signal.signal(INTERRUPT_SIGNAL, _on_signal)
        except ValueError:  # not the main thread, where Python runs signal handlers: blocks are only given up on
            logger.debug("exekutor worker %s: not in the main thread; a blocking job cannot be interrupted",
                         self.worker.id)
            return
        _installed.add(self)
        self._signal_installed = True

    def uninstall(self):
        _installed.discard(self)
        self._signal_installed = False

    def interrupt_if_current(self):
        """In the signal handler: raise the interruption if its job is the greenlet running now, in its own code."""
        target = self._target
        if target is not None and gevent.getcurrent() is target[0] and target[2].get("calling"):
            self._target = None
            raise target[1]

    # --- in the liveness thread -----------------------------------------------------------------------------

    def blocked_for(self):
        """Seconds the loop has been blocked, as far as the watchdog saw (0.0 when it runs); from any thread."""
        block = self.block
        return 0.0 if block is None else block.observed

    def culprit(self):
        block = self.block
        return block.culprit() if block is not None else None

    def run(self):
        while True:
            try:
                self.tick()
            except Exception:  # noqa: BLE001 - the watchdog must keep watching
                logger.exception("exekutor worker %s: the watchdog failed", self.worker.id)
            gevent.sleep(PERIOD)

    def tick(self):
        now = time.monotonic()
        step = PERIOD if self._last_tick is None else now - self._last_tick
        self._last_tick = now
        seen = self.worker.ownership.loop_seen
        block = self.block
        if block is not None and block.seen != seen:
            self.block = None
            self._ended(block)
            block = None
        if now - seen < BLOCK_THRESHOLD:
            return
        if block is None:
            self.block = self._started(seen)
            return
        block.observed += min(step, _MAX_STEP)
        if block.interrupted_at is None:
            self._maybe_interrupt(block, now)
        elif not block.given_up and now - block.interrupted_at >= GIVE_UP:
            self._give_up(block)

    def _started(self, seen):
        entry = self.worker.executor.running_now()
        frame = sys._current_frames().get(self._thread_ident)
        stack = "".join(traceback.format_stack(frame, limit=_STACK_FRAMES)) if frame is not None else ""
        return Block(seen, entry, stack)

    def _maybe_interrupt(self, block, now):
        if block.info is None:
            if block.observed >= self.blocking_timeout + GIVE_UP:
                self._give_up(block)
            return
        timeout = execution_timeout_of(block.info)
        if timeout and now - block.job_started >= timeout:
            self._interrupt(block, now, "execution_timeout", timeout)
        elif block.observed >= self.blocking_timeout:
            self._interrupt(block, now, "blocking_timeout", self.blocking_timeout)

    def _interrupt(self, block, now, limit_name, limit):
        block.interrupted_at = now
        self.interrupted += 1
        # The executor turns this into the job's error, also if the job swallows the interruption and returns.
        block.info["blocked"] = (limit_name, limit, block.observed)
        logger.warning("exekutor worker %s: %s has blocked the event loop for %.1fs, past its %s (%gs): "
                       "interrupting it. It blocks at:\n%s", self.worker.id, block.culprit(), block.observed,
                       limit_name, limit, block.stack.rstrip())
        error = LoopBlocked(f"blocked the event loop past its {limit_name} ({limit:g}s)")
        self._target = (block.greenlet, error, block.info)
        if self._signal_installed:
            signal.pthread_kill(self._thread_ident, INTERRUPT_SIGNAL)

    def _give_up(self, block):
        block.given_up = True
        self.given_up += 1
        if block.info is not None:
            self._fail_job(block)
        self.worker.heartbeat.paused = f"the event loop is blocked by {block.culprit()}"
        logger.error("exekutor worker %s: %s has blocked the event loop for %.1fs and could not be interrupted%s; "
                     "the heartbeat stops, so other workers take over its other jobs after worker_timeout. It blocks "
                     "at:\n%s", self.worker.id, block.culprit(), block.observed,
                     ": it ends failed" if block.info is not None else "", block.stack.rstrip())

    def _fail_job(self, block):
        info = block.info
        limit_name, limit, _ = info.get("blocked") or ("blocking_timeout", self.blocking_timeout, 0.0)
        error = JobBlockedError(f"job blocked the worker's event loop for {block.observed:.1f}s, past its "
                                f"{limit_name} ({limit:g}s), and could not be interrupted (a call that ignores "
                                "signals, or the job caught the interruption): the worker ended it as failed")
        outcome = Outcome(info["id"], FAILED, time.monotonic() - block.job_started, error_record(error),
                          attempts=info["attempts"])
        try:
            with self.worker.db(self.worker.heartbeat.own_pool()) as conn, conn.cursor() as cursor:
                cursor.execute(*completion([outcome], self.worker.id, self.worker.completer.dumps))
                if info.get("holds"):
                    cursor.execute(UNBLOCK, (info["holds"],))  # its concurrency slot goes to the next job
        except Exception as failure:  # noqa: BLE001 - then the job runs again elsewhere once the heartbeat stops
            logger.error("exekutor worker %s: could not record the failure of job %s: %s", self.worker.id,
                         info["id"], failure)

    def _ended(self, block):
        self._target = None
        if block.given_up:
            self.worker.heartbeat.paused = None  # the ownership guard decides what may go on
        if self.report_after and block.observed >= self.report_after:
            name = job_name(block.info) if block.info is not None else "-"
            logger.warning("exekutor worker %s: %s blocked the event loop for %.1fs (max_blocking_time: %gs): no "
                           "other job ran meanwhile. Jobs must not call blocking code gevent cannot make cooperative "
                           "(CPU work, the original time.sleep, C extensions doing their own IO): run it in a thread "
                           "pool or a process (see docs/reliability.md). Blocked at:\n%s", self.worker.id,
                           block.culprit(), block.observed, self.report_after, block.stack.rstrip())
            self.worker.metrics.event_loop_blocked(block.observed, name)
