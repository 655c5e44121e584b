"""The liveness thread: what must keep going while a job blocks the worker's event loop.

A job that calls code gevent cannot make cooperative (CPU work, the original `time.sleep`, a C extension doing its
own IO) stops every greenlet of the worker's hub until it returns. The heartbeat, and the watchdog that notices such
a job, therefore run on an OS thread of their own, with a hub of their own (gevent gives each thread one) and
database connections of their own: a blocked loop costs the jobs beside it latency, never their runs, and the
worker knows which job blocked it and for how long. Nothing on the worker's hot path touches this thread.

The thread talks to the worker's hub only through `run_callback_threadsafe` and plain attribute reads and writes
(atomic under the GIL).
"""
import logging

import gevent
from gevent import monkey

logger = logging.getLogger("exekutor")

_start_new_thread = monkey.get_original("_thread", "start_new_thread")
_STOP_CHECK = 0.05


class LivenessThread:
    """Runs `loops` (callables that loop forever, or one-off tasks that return) as greenlets in an OS thread's own
    hub until `stop()`."""

    def __init__(self, *loops):
        self._loops = loops
        self._stopping = False
        self.running = False
        self._done = False

    def start(self):
        self.running = True
        _start_new_thread(self._main, ())
        return self

    def _main(self):
        hub = gevent.get_hub()
        greenlets = []
        try:
            greenlets = [gevent.spawn(loop) for loop in self._loops]
            while not self._stopping and not all(greenlet.dead for greenlet in greenlets):
                gevent.sleep(_STOP_CHECK)
            gevent.killall(greenlets, block=True, timeout=5)
        except BaseException:  # noqa: BLE001 - the thread must end cleanly, whatever happened
            logger.exception("exekutor liveness thread failed")
        finally:
            self.running = False
            self._done = True
            hub.destroy(destroy_loop=True)

    def stop(self, timeout=10.0):
        """Stop the loops and wait (cooperatively, in the caller's hub) for the thread to end."""
        self._stopping = True
        with gevent.Timeout(timeout, False):
            while self.running and not self._done:
                gevent.sleep(0.02)
