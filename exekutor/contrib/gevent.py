"""psycopg2 made cooperative in a gevent web process: `exekutor.contrib.gevent.patch()`.

gevent's monkeypatching does not reach psycopg2: libpq does its own IO in C, so without a wait callback every
query (an enqueue included) blocks the whole process, and a gevent web server serves one request at a time while
a query runs. `patch()` installs exekutor's wait callback (psycogreen's loop, see `exekutor.db.green`), the one the
worker runs on. Call it once per process, after `gevent.monkey.patch_all()`: gunicorn's gevent workers get it from
`exekutor.contrib.gunicorn`; under uWSGI call it in the module that creates the WSGI app.
"""
import logging

import psycopg2.extensions

from exekutor.db.green import patch_psycopg, wait_callback

logger = logging.getLogger("exekutor")


def patch():
    """Make psycopg2 cooperative for gevent in this process; returns False if it already was (idempotent)."""
    if is_patched():
        return False
    _warn_unless_monkeypatched()
    patch_psycopg()
    return True


def is_patched():
    """Whether psycopg2 waits with exekutor's gevent wait callback in this process."""
    return psycopg2.extensions.get_wait_callback() is wait_callback


def _warn_unless_monkeypatched():
    # The enqueue pool waits for a free connection on a threading semaphore: unpatched, a request waiting there
    # blocks the event loop, and with it the requests that would give a connection back.
    from gevent import monkey

    if not monkey.is_module_patched("threading"):
        logger.warning("exekutor.contrib.gevent.patch(): threading is not monkeypatched in this process; call "
                       "gevent.monkey.patch_all() first (uWSGI: --gevent-monkey-patch)")
