"""The jobs page's search: its query-string fields, read into an operations.JobFilter.

Each field is a parameter of the page's URL (so a search is a link that can be shared, paged and refreshed), and
maps to one field of the filter `jobs list` uses: the listing, its cursors, the counts per status and the bulk
actions all go through operations with that filter. Times are the server's local time, as the pages show them.
Argument text is searched only when `dashboard_show_arguments` is on: a search that matches is a way to read them.

No index has the text: a search for text scans the jobs the other fields leave, newest first, until a page is full.
One that matches rarely among a million jobs would take seconds (0.4 s for a job name, 0.7 s for argument text on
1,000,000 finished jobs), so it is stopped after TEXT_SEARCH_MS and the page says to narrow it: a status, a queue,
a time range. A search for a failed job's error text reads the error records (85 ms at 10,000 of them).
"""
import datetime as dt

import psycopg2.errors

from exekutor import config, operations
from exekutor.dashboard import data

# URL parameter -> JobFilter field. `job` is an exact job name (links from other pages); `name` a part of one.
FIELDS = {"status": "status", "queue": "queue", "job": "job", "prefix": "id_prefix", "name": "job_contains",
          "error": "error_contains", "args": "arguments_contain", "from": "since", "to": "until"}
TIMES = ("from", "to")
TEXT_SEARCH_MS = 200
TEXT_FIELDS = ("job_contains", "error_contains", "arguments_contain")


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


def list_jobs(conn, job_filter, limit, after=None):
    """operations.list_jobs; a search for text stops after TEXT_SEARCH_MS (None then)."""
    if not any(getattr(job_filter, name) for name in TEXT_FIELDS):
        return operations.list_jobs(conn, job_filter, limit=limit, after=after)
    try:
        with data.time_limit(conn, TEXT_SEARCH_MS):
            return operations.list_jobs(conn, job_filter, limit=limit, after=after)
    except psycopg2.errors.QueryCanceled:
        return None


def _local_time(key, text):
    """A datetime-local input's value (2026-12-06T14:05, seconds optional) in the server's time zone."""
    try:
        moment = dt.datetime.fromisoformat(text)
        return moment if moment.tzinfo else moment.astimezone()
    except (ValueError, OverflowError, OSError):  # not a time; or one at the ends of the calendar, with no offset
        raise operations.OperationError(f"invalid {key} time {text[:40]!r}: expected YYYY-MM-DDTHH:MM") from None
