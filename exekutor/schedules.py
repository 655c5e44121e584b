"""Recurring jobs: schedule definitions, their validation, and when they tick (DESIGN §11).

Pure: no database here except `overview()` at the end, which reads the schedules table for the CLI and `info`.
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

from cronsim import CronSim, CronSimError

from exekutor.config import MAX_DURATION, MAX_DURATION_TEXT

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
    from exekutor.config import parse_duration

    seconds = value.total_seconds() if isinstance(value, dt.timedelta) else value
    try:
        seconds = parse_duration(seconds)
    except (TypeError, ValueError):
        seconds = None
    if seconds is None or not math.isfinite(seconds) or not MIN_EVERY <= seconds <= MAX_EVERY:
        raise ScheduleError(f"{where}: every must be a duration from {MIN_EVERY:g} second to {MAX_DURATION_TEXT} "
                            f"(a number of seconds or a string like '30s', '15m', '1d'), got {_cut(repr(value))}")
    return seconds


def _cut(text, limit=80):
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
        return None, f"its definition is not a JSON object: {_cut(repr(definition))}"
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


def active_schedules(configured=None):
    """{name: Schedule}: the decorators' schedules and the config file's, the file winning on a shared name."""
    if configured is None:
        from exekutor import config

        configured = config.get("schedules")
    return {**registry.all(), **configured}


# ---------------------------------------------------------------------------------------------------------------
# Reading the table (the CLI's `schedules`, `info`)

# A timestamptz Python cannot hold (a year past 9999, written by hand) reads as NULL rather than failing the listing.
_READABLE = "CASE WHEN {0} BETWEEN '0001-01-01 00:00+00' AND '9999-12-31 23:59:59.999999+00' THEN {0} END"
_OVERVIEW = f"""
SELECT s.name, s.definition, CASE WHEN s.last_enqueued_at IS NOT NULL THEN {_READABLE.format('s.last_tick')} END,
       {_READABLE.format('s.last_tick')}, s.paused_at, s.last_job_id::text, j.status, j.cancel_requested_at
FROM exekutor_schedules s LEFT JOIN exekutor_jobs j ON j.id = s.last_job_id
ORDER BY s.name
"""


def overview(conn, configured=None):
    """[{name, job, when, catch_up, source, last_run, next_run, in_database, problem}] from the table plus
    `configured` ({name: Schedule}, e.g. active_schedules()), in name order. Times are the database's.

    `problem` (else None) says on one line why a schedule is not run as listed: it cannot be computed (any row
    the table may hold is listed), or it names a job this process has not registered (checked when this process
    has registered any: `--app`, the application around the dashboard). A missing table raises UndefinedTable:
    the callers' "run migrate"."""
    from exekutor.jobs import registry as jobs

    with conn.cursor() as cursor:
        cursor.execute("SELECT now()")
        now = cursor.fetchone()[0]
        cursor.execute(_OVERVIEW)
        stored = {row[0]: row for row in cursor.fetchall()}
    registered = set(jobs.names()) or None
    return [_overview_entry(name, (configured or {}).get(name), stored.get(name), now, registered)
            for name in sorted(set(stored) | set(configured or {}))]


def _overview_entry(name, schedule, row, now, registered):
    problem = None
    if schedule is None:
        schedule, problem = from_definition(name, row[1])
    last, seen = (row[2], row[3]) if row else (None, None)
    next_run = None
    if schedule is not None:
        try:
            next_run = schedule.next_after(seen or now)
        except Exception as error:  # noqa: BLE001 - any stored tick or definition: the listing goes on
            problem = f"{type(error).__name__}: {error}"
    job = schedule.job if schedule else row[1].get("job") if isinstance(row[1], dict) else None
    if problem:
        problem = _cut(f"cannot be computed, workers skip it: {problem}", 200)
    elif registered is not None and job not in registered:
        problem = f"job {_cut(repr(job))} is not registered here; a worker without it skips this schedule"
    paused_at, last_job_id, status, cancel_requested_at = row[4:8] if row else (None, None, None, None)
    return {
        "name": name, "job": job if isinstance(job, str) else None,
        "when": schedule.when if schedule else "?", "catch_up": schedule.catch_up if schedule else None,
        "source": schedule.source if schedule else "database", "in_database": row is not None,
        "last_run": last, "next_run": next_run, "problem": problem, "paused_at": paused_at,
        "last_job_id": last_job_id, "last_outcome": _outcome(last_job_id, status, cancel_requested_at),
    }


