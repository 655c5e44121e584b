"""Recurring jobs: schedule definitions, their validation, and when they tick (DESIGN §11).

Pure: no database here (exekutor.schedule_overview reads the schedules table for the CLI, `info` and the
dashboard).
The worker's scheduler (exekutor.worker.scheduler) claims ticks in the database; this module only says which
ticks a schedule has between two instants.

- `every` ticks are multiples of the interval since the Unix epoch (UTC), so every worker computes the same
  instants whatever its start time.
- `cron` ticks are wall-clock times in the schedule's time zone, computed by cronsim, which follows Debian cron
  around DST changes: a time that does not exist (spring forward) runs at the first minute after the gap, a time
  that exists twice (fall back) runs once, at its first occurrence; expressions whose minute or hour field is a
  wildcard run by elapsed time (every real hour, every 5 real minutes).
"""
from __future__ import annotations

import datetime as dt
import math
import zoneinfo
from dataclasses import dataclass, field, fields

from exekutor.durations import MAX_DURATION, MAX_DURATION_TEXT, parse_duration

UTC = dt.timezone.utc
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
MIN_EVERY = 1.0  # seconds: finer schedules belong in a loop, not a queue
MAX_EVERY = MAX_DURATION  # 100 years, as every duration option: beyond, tick arithmetic overflows datetime
MAX_CATCH_UP = 1000  # jobs one catch-up enqueues at most (the most recent ticks); older ones are skipped
CRON_NAMES = {
    "@yearly": "0 0 1 1 *", "@annually": "0 0 1 1 *", "@monthly": "0 0 1 * *", "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *", "@midnight": "0 0 * * *", "@hourly": "0 * * * *",
}
KEYS = ("job", "cron", "every", "timezone", "args", "kwargs", "catch_up", "pass_tick")
_MICROSECOND = dt.timedelta(microseconds=1)


class ScheduleError(ValueError):
    """A schedule that cannot be used; the message is one line naming the schedule."""


