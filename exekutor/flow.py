"""Flow control: what a job's or a queue's limits are, checked where they are declared.

The limits themselves are enforced by the database where jobs start (migration 0011, docs/flow-control.md): a job
row carries its job-level limits (its concurrency key and limit, its rate key, limit and period), a queue's limits
and its paused state live in exekutor_queues. This module turns what users write (`concurrency=5`,
`concurrency_key=callable`, `rate_limit="10/s"`) into those columns.
"""
import re

from exekutor.serialization import text_problem

MAX_LIMIT = 10_000  # a rate limit keeps its last N start times in one row: bounded
MAX_KEY_LENGTH = 1000
PERIODS = {"s": 1, "sec": 1, "second": 1, "m": 60, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_RATE = re.compile(r"\s*(\d+)\s*/\s*([a-z]+)\s*")


class RateLimit(tuple):
    """(count, period in seconds); shown as it is written, '10/s'."""

    def __new__(cls, count, period):
        return super().__new__(cls, (count, period))

    @property
    def count(self):
        return self[0]

    @property
    def period(self):
        return self[1]

    def __str__(self):
        unit = {1: "s", 60: "m", 3600: "h"}[self.period]
        return f"{self.count}/{unit}"

    def __repr__(self):
        return repr(str(self))


def check_rate_limit(value):
    """'10/s', '100/m', '5000/h' (also /second, /minute, /hour), or a RateLimit; None: no limit."""
    if value is None or isinstance(value, RateLimit):
        return value
    match = _RATE.fullmatch(value.lower()) if isinstance(value, str) else None
    if match is None or match.group(2) not in PERIODS:
        raise ValueError(f"invalid rate_limit {shown(value)}: expected N per second, minute or hour, like '10/s', "
                         f"'100/m' or '5000/h'")
    # Past 6 digits it is out of range anyway, and int() of 4,301 digits raises Python's own error, not ours.
    count = int(match.group(1)) if len(match.group(1)) <= 6 else MAX_LIMIT + 1
    if not 1 <= count <= MAX_LIMIT:
        raise ValueError(f"invalid rate_limit {shown(value)}: the count must be from 1 to {MAX_LIMIT:,}")
    return RateLimit(count, PERIODS[match.group(2)])


def check_concurrency(value):
    """A number of runs at once, from 1 to MAX_LIMIT; None: no limit."""
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"invalid concurrency {shown(value)}: expected an integer from 1 to {MAX_LIMIT:,}")
    return value


def check_key_rule(what):
    """`concurrency_key=` / `rate_key=`: a callable (*args, **kwargs) -> str, or a str given with .set()."""

    def check(value):
        if value is None or callable(value):
            return value
        if isinstance(value, str):
            return check_key(what, value)
        raise ValueError(f"invalid {what} {shown(value)}: expected a callable (*args, **kwargs) -> str, or a str")

    return check


def shown(value, limit=80):
    """A user's value in an error message: its repr on one line, cut at `limit` characters, and never an error of
    its own (a repr may raise, span lines or run to megabytes, and an int past 4,300 digits has none)."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001 - whatever a user's __repr__ raises
        text = f"<{type(value).__name__} object>"
    text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text[:limit + 1])
    return text if len(text) <= limit else text[:limit] + "..."


def check_key(what, value):
    if not isinstance(value, str) or not value or len(value) > MAX_KEY_LENGTH:
        raise ValueError(f"invalid {what} {shown(value)}: expected a non-empty str of at most "
                         f"{MAX_KEY_LENGTH} characters")
    problem = text_problem(value)
    if problem:
        raise ValueError(f"invalid {what} {value[:80]!r}: {problem}")
    return value


def limit_columns(name, options, args, kwargs):
    """(concurrency_key, concurrency_limit, rate_key, rate_limit, rate_period) of one job, or None when it has no
    job-level limit. Keys are the job's name, and what its key rule gives for the arguments after a colon."""
    concurrency = options.get("concurrency")
    rate = options.get("rate_limit")
    check_pairs(name, options)
    if concurrency is None and rate is None:
        return None
    concurrency_key = _key(name, "concurrency_key", options.get("concurrency_key"), args, kwargs) \
        if concurrency is not None else None
    rate_key = _key(name, "rate_key", options.get("rate_key"), args, kwargs) if rate is not None else None
    rate = check_rate_limit(rate)
    return (concurrency_key, concurrency, rate_key, rate.count if rate else None, rate.period if rate else None)


def check_pairs(name, options):
    """A key rule without its limit would be ignored without a word: refused instead."""
    for key, limit in (("concurrency_key", "concurrency"), ("rate_key", "rate_limit")):
        if options.get(key) is not None and options.get(limit) is None:
            raise ValueError(f"job {name}: {key} is given without {limit}, so it would limit nothing")


def _key(name, what, rule, args, kwargs):
    if rule is None:
        return name
    derived = rule(*(args or ()), **(kwargs or {})) if callable(rule) else rule
    if not isinstance(derived, str):
        raise TypeError(f"the {what}= callable of job {name} returned {shown(derived)}: expected a str")
    return check_key(what, f"{name}:{derived}")


def check_queue_settings(name, settings):
    """The limits of one queue from config (`queues: {NAME: {concurrency: N, rate_limit: '100/m'}}`):
    {'concurrency': int or None, 'rate_limit': RateLimit or None}."""
    name = name if name.isprintable() else shown(name)  # a name with a line break must not break the message
    if settings is None:
        settings = {}
    if not isinstance(settings, dict):
        raise ValueError(f"queue {name}: expected a mapping with concurrency and/or rate_limit, got {shown(settings)}")
    unknown = sorted(set(settings) - {"concurrency", "rate_limit"})
    if unknown:
        raise ValueError(f"queue {name}: unknown setting {shown(unknown[0])} (a queue takes concurrency and "
                         f"rate_limit)")
    try:
        return {"concurrency": check_concurrency(settings.get("concurrency")),
                "rate_limit": check_rate_limit(settings.get("rate_limit"))}
    except ValueError as error:
        raise ValueError(f"queue {name}: {error}") from None


def describe(blocked_on, hide_key_of=None):
    """Why a pending job waits, in words, from its limit key ('concurrency job Import:42' ...). `hide_key_of`: the
    job's name, when the key (derived from its arguments) must not be shown; the words then say it is per key."""
    if not blocked_on:
        return None
    kind, _, subject = blocked_on.partition(" ")
    scope, _, name = subject.partition(" ")
    if kind == "paused":
        return f"queue {name} is paused"
    if hide_key_of and scope == "job" and name.startswith(hide_key_of + ":"):
        return f"{kind} limit of job {hide_key_of} (for one of its keys)"
    return f"{kind} limit of {scope} {name}"
