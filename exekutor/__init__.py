"""exekutor: a PostgreSQL-backed background job queue for synchronous Python, with a gevent worker.

The public API is what this module exports; everything else is internal.
"""
import importlib
import sys
import types

from exekutor.version import __version__

# The public API, imported on first use (PEP 562): `import exekutor` alone costs nothing, so that the command line
# answers `--help` without importing psycopg2, gevent or YAML, and each process imports only what it uses. Every
# name works as before, as `exekutor.NAME` and as `from exekutor import NAME`.
_API = {
    "config": "exekutor.config", "hooks": "exekutor.hooks",
    "configure": "exekutor.config", "NotAsynchronousError": "exekutor.asynchronous",
    "JobRequest": "exekutor.enqueue", "enqueue_many": "exekutor.enqueue",
    "ConfigError": "exekutor.errors", "DiscardJob": "exekutor.errors", "ExekutorError": "exekutor.errors",
    "JobCancelled": "exekutor.errors", "JobTimeoutError": "exekutor.errors", "QueueTimeoutError": "exekutor.errors",
    "SerializationError": "exekutor.errors", "UnknownJobError": "exekutor.errors",
    "Job": "exekutor.jobs", "job": "exekutor.jobs", "Retry": "exekutor.definitions",
    "registry": "exekutor.definitions",
    "pause_queue": "exekutor.queue_control", "queue_states": "exekutor.queue_control",
    "resume_queue": "exekutor.queue_control", "periodic": "exekutor.schedules",
    "serializers": "exekutor.serialization",
    # The worker imports gevent; an application that only enqueues never needs it.
    "Worker": "exekutor.worker", "Cleanup": "exekutor.cleanup",
}


def __getattr__(name):
    if name not in _API:
        return _submodule(name)
    module = importlib.import_module(_API[name])
    value = module if module.__name__ == f"exekutor.{name}" else getattr(module, name)
    globals()[name] = value  # looked up once
    return value


def _submodule(name):
    """`exekutor.jobs` and the like without `import exekutor.jobs`, as when this module imported them all."""
    try:
        return importlib.import_module(f"exekutor.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"exekutor.{name}":
            raise
    raise AttributeError(f"module 'exekutor' has no attribute {name!r}")


def __dir__():
    return sorted({*globals(), *_API, "asynchronous"})


class _Package(types.ModuleType):
    """`exekutor.asynchronous` is the decorator, though a submodule has that name too: importing the submodule
    (which the worker does) binds that name on the package, and must not make it the module."""

    @property
    def asynchronous(self):
        from exekutor.asynchronous import asynchronous

        return asynchronous

    @asynchronous.setter
    def asynchronous(self, value):
        pass  # the import system binding the submodule: the name stays the decorator's


sys.modules[__name__].__class__ = _Package


def load_plugin(name):
    """Register a bundled plugin's hooks, e.g. `exekutor.load_plugin("sentry")`."""
    from exekutor.plugins import load

    return load(name)


__all__ = ["config", "configure", "hooks", "job", "Job", "Retry", "registry", "enqueue_many", "JobRequest",
           "asynchronous", "NotAsynchronousError", "periodic", "__version__",
           "serializers", "Worker", "Cleanup", "load_plugin", "DiscardJob", "ConfigError", "ExekutorError",
           "JobCancelled", "JobTimeoutError", "QueueTimeoutError", "SerializationError", "UnknownJobError",
           "pause_queue", "resume_queue", "queue_states"]
