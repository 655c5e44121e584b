"""Helpers the dashboard's templates call: times, ages, charts, the CSRF token.

Given to the blueprint's templates by a context processor rather than as app-wide Jinja filters, so that mounting
the dashboard adds nothing to the host application's template namespace. Values from rows (queue and job names,
messages, tracebacks, arguments, schedules) are left to Jinja's autoescape; every one of them also goes through
`printable` (the CLI's), which shows control characters, bidirectional overrides and zero-width characters as
escapes, so a name cannot reorder or hide the text around it. Tracebacks and JSON keep their newlines and tabs.
"""
import json

from exekutor import config, flow, operations
from exekutor.dashboard import charts, csrf
from exekutor.display import printable
from exekutor.info import duration, timestamp


def when(value):
    return timestamp(value) if value else "-"


def age(seconds):
    return duration(seconds) if seconds is not None else "-"


def as_json(value):
    """Indented JSON for arguments and options (escaped by the template like any text). Non-ASCII text stays
    readable (ensure_ascii off), so the invisible characters JSON would leave raw go through `printable`."""
    if not value:
        return "-"
    return printable(json.dumps(value, indent=2, ensure_ascii=False, default=str, sort_keys=True), multiline=True)


def error_summary(job):
    return operations.error_headline(job) or ""


def waiting(job):
    """Why a pending job waits; a limit key derived from its arguments only where arguments are shown."""
    if config.get("dashboard_show_arguments"):
        return job.get("waiting")
    return flow.describe(job.get("blocked_on"), hide_key_of=job.get("job")) if job.get("waiting") else None


def form_name(name):
    """A name as a form field carries it: hex of its UTF-8, read back by views.form_name."""
    return name.encode("utf-8").hex()


def install(blueprint):
    @blueprint.context_processor
    def helpers():
        return {"when": when, "age": age, "as_json": as_json, "chart": charts.bar_chart, "csrf_token": csrf.token,
                "csrf_field": csrf.FIELD, "printable": printable, "error_summary": error_summary,
                "job_arguments": operations.job_arguments, "form_name": form_name, "waiting": waiting,
                "actions_enabled": bool(config.get("dashboard_allow_actions"))}
