"""What a job is, apart from how it is enqueued or run: its options and their checks, retries, its definition and
the registry of definitions by name.

A worker runs only jobs registered here by importing the application's modules: a payload is looked up by
name in `registry` and nothing is ever imported because a payload says so. The public decorators that make
definitions (`@exekutor.job`, `exekutor.Job`) are in exekutor.jobs; this module imports neither the enqueue nor the
execution path, which both import it.
"""
import datetime as _dt
import difflib
import random
import sys

from exekutor import flow
from exekutor.errors import DiscardJob, UnknownJobError
from exekutor.serialization import text_problem

MAX_QUEUE_NAME_LENGTH = 63
# The furthest ahead a job can be scheduled (wait, wait_until) and the longest timeout: 100 years of 365 days.
# PostgreSQL's timestamptz reaches the year 294276; the bound keeps enqueue-time values far inside what the
# database and the worker (float seconds, gevent timers) can represent, so a bad value fails in Python.
MAX_WAIT = MAX_TIMEOUT = 100 * 365 * 24 * 3600.0
MIN_PRIORITY, MAX_PRIORITY = 1, 32767
DEFAULT_QUEUE = "default"
# Options given at definition, and those `.set()` accepts.
# Flow control (exekutor.flow): limits shared by every worker.
FLOW_OPTIONS = ("concurrency", "concurrency_key", "rate_limit", "rate_key")
DEFINITION_OPTIONS = ("queue", "priority", "execution_timeout", "queue_timeout", "unique", "unique_until",
                      *FLOW_OPTIONS)
ENQUEUE_OPTIONS = ("queue", "priority", "execution_timeout", "queue_timeout", "unique_until", "unique_key", "wait",
                   "wait_until", "connection", *FLOW_OPTIONS)
# How long a unique job holds its key (see exekutor.db.migrations 0005), and the longest key.
UNIQUE_UNTIL = {"finished": "f", "started": "s"}
MAX_UNIQUE_KEY_LENGTH = 1000


# --- validation -------------------------------------------------------------------------------------------

def _unknown_option(name, allowed):
    hint = difflib.get_close_matches(name, allowed, n=1)
    suffix = f" (did you mean '{hint[0]}'?)" if hint else ""
    return ValueError(f"unknown job option '{name}'{suffix}; allowed: {', '.join(allowed)}")


def _is_number(value):
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _show(value):
    """repr() that survives ints too long to print (over 4,300 digits)."""
    try:
        return repr(value)
    except ValueError:
        return f"<int of {value.bit_length()} bits>"


