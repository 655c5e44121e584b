"""Helpers the dashboard's templates call: times, ages, charts, the CSRF token.

Given to the blueprint's templates by a context processor rather than as app-wide Jinja filters, so that mounting
the dashboard adds nothing to the host application's template namespace. Values from rows (queue and job names,
messages, tracebacks, arguments, schedules) are left to Jinja's autoescape; every one of them also goes through
`printable` (the CLI's), which shows control characters, bidirectional overrides and zero-width characters as
escapes, so a name cannot reorder or hide the text around it. Tracebacks and JSON keep their newlines and tabs.
"""
import itertools
import json
import re

from exekutor import config, flow, operations
from exekutor.dashboard import charts, csrf
from exekutor.display import printable
from exekutor.info import duration, timestamp


def when(value):
    return timestamp(value) if value else "-"


def age(seconds):
    return duration(seconds) if seconds is not None else "-"


def pickup(latency):
    """"p50 <= 5 ms · p99 <= 200 ms" of a Throughput.latency(); "-" without one."""
    if not latency:
        return "-"
    return " · ".join(f"{name} {_at_most(seconds)}" for name, seconds in zip(("p50", "p99"), latency))


def _at_most(seconds):
    if seconds == float("inf"):
        return "> 1h"
    if seconds < 1:
        return f"≤ {seconds * 1000:g} ms"
    return f"≤ {seconds:g} s" if seconds < 60 else f"≤ {duration(seconds)}"


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


# A frame of a Python traceback: its `File "path", line N` line, then the lines indented deeper (its source line,
# the ^^^ marks). A frame is exekutor's own when its path has a directory named exekutor (installed or a checkout).
_FRAME = re.compile(r'(?P<indent>[ \t]*)File "(?P<path>[^"\n]*)", line \d+')
_OWN_PATH = re.compile(r"[/\\]exekutor[/\\]")


def traceback_parts(text):
    """[(folded, text)] of a traceback: runs of exekutor's own frames are folded (the job's frames, and the
    exception, are what an operator reads), the rest is shown as it is; joined, the parts are the whole text."""
    lines = text.splitlines(keepends=True)
    marks, index = [], 0
    while index < len(lines):
        match = _FRAME.match(lines[index])
        end = index + 1
        if match:
            while end < len(lines) and _deeper(lines[end], match["indent"]):
                end += 1
        marks += [bool(match and _OWN_PATH.search(match["path"]))] * (end - index)
        index = end
    return [(own, "".join(line for _, line in group))
            for own, group in itertools.groupby(zip(marks, lines), key=lambda pair: pair[0])]


def _deeper(line, indent):
    return line.strip() != "" and line.startswith(indent) and line[len(indent):len(indent) + 1] in (" ", "\t") \
        and not _FRAME.match(line)


def frame_count(text):
    return len(_FRAME.findall(text))


def error_groups(errors):
    """The error records, with a run of attempts that failed the same way (type, message and traceback) as one:
    [{"error": the last of them, "count", "first_attempt", "first_at"}], oldest first."""
    groups = []
    for _, run in itertools.groupby(errors, key=lambda error: (error["type"], error["message"], error["traceback"])):
        run = list(run)
        groups.append({"error": run[-1], "count": len(run), "first_attempt": run[0]["attempt"],
                       "first_at": run[0]["created_at"]})
    return groups


def install(blueprint):
    @blueprint.context_processor
    def helpers():
        return {"when": when, "age": age, "as_json": as_json, "pickup": pickup, "chart": charts.bar_chart,
                "csrf_token": csrf.token,
                "csrf_field": csrf.FIELD, "printable": printable, "error_summary": error_summary,
                "job_arguments": operations.job_arguments, "form_name": form_name, "waiting": waiting,
                "actions_enabled": bool(config.get("dashboard_allow_actions")),
                "traceback_parts": traceback_parts, "frame_count": frame_count, "error_groups": error_groups}
