"""Sentry for exekutor: `exekutor.load_plugin("sentry")` (the `sentry` extra: sentry-sdk).

Initialize sentry-sdk as usual (`sentry_sdk.init(dsn=..., traces_sample_rate=...)`) in a module the worker imports,
then load the plugin. It registers hooks that

- report every job failure (`on_job_failure`: real failures, not discards or timeouts) with the job's context:
  job class, id, queue, priority, attempts, enqueue and schedule times; never its arguments;
- report errors outside job execution (`on_fatal_error`: a component that lost the database, a failing hook),
  tagged `exekutor.fatal`;
- run each job in a scope of its own, inside a transaction named after the job (op `queue.process`), whose
  status says how the job ended, for Sentry's performance monitoring when tracing is on.

exekutor logs those errors too; Sentry's logging integration is told to ignore the "exekutor" logger so that
they are not reported twice.

Secrets and arguments. Sentry attaches the local variables of every stack frame (`include_local_variables`, on by
default), and exekutor's frames hold job payloads, arguments and database URLs. So the plugin's event processor,
which runs after every integration's on every event and transaction (the plugin's own and any other),

- removes the local variables of exekutor's own frames, and of each frame exekutor called directly (the job
  function, a hook, a serializer, psycopg2's `connect`): their parameters are what exekutor passed them;
- masks database passwords by value wherever they appear: a URL's `user:password@`, libpq's `password=...`, a
  `'password': ...` item, and the literal password of the configured database URL (`database_url`,
  `EXEKUTOR_DATABASE_URL`, `DATABASE_URL`, `--database-url` in `sys.argv`), of `PGPASSWORD` and of any URL found
  in the event;
- and, in events about a job (its failure report, and anything captured while it runs), a processor on the job's
  scope masks the job's argument strings (any string of four characters or more inside its args and kwargs) in
  local variables, breadcrumbs and extra data, so that frames deeper in the job's own code do not show them either.

Frame names, files and line numbers are left alone. This does not depend on `include_local_variables` or on a
`before_send` of your own (which runs afterwards and sees the masked event).
"""
import os
import re
import sys

import gevent
import sentry_sdk
from sentry_sdk.integrations.logging import ignore_logger
from sentry_sdk.utils import safe_repr

from exekutor import hooks
from exekutor.display import passwords_in, redact
from exekutor.errors import DiscardJob, JobTimeoutError
from exekutor.log import job_name
from exekutor.serialization import TAG

# sentry-sdk 2 has new_scope/isolation_scope; 1.x had push_scope for both.
_new_scope = getattr(sentry_sdk, "new_scope", None) or sentry_sdk.push_scope
_isolation_scope = getattr(sentry_sdk, "isolation_scope", None) or sentry_sdk.push_scope


def job_context(info):
    """What Sentry is told about a job (never its arguments)."""
    return {
        "job": job_name(info),
        "id": info.get("id"),
        "queue": info.get("queue"),
        "priority": info.get("priority"),
        "attempts": info.get("attempts"),
        "enqueued_at": _iso(info.get("enqueued_at")),
        "scheduled_at": _iso(info.get("scheduled_at")),
    }


class SentryHooks(hooks.Hook):
    @hooks.around_job_execution
    def transaction(self, info):
        error = None
        with _isolation_scope() as scope:
            _describe_job(scope, info)
            with sentry_sdk.start_transaction(op="queue.process", name=job_name(info), source="task") as transaction:
                transaction.set_data("messaging.message.id", info.get("id"))
                transaction.set_data("messaging.destination.name", info.get("queue"))
                transaction.set_data("messaging.message.retry.count", max(0, (info.get("attempts") or 1) - 1))
                try:
                    yield
                except BaseException as raised:  # noqa: BLE001 - re-raised below, unchanged
                    error = raised
                transaction.set_status("ok" if error is None else _status(error))
            # Raised outside the transaction: an exception through it would set "internal_error" over ours.
            if error is not None:
                raise error

    @hooks.on_job_failure
    def job_failed(self, info, error):
        with _new_scope() as scope:
            _describe_job(scope, info)
            sentry_sdk.capture_exception(error)

    @hooks.on_fatal_error
    def fatal_error(self, error):
        with _new_scope() as scope:
            scope.set_tag("exekutor.fatal", "true")
            sentry_sdk.capture_exception(error)


_hooks = SentryHooks()
_scrubbing = False


