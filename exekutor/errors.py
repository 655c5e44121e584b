"""Exception types that users of exekutor may catch."""


class ExekutorError(Exception):
    """Base class of exekutor's own errors."""


class ConfigError(ExekutorError, ValueError):
    """A bad configuration value: the message is one line naming the key and its source."""


class SerializationError(ExekutorError, TypeError):
    """A job argument that cannot be serialized (at enqueue) or deserialized (in the worker)."""


class DiscardJob(ExekutorError):
    """Raise from a job to end it as discarded instead of failed (no retry)."""


class UnknownJobError(ExekutorError):
    """A payload names a job that this process does not know; it is never imported or called."""


class JobTimeoutError(ExekutorError):
    """A job ran longer than its execution_timeout."""


class QueueTimeoutError(ExekutorError):
    """A job waited in the queue longer than its queue_timeout and was not started."""


class PluginError(ExekutorError, ImportError):
    """An unknown plugin, or a plugin whose library is not installed."""


class DatabaseTimeout(ExekutorError):
    """One of the worker's own queries took longer than statement_timeout."""


class SchemaError(ExekutorError):
    """exekutor's tables are missing or out of date: run `exekutor-gevent migrate`."""


class JobCancelled(BaseException):
    """Thrown into a job an operator cancelled while it ran (`exekutor-gevent jobs cancel`, `JobRequest.cancel()`).

    A BaseException, like gevent.Timeout, so that a job's `except Exception:` does not swallow it; the job ends
    discarded with a record of this type whatever it does with it.
    """
