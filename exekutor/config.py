"""exekutor's configuration: one table of options, layered sources, one-line errors.

The module itself is the object users touch: ``exekutor.config.polling_interval = 5`` validates and sets the
"code" layer, and reading ``exekutor.config.polling_interval`` gives the effective value. Sources, lowest to
highest precedence: defaults < code (``configure()`` / attribute assignment) < config files (later wins) <
``EXEKUTOR_*`` environment variables < overrides (the command line). Every value remembers where it came from,
so an error can name the key and its source on one line.

``exekutor.config.database_url`` is the function ``database_url()`` (the effective URL with its fallbacks);
assigning to it still sets the option.
"""
from __future__ import annotations

import configparser
import contextlib
import copy
import difflib
import json
import logging
import math
import os
import re
import sys
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from exekutor.display import database_label, redact, remember
from exekutor.durations import MAX_DURATION, MAX_DURATION_TEXT, UNIT_NAMES, UNIT_SECONDS, parse_duration, to_float
from exekutor.errors import ConfigError
from exekutor.schedules import Schedule, ScheduleError, check_schedule, from_mapping

# ---------------------------------------------------------------------------------------------------------------
# Value parsers: each takes (value, unit) and returns the normalised value, or raises TypeError/ValueError when the
# value has the wrong shape. Range checks live in Check so that the error can say what is allowed.

_BOOLS = {"true": True, "yes": True, "on": True, "1": True, "false": False, "no": False, "off": False, "0": False}
# wait_for_termination: "0" must stay a duration (kill now), so only the words are booleans there.
_WAIT_WORDS = {**{word: flag for word, flag in _BOOLS.items() if not word.isdigit()}, "none": None, "null": None}
_NULL_WORDS = {"", "none", "null"}
# A module, optionally with the name of a factory to call in it ("myapp:create_app").
_MODULE_NAME = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*(:[A-Za-z_]\w*)?")


def _parse_int(value, unit=None):
    if isinstance(value, str):
        return int(value)
    if isinstance(value, int) and not isinstance(value, bool):  # True is an int to Python, never to us
        return value
    raise TypeError("not an integer")


def _parse_float(value, unit=None):
    if isinstance(value, str) or (isinstance(value, (int, float)) and not isinstance(value, bool)):
        return to_float(value)
    raise TypeError("not a number")


def _parse_bool(value, unit=None):
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _BOOLS:
        return _BOOLS[value.strip().lower()]
    raise ValueError("not a boolean")


def _parse_wait(value, unit):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in _WAIT_WORDS:
        return _WAIT_WORDS[value.strip().lower()]
    return parse_duration(value, unit)


def _parse_str(value, unit=None):
    if isinstance(value, str):
        return value.strip()
    raise TypeError("not a string")


def _parse_list(value, unit=None):
    items = [value] if isinstance(value, str) else value
    if isinstance(items, (list, tuple)) and all(isinstance(item, str) for item in items):
        return list(items)
    raise TypeError("not a list of strings")


def _parse_queues(value, unit=None):
    """A list of queue names, or a mapping of queue names to their limits (JSON in env/INI):
    {name: {concurrency: N, rate_limit: '100/m'} or none}. Limits are checked here, so a bad one stops `start`."""
    from exekutor.definitions import check_queue
    from exekutor.flow import check_queue_settings

    if isinstance(value, str) and value.strip().startswith("{"):
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueProblem("expected a JSON object of queues and their limits, or comma-separated names") \
                from None
    if isinstance(value, dict):
        try:
            # Names checked as enqueue checks them (NUL, lone surrogates): the worker writes them at its start.
            return {check_queue(str(name)): check_queue_settings(str(name), settings)
                    for name, settings in value.items()}
        except ValueError as error:
            raise ValueProblem(str(error)) from None
    return _parse_list(value)


def queue_limits(queues):
    """{name: {'concurrency', 'rate_limit'}} of the queues option given as a mapping (a list has none)."""
    return dict(queues) if isinstance(queues, dict) else {}


def _parse_serializer(value, unit=None):
    # Only the shape is checked here: resolving 'orjson' or an import path is serialization's job.
    if isinstance(value, str) or all(callable(getattr(value, name, None)) for name in ("dumps", "loads")):
        return value
    raise TypeError("not a serializer")


def _parse_logger(value, unit=None):
    if isinstance(value, (str, logging.Logger, logging.LoggerAdapter)):
        return value
    raise TypeError("not a logger")


def _parse_level(value, unit=None):
    if isinstance(value, str):
        return value.strip().lower()  # "DEBUG" and "debug" alike, as logging's own names are capitals
    raise TypeError("not a log level")


class ValueProblem(ValueError):
    """A value with a problem more specific than "expected ...": its message replaces that part of the error."""


