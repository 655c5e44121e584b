"""Running a worker as the main thing a process does (what `exekutor-gevent start` calls).

Order matters: gevent's monkeypatching and psycogreen come before anything else is imported, then the
application modules that register the jobs, then the worker. SIGTERM/SIGINT stop it gracefully; a second
signal kills it.
"""
import importlib
import logging
import signal
import sys


def patch():
    """Monkeypatch the process for gevent; call before importing application code."""
    from gevent import monkey

    if not monkey.is_module_patched("socket"):
        monkey.patch_all()
    from psycogreen.gevent import patch_psycopg

    patch_psycopg()


def import_applications(modules):
    """Import the modules that define jobs (`--app`, config `imports`); `module:factory` calls the factory."""
    if "" not in sys.path and "." not in sys.path:
        sys.path.insert(0, "")
    loaded = []
    for spec in modules:
        name, _, factory = spec.partition(":")
        module = importlib.import_module(name)
        loaded.append(getattr(module, factory)() if factory else module)
    return loaded


def run(options, on_started=None):
    """Start a worker with `options`, block until it stops; returns the process exit status."""
    import gevent

    from exekutor.worker import Worker

    worker = Worker(**options)
    signals = {"count": 0}

    def on_signal():
        signals["count"] += 1
        if signals["count"] == 1:
            logging.getLogger("exekutor").info("exekutor worker %s: stopping (signal again to kill)", worker.id)
            gevent.spawn(worker.stop)
        else:
            gevent.spawn(worker.kill)

    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, on_signal)
    worker.start()
    if on_started is not None:
        on_started(worker)
    worker.join()
    return 0