def install():
    """Register the hooks; calling it again registers nothing twice. Returns the registered SentryHooks."""
    global _scrubbing
    ignore_logger("exekutor")
    if not _scrubbing:
        _add_last_event_processor(scrub_event)
        _scrubbing = True
    return hooks.register(_hooks)


def uninstall():
    hooks.unregister(_hooks)


def _describe_job(scope, info):
    scope.add_event_processor(_ArgumentMask(info))
    context = job_context(info)
    scope.set_context("exekutor_job", context)
    scope.set_tag("exekutor.job", context["job"])
    scope.set_tag("exekutor.queue", context["queue"])
    scope.set_tag("exekutor.job_id", context["id"])


def _add_last_event_processor(processor):
    """sentry-sdk 2: the global scope's processors run after every integration's; 1.x: a global processor."""
    if hasattr(sentry_sdk, "get_global_scope"):
        sentry_sdk.get_global_scope().add_event_processor(processor)
    else:
        from sentry_sdk.scope import add_global_event_processor

        add_global_event_processor(processor)


def _status(error):
    """The transaction status of a job that raised `error` (its execution_timeout arrives as gevent.Timeout)."""
    if isinstance(error, (gevent.Timeout, JobTimeoutError)):
        return "deadline_exceeded"
    if isinstance(error, DiscardJob):
        return "cancelled"
    return "internal_error"


def _iso(value):
    return value.isoformat() if hasattr(value, "isoformat") else value


# --- what events may not carry: database passwords, job arguments -------------------------------------------------

FILTERED = "[Filtered]"
_PACKAGE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
# Values shorter than this are not masked wherever they occur as text (a password "pw" would mask every "pw"): the
# patterns of exekutor.display still mask them in a URL or a password= keyword.
_MIN_LITERAL = 4
_PASSWORD_KEY = re.compile(r"passw(?:or)?d", re.IGNORECASE)
# What names a frame (never masked), and event fields that hold no user data.
_FRAME_IDENTITY = frozenset(("filename", "abs_path", "module", "function", "package", "lineno", "colno", "in_app",
                             "instruction_addr", "platform"))
_SKIPPED = frozenset(("sdk", "modules", "debug_meta", "event_id", "timestamp", "start_timestamp", "type", "platform",
                      "level", "_meta"))
# Source lines are masked by the patterns but not searched for passwords (`password = get_password()` is code).
_SOURCE_LINES = frozenset(("pre_context", "context_line", "post_context"))
# What a password-named variable may hold that is no password (psycopg2 shows a password as "xxx").
_NOT_PASSWORDS = frozenset(("None", "null", "***", "xxx", FILTERED, "''", '""'))


def scrub_event(event, hint=None):
    """The plugin's last event processor: see the module docstring. If scrubbing fails, every frame loses its
    local variables and the event its breadcrumbs and extra data rather than go out unscrubbed."""
    try:
        _drop_exekutor_vars(event)
        extra = event.get("extra")
        if isinstance(extra, dict) and isinstance(extra.get("sys.argv"), list):
            extra["sys.argv"] = [redact(arg) for arg in extra["sys.argv"]]
        passwords = _known_passwords()
        _collect_passwords(event, passwords)
        mask = _Mask(passwords, "***", patterns=True)
        for key in list(event):
            if key not in _SKIPPED:
                event[key] = mask.value(event[key])
    except Exception:  # noqa: BLE001 - an event processor must not fail open
        _strip(event)
    return event


class _ArgumentMask:
    """A job scope's event processor: masks the job's argument strings in local variables, breadcrumbs and extra."""

    def __init__(self, info):
        found = set()
        payload = info.get("payload") if isinstance(info, dict) else None
        if isinstance(payload, dict):
            _argument_strings(payload.get("args"), found)
            _argument_strings(payload.get("kwargs"), found, top=True)
        else:
            _argument_strings(payload, found)
        self.mask = _Mask(found, FILTERED) if found else None

    def __call__(self, event, hint):
        if self.mask is None:
            return event
        try:
            for frame in _frames(event):
                if "vars" in frame:
                    frame["vars"] = self.mask.value(frame["vars"])
            for key in ("breadcrumbs", "extra"):
                if key in event:
                    event[key] = self.mask.value(event[key])
        except Exception:  # noqa: BLE001 - an event processor must not fail open
            _strip(event)
        return event


