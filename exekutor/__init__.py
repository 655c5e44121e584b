"""exekutor: a PostgreSQL-backed background job queue for synchronous Python, with a gevent worker.

The public API is what this module exports; everything else is internal.
"""
from exekutor import config, hooks
from exekutor.asynchronous import NotAsynchronousError, asynchronous
from exekutor.config import configure
from exekutor.definitions import Retry, registry
from exekutor.enqueue import JobRequest, enqueue_many
from exekutor.errors import (
    ConfigError,
    DiscardJob,
    ExekutorError,
    JobCancelled,
    JobTimeoutError,
    QueueTimeoutError,
    SerializationError,
    UnknownJobError,
)
from exekutor.jobs import Job, job
from exekutor.queue_control import pause_queue, queue_states, resume_queue
from exekutor.schedules import periodic
from exekutor.serialization import serializers
from exekutor.version import __version__


def __getattr__(name):
    # The worker imports gevent; an application that only enqueues never needs it.
    if name == "Worker":
        from exekutor.worker import Worker

        return Worker
    if name == "Cleanup":
        from exekutor.cleanup import Cleanup

        return Cleanup
    raise AttributeError(f"module 'exekutor' has no attribute {name!r}")


def load_plugin(name):
    """Register a bundled plugin's hooks, e.g. `exekutor.load_plugin("sentry")`."""
    from exekutor.plugins import load

    return load(name)


__all__ = ["config", "configure", "hooks", "job", "Job", "Retry", "registry", "enqueue_many", "JobRequest",
           "asynchronous", "NotAsynchronousError", "periodic", "__version__",
           "serializers", "Worker", "Cleanup", "load_plugin", "DiscardJob", "ConfigError", "ExekutorError",
           "JobCancelled", "JobTimeoutError", "QueueTimeoutError", "SerializationError", "UnknownJobError",
           "pause_queue", "resume_queue", "queue_states"]
