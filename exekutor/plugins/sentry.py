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
they are not reported twice. A database password on the command line (`--database-url`) is masked in the `sys.argv`
that Sentry's argv integration attaches to events.
"""
import gevent
import sentry_sdk
from sentry_sdk.integrations.logging import ignore_logger

from exekutor import hooks
from exekutor.config import redact_url
from exekutor.errors import DiscardJob, JobTimeoutError
from exekutor.log import job_name

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
_masking_argv = False


def install():
    """Register the hooks; calling it again registers nothing twice. Returns the registered SentryHooks."""
    global _masking_argv
    ignore_logger("exekutor")
    if not _masking_argv:
        _add_last_event_processor(_mask_argv)
        _masking_argv = True
    return hooks.register(_hooks)


def uninstall():
    hooks.unregister(_hooks)


def _describe_job(scope, info):
    context = job_context(info)
    scope.set_context("exekutor_job", context)
    scope.set_tag("exekutor.job", context["job"])
    scope.set_tag("exekutor.queue", context["queue"])
    scope.set_tag("exekutor.job_id", context["id"])


def _mask_argv(event, hint):
    extra = event.get("extra")
    if isinstance(extra, dict) and isinstance(extra.get("sys.argv"), list):
        extra["sys.argv"] = [redact_url(arg) for arg in extra["sys.argv"]]
    return event


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
