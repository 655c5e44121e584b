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


class LoopBlocked(BaseException):
    """Raised inside a job that blocked the worker's event loop past its limit (see exekutor.worker.watchdog).

    A BaseException, like gevent.Timeout: the worker turns it into the job's JobTimeoutError (past its
    execution_timeout) or JobBlockedError (past blocking_timeout); a job should not catch it.
    """


class JobBlockedError(ExekutorError):
    """A job blocked the worker's event loop (CPU work or a blocking call gevent cannot make cooperative) for
    longer than blocking_timeout: it was interrupted, or given up on, and ended failed."""


class WorkerLost(ExekutorError):
    """Recorded when a job's worker was presumed dead while it ran the job (killed, stopped, cut off): the job
    runs again, up to max_job_rescues times, then ends failed."""