def _parse_schedules(value, unit=None):
    # Checked here in full (cron, time zone, every, keys), so a bad schedule stops `start` like any bad value.
    if isinstance(value, str):  # an environment variable or an INI value: a JSON object
        try:
            value = json.loads(value)
        except ValueError:
            raise ValueProblem("expected a JSON object of schedules in an environment variable or INI file") from None
    if not isinstance(value, dict):
        raise TypeError("not a mapping")
    try:
        return {str(name): check_schedule(entry) if isinstance(entry, Schedule) else from_mapping(str(name), entry)
                for name, entry in value.items()}
    except ScheduleError as error:
        raise ValueProblem(str(error)) from None


def _parse_url(value, unit=None):
    # SQLAlchemy's form (`postgresql+psycopg2://`, what docs/flask.md asks apps to write) names the same database:
    # libpq does not know the driver part, and exekutor connects with psycopg2 anyway.
    return re.sub(r"^(postgres(?:ql)?)\+\w+://", r"\1://", _parse_str(value))


def _looks_like_dsn(value):
    return bool(re.match(r"postgres(ql)?://", value) or re.match(r"\s*\w+\s*=", value))


# ---------------------------------------------------------------------------------------------------------------
# The declarative option table.


class Kind(NamedTuple):
    name: str  # the type shown in the documentation
    parse: Callable[[Any, str | None], Any]
    text: str  # completes "expected ..."; {check} and {unit} are filled in per option


class Check(NamedTuple):
    test: Callable[[Any], bool]
    text: str


STR = Kind("string", _parse_str, "{check}")
URL = Kind("string", _parse_url, "{check}")
INT = Kind("integer", _parse_int, "an integer {check}")
FLOAT = Kind("number", _parse_float, "a number {check}")
BOOL = Kind("boolean", _parse_bool, "true or false (also yes/no, on/off, 1/0)")
DURATION = Kind("duration", parse_duration,
                "a duration {check} and at most {longest} ({unit}, or a number with unit like '90s', '15m', '4h')")
WAIT = Kind("boolean or duration", _parse_wait,
            "true (wait forever), false or none (don't wait), or a duration {check} and at most {longest} "
            "({unit}; 0 kills at once)")
LIST = Kind("list", _parse_list, "a list of {check}")
QUEUES = Kind("list or mapping", _parse_queues,
              "a list of {check}, or a mapping of queue names to their concurrency and rate_limit")
SERIALIZER = Kind("serializer", _parse_serializer,
                  "'json', 'orjson', an import path like 'pkg.mod:obj', or an object with dumps() and loads()")
LOGGER = Kind("logger", _parse_logger, "a logger name or a logging.Logger")
LEVEL = Kind("log level", _parse_level, "one of {check}")
SCHEDULES = Kind("mapping", _parse_schedules,
                 "a mapping of schedule names to their job, cron or every, timezone, args, kwargs, catch_up, "
                 "pass_tick")


def _between(low, high):
    return Check(lambda value: low <= value <= high, f"from {low} to {high}")


ANY = Check(lambda value: True, "")
POSITIVE = Check(lambda value: value > 0, "> 0")
NON_NEGATIVE = Check(lambda value: value >= 0, ">= 0")
PRIORITY = _between(1, 32767)
NON_EMPTY = Check(bool, "a non-empty string")
DSN = Check(_looks_like_dsn, "a postgresql:// URL (postgresql+psycopg2:// too) or a libpq keyword string like "
                             "'host=db dbname=app'")
WAIT_TIME = Check(lambda value: value is None or isinstance(value, bool) or value >= 0, ">= 0")
QUEUE_NAMES = Check(lambda names: bool(names) and all(0 < len(name) <= 63 for name in names),
                    "queue names (1 to 63 characters each)")
MODULE_NAMES = Check(lambda names: all(_MODULE_NAME.fullmatch(name) for name in names),
                     "module names like 'app.jobs' or 'app:create_app'")
HOST_NAMES = Check(lambda names: all(re.fullmatch(r"[^\s/@]+", name) for name in names),
                   "host names or addresses like 'jobs.example.com' or '10.0.0.5'")
LOG_LEVELS = Check(lambda level: level in ("debug", "info", "warning", "error"), "debug, info, warning, error")


