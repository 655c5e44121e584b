"""Running one job: argument loading, the execution hooks, and turning what happened into an outcome.

The worker's executor and `perform_now` share this path. What a job's run ends as:
  completed  - it returned;
  discarded  - it raised DiscardJob or one of its discard_on errors, timed out, or waited past queue_timeout;
               or its payload names a method not declared asynchronous (see exekutor.asynchronous);
  retry      - it raised an error its Retry policy covers and attempts remain (pending again, later);
  release    - its connection to our database was lost (pending again: not the job's fault);
  failed     - anything else, including a payload naming an unknown job or arguments that do not load, and a
               job that blocked the worker's event loop past blocking_timeout (never retried).

"Raised" means any BaseException: a job's own gevent.Timeout, GreenletExit, SystemExit or KeyboardInterrupt is
the job's failure like any other error. Only the worker's own interruptions (the kill at stop) are not outcomes;
the worker tells `execute` which those are.
"""
import functools
import logging
import time

from exekutor import hooks
from exekutor.db.green import is_connection_lost
from exekutor.definitions import clamp_delay, registry, reject_undeclared_method
from exekutor.error_records import error_record
from exekutor.errors import (
    DiscardJob,
    JobBlockedError,
    JobCancelled,
    JobTimeoutError,
    QueueTimeoutError,
    SerializationError,
    UnknownJobError,
)
from exekutor.serialization import load_arguments

logger = logging.getLogger("exekutor")

COMPLETED, FAILED, DISCARDED, RETRY, RELEASE = "c", "f", "d", "retry", "release"
# A job that keeps losing its connection is released at most this many times (since its enqueue or an operator's
# retry), then its Retry policy decides, instead of being released forever.
MAX_RELEASES = 25
RELEASE_DELAY = 5.0


class Outcome:
    __slots__ = ("job_id", "status", "runtime", "error", "delay", "queue", "attempts", "holds")

    def __init__(self, job_id, status, runtime=None, error=None, delay=None, queue=None, attempts=None, holds=None):
        self.job_id = job_id
        self.status = status
        self.runtime = runtime
        self.error = error
        self.delay = delay
        self.queue = queue
        self.attempts = attempts
        self.holds = holds  # the concurrency limits whose slots the run held (exekutor.flow)

    def __repr__(self):
        return f"<Outcome {self.job_id} {self.status}>"


def find_definition(info):
    """The registered definition a job info mapping names; raises UnknownJobError, or NotAsynchronousError (a
    DiscardJob) for a method not declared asynchronous in a class that declares others."""
    payload = info["payload"]
    if not isinstance(payload, dict):
        raise UnknownJobError(f"malformed payload {str(payload)[:100]}: expected a JSON object naming the job (a "
                              "payload that does not parse, for example one nested too deeply, reads as None)")
    name = payload.get("job")
    definition = registry.get(name) if isinstance(name, str) else None
    if definition is None:
        reject_undeclared_method(name)
        raise UnknownJobError(f"unknown job {name!r}: not registered in this worker (jobs are registered by "
                              "importing the modules that define them; see the --app option)")
    return definition


def queue_timeout_expired(info):
    """Whether the job waited longer than its queue_timeout since it became due (its scheduled_at: the enqueue, its
    wait, or its retry's time), as the reservation measured it on the database's clock (`waited`)."""
    limit = (info.get("options") or {}).get("queue_timeout")
    return limit is not None and info["waited"] > limit


def check_options(info):
    """A row whose options are not what exekutor writes (a hand-made or foreign row) fails with a clear error
    instead of breaking the code that reads them."""
    options = info.get("options")
    if not options:
        return  # most jobs have none
    if (not isinstance(options, dict) or not all(_is_seconds(options.get(name)) for name in _TIME_OPTIONS)
            or not _is_count(options.get("retry_base"))):
        raise SerializationError(f"malformed job options {str(options)[:200]}: expected an object whose "
                                 "execution_timeout and queue_timeout are numbers of seconds (and retry_base an "
                                 "integer)")


_TIME_OPTIONS = ("execution_timeout", "queue_timeout")


def _is_count(value):
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _is_seconds(value):
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def run(definition, args, kwargs, info):
    """Call the job with the execution hooks around it; returns its result, raises its error.

    With `args` None (the worker's path) the arguments are loaded from info's payload inside the hooks, as
    ActiveJob does, so that a serializer can use what an around hook sets up (a Flask app context, a session).
    """
    if args is None:
        call = functools.partial(_call_with_payload, definition, info["payload"])
    else:
        call = functools.partial(definition.func, *args, **kwargs)
    if not _has_execution_hooks():
        return call()
    hooks.run_before("before_job_execution", info)
    result = hooks.run_around("around_job_execution", call, info)
    hooks.run_after("after_job_execution", info)
    return result