def _argument_strings(value, found, top=False):
    """The strings inside a job's arguments (as passed, or as stored: tagged values count by their payload)."""
    if isinstance(value, str):
        if len(value) >= _MIN_LITERAL:
            found.add(value)
    elif isinstance(value, (bytes, bytearray)):
        _argument_strings(bytes(value).decode("utf-8", "replace"), found)
    elif isinstance(value, dict):
        if set(value) == {TAG, "v"}:
            _argument_strings(value["v"], found)
            return
        for key, item in value.items():
            if not top:  # the keyword names of kwargs are parameter names, not arguments
                _argument_strings(key, found)
            _argument_strings(item, found)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _argument_strings(item, found)


class _Mask:
    """Replaces the given strings (and, with patterns, any password in a URL or keyword string) in event data."""

    def __init__(self, needles, replacement, patterns=False):
        self.needles = sorted({n for n in needles if isinstance(n, str) and len(n) >= _MIN_LITERAL
                               and n not in _NOT_PASSWORDS}, key=len, reverse=True)
        self.replacement = replacement
        self.patterns = patterns

    def text(self, text):
        if self.patterns:  # the configured passwords, these and every password pattern
            return redact(text, self.needles)
        for needle in self.needles:
            if needle in text:
                text = text.replace(needle, self.replacement)
        return text

    def value(self, value, key=None):
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            if _is_frame(value):
                return {k: v if k in _FRAME_IDENTITY else self.value(v, k) for k, v in value.items()}
            return {self.value(k): (FILTERED if self.patterns and _is_password_key(k) and v else self.value(v, k))
                    for k, v in value.items()}
        if isinstance(value, (list, tuple, set, frozenset)):
            return [self.value(item) for item in value]
        if value is None or isinstance(value, (bool, int, float)) or hasattr(value, "isoformat"):
            return value
        if type(value).__name__ == "AnnotatedValue" and hasattr(value, "metadata"):
            value.value = self.value(value.value, key)
            return value
        # Anything else would go out as its repr: mask that.
        return self.text(safe_repr(value))


def _is_password_key(key):
    return isinstance(key, str) and bool(_PASSWORD_KEY.search(key))


def _is_frame(value):
    return "function" in value and ("lineno" in value or "abs_path" in value or "filename" in value)


def _known_passwords():
    """The passwords of database URLs in this process's arguments (exekutor.display knows the configured ones)."""
    found = set()
    for arg in sys.argv:
        if isinstance(arg, str):
            found.update(passwords_in(arg))
    return found


def _collect_passwords(value, found):
    """Adds the passwords of the URLs and keyword strings found anywhere in `value` (an event) to `found`."""
    if isinstance(value, str):
        if "://" in value or "assword" in value:
            found.update(passwords_in(value))
    elif isinstance(value, dict):
        frame = _is_frame(value)
        for key, item in value.items():
            if frame and (key in _FRAME_IDENTITY or key in _SOURCE_LINES):
                continue
            _collect_passwords(key, found)
            if _is_password_key(key) and isinstance(item, str):
                found.update((item, item.strip("'\"")))
            _collect_passwords(item, found)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in value:
            _collect_passwords(item, found)


def _stacks(event):
    """The frame lists of an event (outermost frame first): its exceptions', its threads' and its own."""
    stacks = [event.get("stacktrace")]
    for key in ("exception", "threads"):
        container = event.get(key)
        values = container.get("values") if isinstance(container, dict) else None
        for value in values if isinstance(values, list) else ():
            if isinstance(value, dict):
                stacks.append(value.get("stacktrace"))
    for stack in stacks:
        frames = stack.get("frames") if isinstance(stack, dict) else None
        if isinstance(frames, list):
            yield [frame for frame in frames if isinstance(frame, dict)]


def _frames(event):
    for frames in _stacks(event):
        yield from frames


def _drop_exekutor_vars(event):
    """exekutor's own frames, and the frames they called directly, go without their local variables."""
    for frames in _stacks(event):
        caller_is_ours = False
        for frame in frames:
            ours = _is_exekutor_frame(frame)
            if ours or caller_is_ours:
                frame.pop("vars", None)
            caller_is_ours = ours


def _is_exekutor_frame(frame):
    module = frame.get("module")
    if isinstance(module, str) and (module == "exekutor" or module.startswith("exekutor.")):
        return True
    path = frame.get("abs_path")
    return isinstance(path, str) and path.startswith(_PACKAGE_DIR)


def _strip(event):
    for frame in _frames(event):
        frame.pop("vars", None)
    event.pop("breadcrumbs", None)
    event.pop("extra", None)