@dataclass(frozen=True)
class Option:
    name: str
    kind: Kind
    default: Any
    unit: str | None = None
    check: Check = ANY
    doc: str = ""

    @property
    def nullable(self):
        # None is allowed exactly for the options whose default is None (it means "unset" or "off").
        return self.default is None

    @property
    def env_var(self):
        return "EXEKUTOR_" + self.name.upper()

    @property
    def expected(self):
        text = self.kind.text.format(check=self.check.text, unit=UNIT_NAMES.get(self.unit),
                                     longest=MAX_DURATION_TEXT)
        return text + (", or none" if self.nullable else "")

    def convert(self, value, text=False):
        """The validated value; `text` marks env/INI strings, where a list is comma-separated."""
        if self.nullable and (value is None or isinstance(value, str) and value.strip().lower() in _NULL_WORDS):
            return None
        if text and (self.kind is LIST or self.kind is QUEUES and not value.strip().startswith("{")):
            value = [item.strip() for item in value.split(",")]
        result = self.kind.parse(value, self.unit)
        if not self.check.test(result) or self._too_long(result):
            raise ValueError("out of range")
        return result

    def _too_long(self, value):
        # Every duration has the same maximum, in its own unit (healthcheck_timeout is in minutes).
        is_duration = self.unit is not None and isinstance(value, float)  # not WAIT's true/false/none
        return is_duration and value * UNIT_SECONDS[self.unit] > MAX_DURATION