def _call_with_payload(definition, payload):
    args, kwargs = load_arguments(payload)
    return definition.func(*args, **kwargs)


def classify(definition, info, error, runtime, own_server=None):
    """The outcome of a job run that raised `error` (any BaseException); `own_server` is the worker's database
    (see exekutor.db.green.is_connection_lost)."""
    job_id, attempts = info["id"], attempts_in_budget(info)
    record = error_record(error)
    if isinstance(error, (DiscardJob, JobCancelled)) or (definition and isinstance(error, definition.discard_on)):
        return Outcome(job_id, DISCARDED, runtime, record)
    if isinstance(error, (JobTimeoutError, QueueTimeoutError)):
        return Outcome(job_id, DISCARDED, runtime, record)
    if isinstance(error, JobBlockedError):  # not retried: every run would block the worker's loop again
        hooks.run_on("on_job_failure", info, error)
        return Outcome(job_id, FAILED, runtime, record)
    if info.get("releases", 0) < MAX_RELEASES and is_connection_lost(error, own_server):
        return Outcome(job_id, RELEASE, runtime, record, delay=RELEASE_DELAY)
    if not isinstance(error, (UnknownJobError, SerializationError)):
        hooks.run_on("on_job_failure", info, error)
    retry = definition.retry if definition else None
    if retry is not None and retry.should_retry(error, attempts):
        return Outcome(job_id, RETRY, runtime, record, delay=_retry_delay(retry, info))
    return Outcome(job_id, FAILED, runtime, record)


def attempts_in_budget(info):
    """The attempts a Retry policy counts: those since an operator last retried the job (`exekutor-gevent jobs
    retry` keeps the attempt it had reached in the job's options as retry_base, and resets its releases), else all
    of them; less the releases among them (a lost connection is not the job's failure), but never below this one."""
    options, attempts = info.get("options"), info["attempts"]
    base = options.get("retry_base") if isinstance(options, dict) else None
    if isinstance(base, int) and not isinstance(base, bool) and 0 <= base < attempts:  # else a hand-made row
        attempts -= base
    return max(1, attempts - info.get("releases", 0))


def _retry_delay(retry, info):
    """The retry's delay, clamped (see exekutor.jobs.clamp_delay); a backoff callable that fails waits max_wait."""
    try:
        return clamp_delay(retry.delay(attempts_in_budget(info)))
    except Exception as error:  # noqa: BLE001 - the user's backoff must not cost the job its outcome
        logger.error("exekutor job %s: its Retry backoff raised %s: %s; retrying after max_wait (%gs)", info["id"],
                     type(error).__name__, error, retry.max_wait)
        return clamp_delay(retry.max_wait)


def execute(info, call=run, interrupted_by_worker=None, own_server=None):
    """Run the job described by `info` and return its Outcome. `call` lets the worker add a time limit;
    `interrupted_by_worker(error)` says whether a BaseException is the worker's own interruption, which is
    re-raised instead of becoming an outcome."""
    started = time.time()
    definition = None
    try:
        check_options(info)
        if queue_timeout_expired(info):
            limit = info["options"]["queue_timeout"]
            error = QueueTimeoutError(f"job waited longer than its queue_timeout of {limit}s")
            return Outcome(info["id"], DISCARDED, 0.0, error_record(error))
        definition = find_definition(info)
        call(definition, None, None, info)  # run() loads the arguments, inside the execution hooks
    except BaseException as error:  # noqa: BLE001 - every job error becomes a recorded outcome
        if interrupted_by_worker is not None and interrupted_by_worker(error):
            raise
        return classify(definition, info, error, time.time() - started, own_server)
    return Outcome(info["id"], COMPLETED, time.time() - started)


def perform_inline(definition, args, kwargs, options):
    """`perform_now`: run in this process with the execution hooks; the job's errors propagate."""
    info = {"id": None, "queue": options.get("queue") or definition.options.get("queue") or "default",
            "priority": options.get("priority") or definition.options.get("priority"),
            "options": {}, "payload": {"job": definition.name, "args": list(args), "kwargs": kwargs},
            "scheduled_at": None, "enqueued_at": None, "attempts": 1}
    try:
        return run(definition, args, kwargs, info)
    except DiscardJob:
        raise
    except Exception as error:
        hooks.run_on("on_job_failure", info, error)
        raise


def _has_execution_hooks():
    has = hooks.has_hooks
    return has("before_job_execution") or has("around_job_execution") or has("after_job_execution")
