"""Watching and reaching the worker's gevent event loop from other OS threads.

A job that calls blocking code gevent cannot make cooperative (the original `time.sleep`, a C extension doing
its own IO, a long CPU loop) stops every greenlet of the worker: no heartbeat, no reservation, and no answer
from a server running inside that loop. The health check server therefore runs on a thread of its own and uses:

- `BlockMonitor`: gevent's monitor thread on the worker's hub; it knows, from outside, since when the loop has
  been blocked and by which greenlet, and reports each long block once the loop runs again.
- `call_in_hub(hub, fn, timeout)`: run `fn` in a greenlet of the worker's hub (where its connection pool lives)
  and wait for it cooperatively in the calling thread's hub, at most `timeout` seconds.
- `SingleFlight`: concurrent callers share one run of a probe, so health checks never take every connection.
"""
import sys
import time
import traceback
import warnings

import gevent
from gevent import monkey
from gevent.event import Event
from gevent.events import EventLoopBlocked, subscribers

_allocate_lock = monkey.get_original("_thread", "allocate_lock")
# The monitor checks this often; a block is seen at most one period late.
_MAX_PERIOD = 1.0


class BlockMonitor:
    """Tracks blocks of the current thread's hub longer than `threshold` seconds.

    `describe(greenlet)` names the culprit (called in the monitor thread at the start of a block, while the
    worker's state still shows which job it is); `on_block(seconds, culprit, stack)` runs in the hub once a
    block longer than the threshold has ended.
    """

    def __init__(self, threshold, describe=str, on_block=None):
        self.threshold = threshold
        self.period = min(_MAX_PERIOD, threshold / 4)
        self._describe = describe
        self._on_block = on_block
        self._hub = None
        self._owns_monitor = False
        self.blocked_since = None  # time.monotonic() estimate of when the current block began
        self.culprit = None
        self.stack = None

    def start(self):
        hub = self._hub = gevent.get_hub()
        if hub.periodic_monitoring_thread is None:
            gevent.config.max_blocking_time = self.period
            enabled = gevent.config.monitor_thread
            gevent.config.monitor_thread = True  # only while starting ours: other threads' hubs get none
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # "install psutil" (memory monitoring, not used here)
                    monitor = hub.start_periodic_monitoring_thread()
            finally:
                gevent.config.monitor_thread = enabled
            monitor._show_blocking_report = _no_report  # gevent's hook for this; we log once per block instead
            self._owns_monitor = True
        else:  # the application runs gevent's monitor already: share it
            gevent.config.max_blocking_time = min(gevent.config.max_blocking_time, self.period)
        subscribers.append(self._notified)
        return self

    def stop(self):
        if self._notified in subscribers:
            subscribers.remove(self._notified)
        if self._owns_monitor and self._hub.periodic_monitoring_thread is not None:
            self._hub.periodic_monitoring_thread.kill()
            self._hub.periodic_monitoring_thread = None
            self._owns_monitor = False

    def blocked_for(self):
        """Seconds the hub has been blocked so far (0.0 when it is running); callable from any thread."""
        since = self.blocked_since
        return 0.0 if since is None else time.monotonic() - since

    def blocked(self):
        return self.blocked_for() >= self.threshold

    def _notified(self, event):
        # The monitor thread calls this every period while the hub is blocked: only the first call of a
        # block records it. Nothing here may log or take a lock the blocked thread could hold.
        if not isinstance(event, EventLoopBlocked) or getattr(event, "hub", self._hub) is not self._hub:
            return
        if self.blocked_since is not None:
            return
        try:
            self.culprit = self._describe(event.greenlet)
        except Exception:  # noqa: BLE001 - the worker's state changed under us; a vaguer name will do
            self.culprit = "a greenlet"
        frame = sys._current_frames().get(self._hub.thread_ident)
        self.stack = "".join(traceback.format_stack(frame)) if frame is not None else ""
        self.blocked_since = time.monotonic() - self.period
        self._hub.loop.run_callback_threadsafe(self._ended)  # runs as soon as the hub runs again

    def _ended(self):
        seconds, culprit, stack = self.blocked_for(), self.culprit, self.stack
        self.blocked_since = None
        if seconds >= self.threshold and self._on_block is not None:
            self._on_block(seconds, culprit, stack)


def _no_report(hub, report, active_greenlet):
    return active_greenlet, report


def call_in_hub(hub, fn, timeout):
    """Run `fn()` in a new greenlet of `hub` (another thread's) and wait here at most `timeout` seconds.

    Returns what `fn` returns or raises what it raises; raises TimeoutError when it did not finish in time
    (that hub is busy or blocked). A late result is dropped.
    """
    here = gevent.get_hub()
    done = Event()
    watcher = here.loop.async_()
    watcher.start(done.set)
    lock = _allocate_lock()  # a real lock: the two sides run in different threads
    box = {}

    def task():
        try:
            box["result"] = fn()
        except BaseException as error:  # noqa: BLE001 - handed to the caller, whatever it is
            box["error"] = error
        with lock:
            if not box.get("abandoned"):
                watcher.send()

    try:
        hub.loop.run_callback_threadsafe(gevent.spawn_raw, task)
        done.wait(timeout)
    finally:
        with lock:
            box["abandoned"] = True
        watcher.stop()
        watcher.close()
    if "error" in box:
        error = box["error"]
        raise error if isinstance(error, Exception) else RuntimeError(f"interrupted: {error!r}")
    if "result" in box:
        return box["result"]
    raise TimeoutError(f"no answer from the worker's event loop within {timeout:g}s")


class SingleFlight:
    """Callers that overlap share one run of `fn` (in the current hub, with the first caller's arguments); each
    waits at most its own timeout. With `max_age`, a successful run that took at least `slow` seconds is also
    reused by callers that come within max_age of it: an expensive query asked for by every scrape then runs at
    most once per max_age, while a cheap one stays fresh for every caller."""

    def __init__(self, fn, max_age=0.0, slow=0.0):
        self._fn = fn
        self._running = None
        self._max_age, self._slow = max_age, slow
        self._started_at = self._finished_at = None

    def __call__(self, timeout, *args):
        if self._running is None or (self._running.ready() and not self._fresh()):
            self._running = gevent.spawn(self._capture, *args)
        running = self._running
        running.join(timeout)
        if not running.ready():
            raise TimeoutError(f"no answer within {timeout:g}s")
        error, result = running.value
        if error is not None:
            raise error
        return result

    def _fresh(self):
        error, _ = self._running.value
        took = self._finished_at - self._started_at
        return error is None and took >= self._slow and time.monotonic() - self._finished_at < self._max_age

    def _capture(self, *args):
        self._started_at = time.monotonic()
        # Errors are the callers' to handle, not the hub's to print.
        try:
            return None, self._fn(*args)
        except Exception as error:  # noqa: BLE001
            return error, None
        finally:
            self._finished_at = time.monotonic()