OPTIONS = {option.name: option for option in [
    Option("database_url", URL, None, None, DSN,
           "PostgreSQL URL (`postgresql://user:password@host/db`; SQLAlchemy's `postgresql+psycopg2://` works "
           "too) or libpq keyword string. When unset: "
           "`EXEKUTOR_DATABASE_URL`, then `DATABASE_URL`, then an embedded server (`embedded` extra). "
           "The password is never shown."),
    Option("default_queue_priority", INT, 16383, None, PRIORITY,
           "Priority of jobs enqueued without one; 1 is the highest, 32767 the lowest."),
    Option("enqueue_pool_size", INT, 10, None, _between(1, 1000),
           "Most database connections one process opens to enqueue (and act on jobs) without a caller's "
           "`connection=`; more concurrent enqueues wait for a free one. Count it per web process when sizing "
           "`max_connections`. Read when the process first needs the pool."),
    Option("json_serializer", SERIALIZER, "json", None, ANY,
           "How job arguments are encoded: `json` (standard JSON, written with orjson's faster encoder when "
           "it is installed), `orjson`, an import path, or an object with `dumps`/`loads`."),
    Option("logger", LOGGER, "exekutor", None, ANY, "The logger (or logger name) exekutor writes to."),
    Option("set_db_connection_name", BOOL, False, None, ANY,
           "Set `application_name` on the worker's connections so they can be told apart in `pg_stat_activity`."),
    Option("enable_listener", BOOL, True, None, ANY,
           "`LISTEN` for new jobs so they start within milliseconds. Turn off behind a transaction-pooling "
           "PgBouncer, and lower `polling_interval`."),
    Option("polling_interval", DURATION, 60, "s", POSITIVE,
           "How often the worker polls for jobs the listener may have missed."),
    Option("polling_jitter", FLOAT, 0.1, None, _between(0, 1),
           "Fraction by which each poll interval varies (0.1 = ±5%), so workers started together poll apart."),
    Option("min_execution_threads", INT, 1, None, _between(1, 10000), "Greenlets kept in the pool even when idle."),
    Option("max_execution_threads", INT, 100, None, _between(1, 10000),
           "Most jobs one worker runs at the same time (greenlets); at least `min_execution_threads`."),
    Option("max_execution_thread_idletime", DURATION, 60, "s", POSITIVE,
           "Idle greenlets above the minimum are reclaimed after this long."),
    Option("healthcheck_port", INT, None, None, _between(1, 65535),
           "Port of the health check HTTP server (`/ready`, `/live`, `/threads`, `/metrics`); none = no server."),
    Option("healthcheck_host", STR, "127.0.0.1", None, NON_EMPTY,
           "Address the health check server binds to; use `0.0.0.0` in containers."),
    Option("healthcheck_timeout", DURATION, 30, "m", POSITIVE,
           "The health check reports the worker down when its heartbeat is older than this (minutes)."),
    Option("max_blocking_time", DURATION, 5, "s", NON_NEGATIVE,
           "A job (or other code) that blocks the gevent event loop longer than this is logged with its name and "
           "stack and counted in `/metrics`, and `/live` and `/ready` answer 503 while the block lasts; 0 = do not "
           "report blocks."),
    Option("blocking_timeout", DURATION, 120, "s", POSITIVE,
           "A job that blocks the gevent event loop (runs without yielding: CPU work, the original `time.sleep`, a "
           "C call) longer than this is interrupted and ends failed (`JobBlockedError`); its `execution_timeout` "
           "applies when that comes first. A block never makes the worker look dead: the heartbeat has a thread of "
           "its own."),
    Option("max_job_rescues", INT, 3, None, _between(1, 1000),
           "A job whose worker was presumed dead while running it (killed, stopped, cut off, its loop wedged) this "
           "many times ends failed instead of running again."),
    Option("metrics", BOOL, None, None, ANY,
           "Prometheus metrics (at the health check server's `/metrics`): true, false, or none = on when "
           "prometheus-client (the `metrics` extra) is installed."),
    Option("quiet", BOOL, False, None, ANY, "Print only errors to the console."),
    Option("log_level", LEVEL, "info", None, LOG_LEVELS,
           "Level of the log `exekutor-gevent start` prints (`--log-level`); `quiet` wins over it. In your own "
           "process, where you configure `logging`, it is not used."),
    Option("log_job_outcomes", BOOL, False, None, ANY,
           "Log one INFO line per finished job: its id, name, queue, outcome (completed, failed, discarded, "
           "retrying, released) and runtime, never its arguments. Off, a completed job is one DEBUG line."),
    Option("wait_for_termination", WAIT, 120, "s", WAIT_TIME,
           "On stop, how long to let running jobs finish before killing them: true = forever, "
           "false/none = do not wait, 0 = kill at once."),
    Option("queues", QUEUES, None, None, QUEUE_NAMES,
           "Queues the worker takes jobs from (comma-separated in env/INI); none = all queues. As a mapping, "
           "each queue's limits across all workers: `{imports: {concurrency: 4, rate_limit: '100/m'}}` (JSON in "
           "env/INI; see docs/flow-control.md)."),
    Option("min_priority", INT, None, None, PRIORITY, "The worker only takes jobs with at least this priority number."),
    Option("max_priority", INT, None, None, PRIORITY, "The worker only takes jobs with at most this priority number."),
    Option("delete_completed_jobs", BOOL, False, None, ANY, "Delete a job's row as soon as it completes."),
    Option("delete_failed_jobs", BOOL, False, None, ANY, "Delete a job's row as soon as it fails."),
    Option("delete_discarded_jobs", BOOL, False, None, ANY, "Delete a job's row as soon as it is discarded."),
    Option("worker_timeout", DURATION, 60, "s", POSITIVE,
           "A worker whose heartbeat is older than this is presumed dead: its row is deleted and its running "
           "jobs go back to pending (also how long a killed worker's jobs wait before they run again)."),
    Option("heartbeat_interval", DURATION, 30, "s", POSITIVE,
           "How often a worker updates its heartbeat; less than half of `worker_timeout`. Unset, it is a fifth of "
           "`worker_timeout`, at most 30 s."),
    Option("identifier", STR, None, None, NON_EMPTY,
           "Name of the worker, shown by `info`, in process titles and in the pidfile's `%{identifier}`."),
    Option("imports", LIST, [], None, MODULE_NAMES,
           "Application modules that define jobs, imported by the worker at start (`--app`; comma-separated "
           "in env/INI)."),
    Option("statement_timeout", DURATION, 30, "s", NON_NEGATIVE,
           "`statement_timeout` of the worker's own queries; 0 = none."),
    Option("connect_timeout", DURATION, 10, "s", POSITIVE,
           "Timeout for opening a database connection, per host of a multi-host URL."),
    Option("enable_scheduler", BOOL, True, None, ANY,
           "Run the scheduler that enqueues recurring jobs (`schedules`, `@exekutor.periodic`) in this worker. "
           "Every worker may run it: each tick is enqueued once, decided in the database."),
    Option("schedules", SCHEDULES, {}, None, ANY,
           "Recurring jobs, by name: `{job: \"myapp.jobs:rollup\", cron: \"0 3 * * *\", timezone: UTC, "
           "args: [7]}` (or `every: 30s`). A JSON object in env/INI. See docs/recurring-and-unique.md."),
    Option("dashboard_allow_actions", BOOL, False, None, ANY,
           "Let the dashboard retry and cancel jobs, one, a selection or every match (`exekutor-gevent dashboard "
           "--allow-actions`); off, it is read-only and action requests answer 403."),
    Option("dashboard_show_arguments", BOOL, False, None, ANY,
           "Show job arguments on the dashboard's job pages, and let its search look for argument text; off by "
           "default, as arguments may hold personal data or secrets."),
    Option("dashboard_allowed_hosts", LIST, [], None, HOST_NAMES,
           "Host names the dashboard answers (a defence against DNS rebinding); any other `Host` gets 400. The "
           "standalone server always adds its bound address and `localhost` (`--allowed-host`); a mounted "
           "blueprint checks only when this is set (comma-separated in env/INI)."),
]}

# Worker keyword -> option, where the names differ (Worker takes the original's short names).
_WORKER_RENAMES = {
    "min_threads": "min_execution_threads",
    "max_threads": "max_execution_threads",
    "max_thread_idletime": "max_execution_thread_idletime",
}
_WORKER_KEYWORDS = (
    "identifier", "queues", "min_priority", "max_priority", "enable_listener", "min_threads", "max_threads",
    "max_thread_idletime", "polling_interval", "polling_jitter", "set_db_connection_name", "wait_for_termination",
    "healthcheck_port", "healthcheck_host", "healthcheck_timeout", "worker_timeout", "heartbeat_interval",
    "delete_completed_jobs", "delete_failed_jobs", "delete_discarded_jobs", "quiet", "max_blocking_time", "metrics",
    "blocking_timeout", "max_job_rescues",
)


