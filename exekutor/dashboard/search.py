"""The jobs page's search: its query-string fields, read into an operations.JobFilter.

Each field is a parameter of the page's URL (so a search is a link that can be shared, paged and refreshed), and
maps to one field of the filter `jobs list` uses: the listing, its cursors, the counts per status and the bulk
actions all go through operations with that filter. Times are the server's local time, as the pages show them.
Argument text is searched only when `dashboard_show_arguments` is on: a search that matches is a way to read them.
"""
import datetime as dt

from exekutor import config, operations

# URL parameter -> JobFilter field. `job` is an exact job name (links from other pages); `name` a part of one.
FIELDS = {"status": "status", "queue": "queue", "job": "job", "prefix": "id_prefix", "name": "job_contains",
          "error": "error_contains", "args": "arguments_contain", "from": "since", "to": "until"}
TIMES = ("from", "to")


def arguments_searchable():
    return bool(config.get("dashboard_show_arguments"))


def filter_args(source):
    """{parameter: text or None} of the search fields in a query string or form; empty means any. Argument text
    is dropped unless arguments are shown."""
    args = {key: (source.get(key) or None) for key in FIELDS}
    if not arguments_searchable():
        args["args"] = None
    return args


def job_filter(args):
    """The JobFilter of filter_args(); OperationError on a bad value (the page says which)."""
    fields = {FIELDS[key]: value for key, value in args.items() if value is not None}
    for key in TIMES:
        if args.get(key):
            fields[FIELDS[key]] = _local_time(key, args[key])
    return operations.JobFilter(**fields)


def _local_time(key, text):
    """A datetime-local input's value (2026-12-06T14:05, seconds optional) in the server's time zone."""
    try:
        moment = dt.datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.astimezone()
    except (ValueError, OverflowError, OSError):  # not a time; or one at the ends of the calendar, with no offset
        raise operations.OperationError(f"invalid {key} time {text[:40]!r}: expected YYYY-MM-DDTHH:MM") from None