def _outcome(job_id, status, cancel_requested_at):
    """The status of the last job (operations' names), "gone" once cleanup deleted it, None without one."""
    from exekutor.operations import status_name

    if job_id is None:
        return None
    if status is None:
        return "gone"
    return status_name({"status": status, "cancel_requested_at": cancel_requested_at})


# ---------------------------------------------------------------------------------------------------------------
# Acting on a schedule (the dashboard's Schedules page; migration 0014)

_PAUSE = "UPDATE exekutor_schedules SET paused_at = now() WHERE name = %s AND paused_at IS NULL RETURNING name"
_RESUME = "UPDATE exekutor_schedules SET paused_at = NULL WHERE name = %s AND paused_at IS NOT NULL RETURNING name"
# One job now, as a tick would enqueue it (the queue, priority and options the workers wrote in `enqueue`), with
# nothing else touched: last_tick stays, so the next tick comes when it would have. Its payload's schedule names it
# and says run_now; last_job_id points at it.
_RUN_NOW = """
WITH s AS (
    SELECT name, definition FROM exekutor_schedules
    WHERE name = %(name)s AND jsonb_typeof(definition->'enqueue') = 'object'
      AND jsonb_typeof(definition->'enqueue'->'queue') = 'string'
), job AS (
    INSERT INTO exekutor_jobs (queue, priority, payload, options)
    SELECT definition->'enqueue'->>'queue', (definition->'enqueue'->>'priority')::smallint,
           jsonb_build_object('job', definition->>'job', 'args', coalesce(definition->'args', '[]'),
                              'kwargs', coalesce(definition->'kwargs', '{}') || %(tick_kwargs)s::jsonb,
                              'schedule', jsonb_build_object('name', name, 'tick', %(tick)s::text, 'run_now', true)),
           CASE WHEN jsonb_typeof(definition->'enqueue'->'options') = 'object' THEN definition->'enqueue'->'options' END
    FROM s
    RETURNING id
)
UPDATE exekutor_schedules SET last_job_id = (SELECT id FROM job)
WHERE name = %(name)s AND EXISTS (SELECT FROM job)
RETURNING last_job_id::text
"""


def pause_schedule(conn, name):
    """Pause a schedule in the table: its ticks pass without a job until it is resumed; whether it changed."""
    return _changed(conn, _PAUSE, name)


def resume_schedule(conn, name):
    """Resume a paused schedule: from its next tick on it enqueues again; whether it changed."""
    return _changed(conn, _RESUME, name)


def _changed(conn, sql, name):
    with conn.cursor() as cursor:
        cursor.execute(sql, (name,))
        return cursor.fetchone() is not None


def run_now(conn, name):
    """Enqueue one job of the schedule now, as its ticks do, without moving its next tick; the job's id, or None
    when no worker of this version has written the schedule (its row, with how its jobs are enqueued)."""
    from psycopg2.extras import Json

    from exekutor.serialization import dump_arguments

    with conn.cursor() as cursor:
        cursor.execute("SELECT now(), definition->'pass_tick' = 'true' FROM exekutor_schedules WHERE name = %s",
                       (name,))
        row = cursor.fetchone()
        if row is None:
            return None
        now, pass_tick = row
        tick_kwargs = dump_arguments((), {"tick": now})["kwargs"] if pass_tick else {}
        cursor.execute(_RUN_NOW, {"name": name, "tick": now.isoformat(), "tick_kwargs": Json(tick_kwargs)})
        done = cursor.fetchone()
    return done[0] if done else None