# ---------------------------------------------------------------------------------------------------------------
# Messages

MESSAGE_VALUE_LIMIT = 120  # characters of a value or parser message quoted in an error line
YAML_MAX_SIZE = 100_000  # nodes plus scalar characters of a YAML `exekutor:` section, with its aliases expanded


def redact_url(url):
    """A message (or URL, or libpq keyword string) without the passwords it may quote (see exekutor.display)."""
    return redact(url)


def _show(value):
    # Any string may be (or embed) a URL with a password, so every value shown in an error is redacted.
    if isinstance(value, int) and not isinstance(value, bool) and value.bit_length() > 1000:
        return f"an integer of about {int(value.bit_length() * math.log10(2))} digits"  # repr() refuses 4300+
    return repr(redact_url(value)) if isinstance(value, str) else repr(value)


def _number(value):
    return f"{value:g}" if isinstance(value, float) else str(value)


def _option(key, source=None):
    if key in OPTIONS:
        return OPTIONS[key]
    where = f" in {source}" if source else ""
    close = difflib.get_close_matches(str(key)[:MESSAGE_VALUE_LIMIT], OPTIONS, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    raise ConfigError(f"unknown option {_cut(_show(key))}{where}{hint}")


def _convert(key, value, source, text=False):
    """The validated value of option `key`, or a one-line ConfigError naming the key and its source."""
    option = _option(key, source)
    if key == "database_url":
        remember(value)  # before anything could quote it
    try:
        return option.convert(value, text)
    except ValueProblem as problem:
        raise ConfigError(f"invalid value for {key} in {source}: {_cut(redact_url(str(problem)), 240)}") from None
    except (TypeError, ValueError):
        # "from None": the parser's own message could quote the raw value, password and all.
        raise ConfigError(f"invalid value for {key} in {source}: expected {option.expected}, "
                          f"got {_cut(_show(value))}") from None


def _cut(text, limit=MESSAGE_VALUE_LIMIT):
    """`text` shortened to `limit` characters, so that no value or parser message makes an error line long."""
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _parse_error(text):
    # Parser messages may quote the offending line, which may hold a database password.
    return redact_url(" ".join(str(text).split()))


# ---------------------------------------------------------------------------------------------------------------
# Config files: each reader yields (key, value, source, is_text) for the base section, then ENV_SECTION (when the
# file has the environment's section) and that section's.

ENV_SECTION = object()  # the key of the marker a reader yields before the --env section's options


def _read_file(path, env):
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    extension = os.path.splitext(path)[1].lower()
    if extension in (".yml", ".yaml"):
        return _read_yaml(path, env)
    if extension in (".ini", ".cfg"):
        return _read_ini(path, env)
    raise ConfigError(f"unsupported config file {path}: expected a .yml, .yaml, .ini or .cfg file")


def _is(node, kind):
    """Whether a YAML node is a "scalar", "sequence" or "mapping" (PyYAML's node ids: the helpers below need no
    `import yaml`, which only reading a YAML file pays for)."""
    return getattr(node, "id", None) == kind


def _yaml_child(node, key):
    """The value node of `key` in a mapping node (the last one, as YAML loaders do), else None."""
    found = None
    if _is(node, "mapping"):
        for key_node, value_node in node.value:
            if _is(key_node, "scalar") and key_node.value == key:
                found = key_node, value_node
    return found


def _yaml_error(path, exc, node=None):
    """A one-line ConfigError for a YAML error (or any error building a value), with the file and line."""
    import yaml  # imported already: only reading a YAML file fails this way

    mark = getattr(exc, "problem_mark", None) or (node.start_mark if node is not None else None)
    where = f" line {mark.line + 1}" if mark else ""
    if isinstance(exc, yaml.YAMLError):
        problem = getattr(exc, "problem", None) or exc
    elif isinstance(exc, RecursionError):
        problem = "nested too deeply"
    else:
        problem = f"{type(exc).__name__}: {exc}"
    return ConfigError(f"invalid YAML in {path}{where}: {_cut(_parse_error(problem))}")


def _yaml_children(node):
    if _is(node, "mapping"):
        return [item for pair in node.value for item in pair]
    return node.value if _is(node, "sequence") else []


def _check_yaml_size(path, node):
    """Refuse a section whose aliases expand it past YAML_MAX_SIZE nodes and scalar characters (a "billion
    laughs"), or that contains itself, before anything is built from it: memory stays bounded."""
    sizes, entered, stack = {}, set(), [(node, False)]
    while stack:
        current, done = stack.pop()
        key = id(current)
        if done:
            size = 1 + sum(sizes[id(child)] for child in _yaml_children(current))
            size += len(current.value) if _is(current, "scalar") else 0
            if size > YAML_MAX_SIZE:
                raise ConfigError(f"invalid YAML in {path} line {current.start_mark.line + 1}: its aliases expand "
                                  f"to more than {YAML_MAX_SIZE} nodes and characters")
            sizes[key] = size
            entered.discard(key)
        elif key in entered:
            raise ConfigError(f"invalid YAML in {path} line {current.start_mark.line + 1}: an alias refers to a node "
                              f"that contains it")
        elif key not in sizes:
            entered.add(key)
            stack.append((current, True))
            stack.extend((child, False) for child in _yaml_children(current))


def _yaml_options(path, found, loader):
    key_node, node = found
    if _is(node, "scalar") and node.tag == "tag:yaml.org,2002:null":
        return  # "exekutor:" with nothing under it
    if not _is(node, "mapping"):
        raise ConfigError(f"'exekutor' in {path} line {key_node.start_mark.line + 1} must be a mapping of options")
    _check_yaml_size(path, node)
    try:
        loader.flatten_mapping(node)  # applies "<<: *anchor" merge keys
    except Exception as exc:  # noqa: BLE001 - any error of the YAML library is one line about the file
        raise _yaml_error(path, exc, node) from None
    for key, value in node.value:
        where = f"{path} line {key.start_mark.line + 1}"
        if not _is(key, "scalar"):
            raise ConfigError(f"invalid option name in {where}: expected a string")
        try:
            # SafeLoader: a tag like !!python/object/apply is an error here, nothing is ever called.
            constructed = loader.construct_document(value)
        except Exception as exc:  # noqa: BLE001 - e.g. a tag with a bad value (!!float abc) raises ValueError
            raise _yaml_error(path, exc, value) from None
        yield key.value, constructed, where, False


def _read_yaml(path, env):
    import yaml  # PyYAML takes longer to import than a command takes to answer: only when a YAML file is read

    # compose() keeps the nodes and their marks, so every value knows its line. Aliases stay shared references
    # there: a document only gets big when they are expanded, which _check_yaml_size limits.
    try:
        with open(path, encoding="utf-8") as file:
            root = yaml.compose(file, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, UnicodeDecodeError, RecursionError) as exc:
        raise _yaml_error(path, exc) from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    base = _yaml_child(root, "exekutor")
    if base is None:
        raise ConfigError(f"{path} has no 'exekutor:' root key")
    loader = yaml.SafeLoader("")
    yield from _yaml_options(path, base, loader)
    env_section = _yaml_child(root, env) if env else None
    specific = _yaml_child(env_section[1], "exekutor") if env_section else None
    if specific:
        yield ENV_SECTION, None, path, False
        yield from _yaml_options(path, specific, loader)


def _ini_key_lines(text):
    """{(section, key): line}: configparser forgets line numbers, so scan for them (good enough for messages)."""
    lines, section = {}, None
    for number, line in enumerate(text.splitlines(), 1):
        header = re.match(r"\s*\[([^\]]+)\]", line)
        key = re.match(r"([^\s=:;#\[][^=:]*?)\s*[=:]", line)  # indented lines are continuations, not keys
        if header:
            section = header.group(1).strip()
        elif key:
            lines[section, key.group(1).strip().lower()] = number
    return lines


def _read_ini(path, env):
    parser = configparser.ConfigParser(interpolation=None)  # passwords may contain '%'
    try:
        with open(path, encoding="utf-8") as file:
            text = file.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(f"invalid INI file {path}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    try:
        parser.read_string(text, source=path)
    except configparser.Error as exc:
        raise ConfigError(f"invalid INI file {path}: {_cut(_parse_error(exc))}") from None
    if not parser.has_section("exekutor"):
        raise ConfigError(f"{path} has no [exekutor] section")
    lines = _ini_key_lines(text)
    for section in ["exekutor"] + ([f"exekutor:{env}"] if env and parser.has_section(f"exekutor:{env}") else []):
        if section != "exekutor":
            yield ENV_SECTION, None, path, False
        for key, value in parser.items(section):
            line = lines.get((section, key))
            yield key, value, f"{path} line {line}" if line else path, True


# ---------------------------------------------------------------------------------------------------------------
# The layered configuration


class Configuration:
    """Layers of (value, source) per option; the effective value is the highest layer's."""

    def __init__(self):
        self.reset()

    def reset(self):
        """Back to the defaults only."""
        self._layers = {"code": {}, "files": {}, "environment": {}, "overrides": {}}  # lowest precedence first
        self._version = 0  # bumped by every change, so get()'s cache notices
        self._cache = {}
        self._environ = os.environ

    def _entry(self, name):
        option = _option(name)
        for layer in reversed(self._layers.values()):
            if name in layer:
                return layer[name]
        if name in _DEPENDENT_DEFAULTS:
            return _DEPENDENT_DEFAULTS[name](self), "default"
        return copy.copy(option.default), "default"  # a copy, so nobody appends to the shared default list

    def get(self, name):
        """The effective value of an option (cached: enqueueing reads default_queue_priority per job)."""
        cache = self._cache
        if cache.get("_layers") is not self._layers or cache.get("_version") != self._version:
            cache = self._cache = {"_layers": self._layers, "_version": self._version}
        try:
            value = cache[name]
        except KeyError:
            value = cache[name] = self._entry(name)[0]
        return list(value) if type(value) is list else value  # callers may change a list they got

    def source_of(self, name):
        """Where the effective value came from: 'default', 'code', 'exekutor.yml line 4', ..."""
        return self._entry(name)[1]

    def _put(self, layer, key, value, source, text=False):
        self._layers[layer][key] = _convert(key, value, source, text), source
        self._version += 1

    @contextlib.contextmanager
    def _atomically(self):
        """Roll every layer back when a change fails, so a bad value never leaves half a configuration behind."""
        saved = {layer: dict(values) for layer, values in self._layers.items()}
        try:
            yield
            self.validate()
        except BaseException:
            self._layers = saved
            raise

    def configure(self, **options):
        """Validate and set code-layer values (source 'code'); nothing changes if any value is bad."""
        with self._atomically():
            for key, value in options.items():
                self._put("code", key, value, "code")

    def load(self, files=(), env=None, environ=None, overrides=None, override_source="command line"):
        """Rebuild the file, environment and override layers; nothing changes if any value is bad.

        Overrides whose value is None are skipped: that is a command-line flag that was not given; so is an empty
        database_url. An empty environment variable (what `EXEKUTOR_DATABASE_URL=${DB_URL}` gives when DB_URL is
        unset) is not set either: neither hides a value of a lower layer.
        """
        environ = os.environ if environ is None else environ
        with self._atomically():
            self._layers.update(files={}, environment={}, overrides={})
            self._version += 1
            env_found = False
            for path in files:
                for key, value, source, text in _read_file(os.fspath(path), env):
                    if key is ENV_SECTION:
                        env_found = True
                    else:
                        self._put("files", key, value, source, text)
            if env and not env_found:
                _no_env_section(env, files)
            _warn_unknown_variables(environ)
            for option in OPTIONS.values():
                if _is_set(environ, option.env_var):
                    source = f"environment variable {option.env_var}"
                    self._put("environment", option.name, environ[option.env_var], source, text=True)
            for key, value in (overrides or {}).items():
                if value is not None and not (key == "database_url" and _blank(value)):
                    self._put("overrides", key, value, override_source)
        self._environ = environ

    def validate(self):
        """Check the rules between options (each value alone was checked when it was set)."""
        self._check_order("min_execution_threads", "max_execution_threads")
        self._check_order("min_priority", "max_priority")
        (heartbeat, heartbeat_source), (timeout, timeout_source) = map(
            self._entry, ("heartbeat_interval", "worker_timeout"))
        if heartbeat >= timeout / 2:
            raise ConfigError(
                f"heartbeat_interval ({_number(heartbeat)}, {heartbeat_source}) must be less than half of "
                f"worker_timeout ({_number(timeout)}, {timeout_source})")

    def _check_order(self, low_name, high_name):
        (low, low_source), (high, high_source) = self._entry(low_name), self._entry(high_name)
        if low is not None and high is not None and low > high:
            raise ConfigError(f"{low_name} ({_number(low)}, {low_source}) is greater than "
                              f"{high_name} ({_number(high)}, {high_source})")

    def worker_options(self):
        """Keyword arguments for exekutor.Worker from the effective configuration."""
        return {keyword: self.get(_WORKER_RENAMES.get(keyword, keyword)) for keyword in _WORKER_KEYWORDS}

    def database_url(self):
        """database_url, else EXEKUTOR_DATABASE_URL, else DATABASE_URL, else None (then: embedded server)."""
        url = self.get("database_url")
        # EXEKUTOR_DATABASE_URL is read again here for programs that never called load().
        for variable in ("EXEKUTOR_DATABASE_URL", "DATABASE_URL"):
            if url is None and _is_set(self._environ, variable):
                url = _convert("database_url", self._environ[variable], f"environment variable {variable}", True)
        return url


def _no_env_section(env, files):
    """--env that no file has a section for was silently ignored: its settings were never applied."""
    where = ", ".join(map(os.fspath, files)) if files else "none was read"
    name = _cut(str(env))
    raise ConfigError(f"--env {_cut(_show(env))} names no section of the config files ({where}): expected "
                      f"'{name}: exekutor:' in YAML or '[exekutor:{name}]' in INI")


def _blank(value):
    return value is None or (isinstance(value, str) and not value.strip())


def _is_set(environ, variable):
    """Whether an environment variable is set to something: an empty one counts as not set."""
    return not _blank(environ.get(variable))


ENV_PREFIX = "EXEKUTOR_"
# EXEKUTOR_* variables that are read, but are not options: they must not be reported as typos.
NOT_OPTION_VARIABLES = {"EXEKUTOR_EMBEDDED_DIR"}  # the embedded server's data directory (exekutor.db.embedded)
# Prefixes of variables this project's own test suite, benchmarks and reliability runs pass to their processes.
NOT_OPTION_PREFIXES = ("EXEKUTOR_TEST_", "EXEKUTOR_BENCH_", "EXEKUTOR_RELIABILITY_", "EXEKUTOR_SOAK_")


def unknown_variable_message(variable):
    """Why an EXEKUTOR_* variable is not read, with a "did you mean" as for a file's unknown key; None if it is."""
    name = variable[len(ENV_PREFIX):].lower()
    if variable in NOT_OPTION_VARIABLES or variable.startswith(NOT_OPTION_PREFIXES):
        return None
    if name in OPTIONS and variable == OPTIONS[name].env_var:
        return None
    if name in OPTIONS:  # variable names are case-sensitive: EXEKUTOR_Quiet is not EXEKUTOR_QUIET
        return f"environment variable {variable} is not read (did you mean {OPTIONS[name].env_var}?)"
    try:
        _option(name, f"environment variable {variable}")
    except ConfigError as error:
        return str(error)
    return None


def _warn_unknown_variables(environ):
    # A warning, not an error as in a file: the environment is shared with other programs and other versions.
    for variable in sorted(environ):
        if variable.startswith(ENV_PREFIX) and _is_set(environ, variable):
            message = unknown_variable_message(variable)
            if message:
                logging.getLogger("exekutor").warning("exekutor: %s; ignored", message)


def reference_table():
    """The Markdown table of all options for docs/configuration.md (a test keeps the two in sync)."""
    rows = ["| Option | Type | Default | Environment variable | Description |", "|---|---|---|---|---|"]
    for option in OPTIONS.values():
        kind = option.kind.name + (f" ({UNIT_NAMES[option.unit]})" if option.unit else "")
        kind += " or none" if option.nullable else ""
        default = f"`{json.dumps(option.default)}`"
        rows.append(f"| `{option.name}` | {kind} | {default} | `{option.env_var}` | {option.doc} "
                    f"Accepts {option.expected}. |")
    return "\n".join(rows) + "\n"


# Defaults that follow another option when they are not set: only explicit values can conflict.
_DEPENDENT_DEFAULTS = {
    "heartbeat_interval": lambda settings: min(30.0, settings._entry("worker_timeout")[0] / 5),
}


def check_worker_options(options):
    """Validate `exekutor.Worker` keyword arguments in place with the option table (source "Worker options")."""
    for keyword, value in options.items():
        name = _WORKER_RENAMES.get(keyword, keyword)
        options[keyword] = _convert(name, value, "Worker options")
    for low, high in (("min_threads", "max_threads"), ("min_priority", "max_priority")):
        if options.get(low) is not None and options.get(high) is not None and options[low] > options[high]:
            raise ConfigError(f"Worker option {low} ({_number(options[low])}) is greater than "
                              f"{high} ({_number(options[high])})")
    if options["heartbeat_interval"] >= options["worker_timeout"] / 2:
        raise ConfigError(f"Worker option heartbeat_interval ({_number(options['heartbeat_interval'])}) must be "
                          f"less than half of worker_timeout ({_number(options['worker_timeout'])})")
    return options


settings = Configuration()
configure = settings.configure
load = settings.load
get = settings.get
source_of = settings.source_of
validate = settings.validate
worker_options = settings.worker_options
reset = settings.reset
database_url = settings.database_url


def configured_database():
    """The label of the database the configuration names (see exekutor.display.database_label), or the embedded
    server: how messages name it (host, port, database; never the password)."""
    url = database_url()
    return database_label(url) if url else "the embedded PostgreSQL"


class _ConfigModule(types.ModuleType):
    """Turns attribute access on this module into get/configure for option names."""

    def __getattr__(self, name):  # only reached for names that are not module globals
        if name in OPTIONS:
            return settings.get(name)
        raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")

    def __dir__(self):
        # The options are not module globals (__getattr__ makes them up): list them for dir() and tab completion.
        return sorted(set(super().__dir__()) | set(OPTIONS))

    def __setattr__(self, name, value):
        if name in OPTIONS:
            settings.configure(**{name: value})
        elif name.startswith("_") or name in self.__dict__:
            super().__setattr__(name, value)
        else:
            _option(name, "code")  # a typo like config.poling_interval = 5 must not pass silently


sys.modules[__name__].__class__ = _ConfigModule