@dataclass(frozen=True)
class Schedule:
    name: str
    job: str  # the registered job name
    cron: str | None = None  # 5 fields, with the @names expanded
    every: float | None = None  # seconds
    timezone: str = "UTC"
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)
    catch_up: bool = False
    pass_tick: bool = False  # give the job its tick as the keyword argument `tick` (an aware datetime in UTC)
    source: str = "decorator"

    # --- ticks --------------------------------------------------------------------------------------------

    def next_after(self, moment):
        """The first tick strictly after `moment` (an aware datetime), in UTC; None if the cron never matches."""
        if self.every is not None:
            step = _step(self.every)
            return EPOCH + ((moment - EPOCH) // step + 1) * step
        for tick in self._cron_ticks(moment, reverse=False):
            if tick > moment:  # a wall time that exists twice reads back as its first occurrence
                return tick
        return None

    def latest_at(self, moment):
        """The last tick at or before `moment`, in UTC; None if there is none."""
        if self.every is not None:
            step = _step(self.every)
            return EPOCH + ((moment - EPOCH) // step) * step
        for tick in self._cron_ticks(moment + _MICROSECOND, reverse=True):
            if tick <= moment:
                return tick
        return None

    def due_ticks(self, last, now, limit=MAX_CATCH_UP):
        """(ticks to enqueue, oldest first; whether older due ticks were left out) for the period (last, now].

        catch_up: one tick per job, the most recent `limit` of them. Otherwise only the latest tick: one job
        stands for all the ticks missed while no worker ran."""
        latest = self.latest_at(now)
        if latest is None or last is not None and latest <= last:
            return [], False
        if not self.catch_up or last is None:
            return [latest], False
        ticks = self._ticks_back(latest, last, limit + 1)
        return ticks[:limit][::-1], len(ticks) > limit

    def _ticks_back(self, latest, last, count):
        """Up to `count` ticks after `last`, newest first, from `latest` down."""
        if self.every is not None:
            step = _step(self.every)
            total = (latest - last - _MICROSECOND) // step + 1  # ticks in (last, latest]
            return [latest - i * step for i in range(min(total, count))]
        ticks = []
        for tick in self._cron_ticks(latest + _MICROSECOND, reverse=True):
            if tick <= last or len(ticks) == count:
                break
            if tick <= latest and (not ticks or tick < ticks[-1]):
                ticks.append(tick)
        return ticks

    def _cron_ticks(self, start, reverse):
        from cronsim import CronSim  # imported by the first cron schedule: a process with none never pays for it

        zone = zoneinfo.ZoneInfo(self.timezone)
        try:
            for tick in CronSim(self.cron, start.astimezone(zone), reverse=reverse):
                yield tick.astimezone(UTC)
        except StopIteration:  # cronsim gives up after 50 years without a match (e.g. "0 0 30 2 *")
            return

    # --- storage and display ------------------------------------------------------------------------------

    @property
    def when(self):
        """`cron 0 3 * * * (Europe/Amsterdam)` or `every 30s`."""
        if self.every is not None:
            return f"every {_seconds_text(self.every)}"
        return f"cron {self.cron}" + (f" ({self.timezone})" if self.timezone != "UTC" else "")

    def definition(self):
        """What the workers store in exekutor_schedules.definition (JSON): enough to list it and compute its ticks."""
        from exekutor.serialization import dump_arguments

        arguments = dump_arguments(self.args, self.kwargs, job_name=self.job)
        timing = {"every": self.every} if self.every is not None else {"cron": self.cron}
        return {"job": self.job, **timing, "timezone": self.timezone, "args": arguments["args"],
                "kwargs": arguments["kwargs"], "catch_up": self.catch_up, "pass_tick": self.pass_tick,
                "source": self.source}


def _step(seconds):
    return dt.timedelta(microseconds=round(seconds * 1_000_000))


def _seconds_text(seconds):
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size:g}{unit}"
    return f"{seconds:g}s"


# ---------------------------------------------------------------------------------------------------------------
# Building and validating


def make_schedule(name, job, cron=None, every=None, timezone="UTC", args=(), kwargs=None, catch_up=False,
                  pass_tick=False, source="decorator"):
    """A validated Schedule; ScheduleError (a ValueError) naming the schedule otherwise."""
    where = f"schedule {name!r}"
    if not isinstance(name, str) or not name.strip():
        raise ScheduleError(f"invalid schedule name {name!r}: expected a non-empty string")
    if not isinstance(job, str) or not job:
        raise ScheduleError(f"{where}: 'job' must be the name of a registered job, got {job!r}")
    if (cron is None) == (every is None):
        raise ScheduleError(f"{where}: give either cron or every, not {'both' if cron is not None else 'neither'}")
    timezone = check_timezone(where, timezone)
    cron = check_cron(where, cron, timezone) if cron is not None else None
    every = check_every(where, every) if every is not None else None
    args, kwargs = _check_arguments(where, job, args, kwargs)
    for key, value in (("catch_up", catch_up), ("pass_tick", pass_tick)):
        if not isinstance(value, bool):
            raise ScheduleError(f"{where}: {key} must be true or false, got {value!r}")
    if pass_tick and "tick" in kwargs:
        raise ScheduleError(f"{where}: pass_tick gives the job a 'tick' keyword argument; kwargs has one already")
    return Schedule(name, job, cron, every, timezone, args, kwargs, catch_up, pass_tick, source)


def check_timezone(where, name):
    if not isinstance(name, str) or not name:
        raise ScheduleError(f"{where}: timezone must be an IANA time zone name like 'Europe/Amsterdam', got {name!r}")
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        raise ScheduleError(f"{where}: unknown time zone {name!r} (expected an IANA name like "
                            f"'Europe/Amsterdam')") from None
    return name


def check_cron(where, expression, timezone="UTC"):
    """The expression with @names expanded; 5 fields only (cronsim would also take a seconds field)."""
    from cronsim import CronSim, CronSimError  # imported by the first cron schedule, as in Schedule._cron_ticks

    if not isinstance(expression, str):
        raise ScheduleError(f"{where}: cron must be a string like '*/5 * * * *', got {expression!r}")
    text = " ".join(expression.split())
    text = CRON_NAMES.get(text.lower(), text)
    if len(text.split()) != 5:
        raise ScheduleError(f"{where}: invalid cron expression {expression!r}: expected 5 fields (minute hour "
                            f"day-of-month month day-of-week) or one of {', '.join(CRON_NAMES)}")
    try:
        CronSim(text, dt.datetime.now(zoneinfo.ZoneInfo(timezone)))
    except CronSimError as error:
        raise ScheduleError(f"{where}: invalid cron expression {expression!r}: {error}") from None
    return text


def check_every(where, value):
    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
    try:
        seconds = parse_duration(seconds)
    except (TypeError, ValueError):
        seconds = None
    if seconds is None or not math.isfinite(seconds) or not MIN_EVERY <= seconds <= MAX_EVERY:
        raise ScheduleError(f"{where}: every must be a duration from {MIN_EVERY:g} second to {MAX_DURATION_TEXT} "
                            f"(a number of seconds or a string like '30s', '15m', '1d'), got {shorten(repr(value))}")
    return seconds


def shorten(text, limit=80):
    return text if len(text) <= limit else text[:limit - 3] + "..."


def check_schedule(schedule):
    """A Schedule built directly (not by make_schedule), validated as make_schedule would."""
    return make_schedule(**{item.name: getattr(schedule, item.name) for item in fields(schedule)})


def _check_arguments(where, job, args, kwargs):
    from exekutor.serialization import dump_arguments

    kwargs = {} if kwargs is None else kwargs
    if not isinstance(args, (list, tuple)):
        raise ScheduleError(f"{where}: args must be a list, got {args!r}")
    if not isinstance(kwargs, dict) or not all(isinstance(key, str) for key in kwargs):
        raise ScheduleError(f"{where}: kwargs must be a mapping with string keys, got {kwargs!r}")
    try:
        dump_arguments(tuple(args), kwargs, job_name=job)  # fails now, not at the first tick
    except ValueError as error:
        raise ScheduleError(f"{where}: {error}") from None
    return tuple(args), dict(kwargs)


def from_mapping(name, entry, source="config"):
    """A schedule from the config file's `schedules:` section (one entry); ScheduleError naming bad keys."""
    if not isinstance(entry, dict):
        raise ScheduleError(f"schedule {name!r}: expected a mapping with job and cron or every, got {entry!r}")
    unknown = sorted(set(map(str, entry)) - set(KEYS))
    if unknown:
        import difflib

        close = difflib.get_close_matches(unknown[0], KEYS, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ScheduleError(f"schedule {name!r}: unknown key {unknown[0]!r}{hint}; allowed: {', '.join(KEYS)}")
    return make_schedule(name, source=source, **entry)


def from_definition(name, definition):
    """(schedule, None) back from the table's definition column (to compute its next tick), or (None, why not):
    the column holds any JSON, written by another version or by hand."""
    if not isinstance(definition, dict):
        return None, f"its definition is not a JSON object: {shorten(repr(definition))}"
    options = {key: definition[key] for key in KEYS if key in definition}
    try:
        return make_schedule(name, source=str(definition.get("source", "database")),
                             **{**options, "args": (), "kwargs": {}}), None
    except ScheduleError as error:
        return None, str(error).removeprefix(f"schedule {name!r}: ")
    except TypeError:  # "job" missing: make_schedule's required argument
        return None, "its definition names no job"


# ---------------------------------------------------------------------------------------------------------------
# Decorator-defined schedules


class ScheduleRegistry:
    def __init__(self):
        self._schedules = {}

    def add(self, schedule):
        existing = self._schedules.get(schedule.name)
        if existing is not None and existing != schedule:
            raise ValueError(f"a different schedule is already registered as {schedule.name!r}; give one of them "
                             "another name=")
        self._schedules[schedule.name] = schedule

    def remove(self, name):
        self._schedules.pop(name, None)

    def all(self):
        return dict(self._schedules)


registry = ScheduleRegistry()


def periodic(cron=None, every=None, timezone="UTC", args=(), kwargs=None, name=None, catch_up=False,
             pass_tick=False):
    """Run a registered job on a schedule: `@exekutor.periodic(cron="0 3 * * *")` above `@exekutor.job`.

    `cron`: 5 fields or @hourly/@daily/@weekly/@monthly/@yearly/@annually/@midnight, in `timezone` (IANA);
    `every`: a duration of at least 1 s (seconds, '30s', '15m'), ticking at multiples of it since the epoch.
    `name` defaults to the job's name. `catch_up=True` enqueues one job per tick missed while no worker ran
    (at most 1000) instead of one for all. `pass_tick=True` calls the job with `tick=` its scheduled instant."""

    def decorate(target):
        definition = _definition_of(target)
        registry.add(make_schedule(name or definition.name, definition.name, cron, every, timezone, args, kwargs,
                                   catch_up, pass_tick))
        return target

    return decorate


def _definition_of(target):
    definition = getattr(target, "definition", None) or getattr(getattr(target, "_exekutor_api", None),
                                                                "definition", None)
    if definition is None:
        raise TypeError(f"@exekutor.periodic needs a registered job: put it above @exekutor.job (or on an "
                        f"exekutor.Job class), got {target!r}")
    return definition


def active_schedules(configured):
    """{name: Schedule}: the decorators' schedules and `configured`, the config's (config.get("schedules")),
    winning on a shared name."""
    return {**registry.all(), **configured}