def _check_name(what, value, max_length):
    """A non-empty str of at most `max_length` characters that PostgreSQL text can hold."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"invalid {what} {value!r}: expected a non-empty string")
    if len(value) > max_length:
        raise ValueError(f"invalid {what} {value[:40]!r}...: longer than {max_length} characters")
    problem = text_problem(value)
    if problem:
        raise ValueError(f"invalid {what} {value[:80]!r}: {problem}")
    return value


def check_queue(queue):
    return _check_name("queue name", queue, MAX_QUEUE_NAME_LENGTH)


def check_job_name(name):
    problem = text_problem(name) if isinstance(name, str) else None
    if problem:
        raise ValueError(f"invalid job name {name!r}: {problem}")
    return name


def check_priority(priority):
    if not isinstance(priority, int) or isinstance(priority, bool) or not MIN_PRIORITY <= priority <= MAX_PRIORITY:
        raise ValueError(f"invalid priority {priority!r}: expected an integer from {MIN_PRIORITY} (highest) "
                         f"to {MAX_PRIORITY} (lowest)")
    return priority


def check_seconds(name, value, allow_zero=False, maximum=None):
    """A duration option as seconds (float); timedelta accepted. With `maximum`, also finite and at most that."""
    original = value
    if isinstance(value, _dt.timedelta):
        value = value.total_seconds()
    # Comparisons, not float(): an int too large for a float is compared exactly (and refused), NaN fails them.
    valid = _is_number(value) and (value >= 0 if allow_zero else value > 0)
    if valid and maximum is not None:
        valid = value <= maximum
    if valid:
        try:
            return float(value)
        except OverflowError:  # no maximum (Retry's max_wait may be inf) but an int beyond any float
            pass
    bound = ">= 0" if allow_zero else "> 0"
    if maximum is not None:
        bound = f"{bound} and at most {maximum:.0f} ({_years(maximum)})"
    raise ValueError(f"invalid {name} {_show(original)}: expected a number of seconds {bound}")


def _years(seconds):
    return f"{seconds / (365 * 24 * 3600):g} years"


def check_wait(value):
    return check_seconds("wait", value, allow_zero=True, maximum=MAX_WAIT)


def check_timeout(name):
    return lambda value: check_seconds(name, value, maximum=MAX_TIMEOUT)


def check_wait_until(value):
    """An aware datetime in UTC (what PostgreSQL reads whatever the offset: Python allows offsets with
    microseconds, timestamptz does not), at most MAX_WAIT ahead."""
    if not isinstance(value, _dt.datetime):
        raise ValueError(f"invalid wait_until {value!r}: expected a datetime")
    try:
        # A naive datetime means local time, as datetime.now() would give.
        aware = value if value.utcoffset() is not None else value.astimezone()
        utc = aware.astimezone(_dt.timezone.utc)
        too_late = utc - _dt.datetime.now(_dt.timezone.utc) > _dt.timedelta(seconds=MAX_WAIT)
    except (OverflowError, ValueError, OSError) as exc:
        raise ValueError(f"invalid wait_until {value!r}: cannot be converted to UTC ({exc})") from None
    if too_late:
        raise ValueError(f"invalid wait_until {value!r}: more than {_years(MAX_WAIT)} from now")
    return utc


def check_unique(value):
    """`unique=`: True (the key is the job's name and arguments), False, or a callable deriving the key."""
    if isinstance(value, bool) or callable(value):
        return value
    raise ValueError(f"invalid unique {value!r}: expected True, False or a callable (*args, **kwargs) -> str")


def check_unique_until(value):
    if value not in UNIQUE_UNTIL:
        raise ValueError(f"invalid unique_until {value!r}: expected 'finished' or 'started'")
    return value


def check_unique_key(value):
    return _check_name("unique key", value, MAX_UNIQUE_KEY_LENGTH)


_CHECKS = {
    "queue": check_queue,
    "priority": check_priority,
    "execution_timeout": check_timeout("execution_timeout"),
    "queue_timeout": check_timeout("queue_timeout"),
    "wait": check_wait,
    "wait_until": check_wait_until,
    "connection": lambda v: v,
    "unique": check_unique,
    "unique_until": check_unique_until,
    "unique_key": check_unique_key,
    "concurrency": flow.check_concurrency,
    "concurrency_key": flow.check_key_rule("concurrency_key"),
    "rate_limit": flow.check_rate_limit,
    "rate_key": flow.check_key_rule("rate_key"),
}


def validate_options(options, allowed=ENQUEUE_OPTIONS):
    """Checked copy of job options; None values mean "not set" and are dropped."""
    checked = {}
    for name, value in options.items():
        if name not in allowed:
            raise _unknown_option(name, allowed)
        if value is not None:
            checked[name] = _CHECKS[name](value)
    if "wait" in checked and "wait_until" in checked:
        raise ValueError("give either wait or wait_until, not both")
    return checked


# --- retries ----------------------------------------------------------------------------------------------

# The longest a retry waits, whatever its settings: PostgreSQL cannot represent `now() + 1e13 seconds`, and an
# outcome the database refuses must never hold back the others (see exekutor.worker.completer).
MAX_RETRY_DELAY = 365 * 24 * 3600.0


def clamp_delay(seconds):
    """A retry delay the database can store: 0 to MAX_RETRY_DELAY seconds (NaN and negative values: 0)."""
    seconds = float(seconds)
    if not seconds > 0:  # also NaN
        return 0.0
    return min(seconds, MAX_RETRY_DELAY)


class Retry:
    """How a failing job is retried: at most `attempts` runs in all, waiting longer after each failure.

    backoff: "exponential" (wait, 2×wait, 4×wait, …), "linear" (wait, 2×wait, …), "fixed", or a callable
    taking the attempt number (1 for the first failure) and returning seconds. Only errors that are
    instances of `on` are retried; others fail the job at once. A delay is at most MAX_RETRY_DELAY (a year).
    """

    BACKOFFS = ("exponential", "linear", "fixed")

    def __init__(self, attempts=5, backoff="exponential", wait=3.0, max_wait=3600.0, on=(Exception,), jitter=0.1):
        if not isinstance(attempts, int) or isinstance(attempts, bool) or attempts < 1:
            raise ValueError(f"invalid Retry attempts {attempts!r}: expected an integer >= 1")
        if not callable(backoff) and backoff not in self.BACKOFFS:
            raise ValueError(f"invalid Retry backoff {backoff!r}: expected one of {', '.join(self.BACKOFFS)} "
                             "or a callable")
        self.attempts = attempts
        self.backoff = backoff
        self.wait = check_seconds("Retry wait", wait, allow_zero=True)
        self.max_wait = check_seconds("Retry max_wait", max_wait)
        self.on = _exception_tuple("Retry on", on)
        if not _is_number(jitter) or not 0 <= jitter <= 1:
            raise ValueError(f"invalid Retry jitter {jitter!r}: expected a fraction from 0 to 1")
        self.jitter = jitter

    def should_retry(self, error, attempt):
        return attempt < self.attempts and isinstance(error, self.on)

    def delay(self, attempt):
        """Seconds to wait after failed attempt number `attempt` (1-based)."""
        if callable(self.backoff):
            base = float(self.backoff(attempt))
        elif self.backoff == "exponential":
            base = self.wait * 2 ** min(attempt - 1, 62)
        elif self.backoff == "linear":
            base = self.wait * attempt
        else:
            base = self.wait
        base = min(base, self.max_wait)
        return clamp_delay(base * (1 + self.jitter * (random.random() - 0.5)))

    def __repr__(self):
        return f"Retry(attempts={self.attempts}, backoff={self.backoff!r}, wait={self.wait})"


def _exception_tuple(what, value):
    value = value if isinstance(value, (tuple, list)) else (value,)
    for item in value:
        if not (isinstance(item, type) and issubclass(item, BaseException)):
            raise ValueError(f"invalid {what} {item!r}: expected exception classes")
    return tuple(value)


# --- definitions ------------------------------------------------------------------------------------------

class JobRegistry:
    """Registered jobs by name: what a worker is allowed to run."""

    def __init__(self):
        self._jobs = {}

    def add(self, definition):
        existing = self._jobs.get(definition.name)
        if existing is not None and existing.target_id != definition.target_id:
            raise ValueError(f"a different job is already registered as {definition.name!r}; "
                             "give one of them another name=")
        self._jobs[definition.name] = definition

    def get(self, name):
        return self._jobs.get(name)

    def remove(self, name):
        self._jobs.pop(name, None)

    def names(self):
        return sorted(self._jobs)

    def __contains__(self, name):
        return name in self._jobs


registry = JobRegistry()


def default_name(obj):
    """`module:qualname`, with a script's `__main__` replaced by the name it is importable as."""
    module = obj.__module__
    if module == "__main__":
        main = sys.modules.get("__main__")
        spec = getattr(main, "__spec__", None)
        if spec is not None and spec.name:
            module = spec.name
        elif getattr(main, "__file__", None):
            module = main.__file__.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    return f"{module}:{obj.__qualname__}"


class JobDefinition:
    """What the worker needs to run one kind of job: the callable and its default options."""

    def __init__(self, name, func, options, retry=None, discard_on=(), target_id=None):
        self.name = check_job_name(name)
        self.func = func
        self.options = validate_options(options, DEFINITION_OPTIONS)
        flow.check_pairs(self.name, self.options)
        # The per-job options stored with each job of this definition (shared, never mutated).
        self.timeouts = {k: v for k, v in self.options.items() if k in ("execution_timeout", "queue_timeout")}
        if retry is not None and not isinstance(retry, Retry):
            raise ValueError(f"invalid retry {retry!r} for job {name}: expected exekutor.Retry(...)")
        self.retry = retry
        self.discard_on = _exception_tuple(f"discard_on of job {name}", discard_on or ())
        self.target_id = target_id if target_id is not None else id(func)

    def __repr__(self):
        return f"<job {self.name}>"


# --- asynchronous scopes ----------------------------------------------------------------------------------

# "module:Class" (for methods) and "module" (for functions) that declare asynchronous methods (exekutor.asynchronous):
# a payload naming another method of such a class is discarded, never called.
_asynchronous_scopes = set()


class NotAsynchronousError(DiscardJob, UnknownJobError):
    """A payload names a method that is not declared asynchronous (or gives it a receiver it does not accept):
    the job is discarded and nothing is called."""


# The type name error records (and users' checks) have always had: the public home is exekutor.asynchronous.
NotAsynchronousError.__module__ = "exekutor.asynchronous"


def asynchronous_scope(name):
    """'m:Class' for 'm:Class.method', 'm' for 'm:function'; None for names not of that form."""
    module, colon, qualname = name.partition(":")
    if not colon:
        return None
    return f"{module}:{qualname.rpartition('.')[0]}" if "." in qualname else module


def declare_asynchronous(name):
    """Note that the class (or module) of the job `name` declares asynchronous methods."""
    _asynchronous_scopes.add(asynchronous_scope(name))


def reject_undeclared_method(name):
    """Raise NotAsynchronousError if `name`, which is not a registered job, is in a class (or module) that declares
    asynchronous methods. The worker calls this for every payload whose job name it does not know."""
    if isinstance(name, str) and asynchronous_scope(name) in _asynchronous_scopes:
        raise NotAsynchronousError(f"{name} is not declared asynchronous (only methods decorated with "
                                   "@exekutor.asynchronous can run from a job): the job is discarded, not called")
