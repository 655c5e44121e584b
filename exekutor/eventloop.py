"""Watching and reaching the worker's gevent event loop from other OS threads.

A job that calls blocking code gevent cannot make cooperative (the original `time.sleep`, a C extension doing
its own IO, a long CPU loop) stops every greenlet of the worker: no reservation, and no answer from a server
running inside that loop. The health check server therefore runs on a thread of its own (as do the heartbeat and
the watchdog: exekutor.worker.liveness) and uses:

- `call_in_hub(hub, fn, timeout)`: run `fn` in a greenlet of the worker's hub (where its connection pool lives)
  and wait for it cooperatively in the calling thread's hub, at most `timeout` seconds.
- `SingleFlight`: concurrent callers share one run of a probe, so health checks never take every connection.
"""
import time

import gevent
from gevent import monkey
from gevent.event import Event

_allocate_lock = monkey.get_original("_thread", "allocate_lock")


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
