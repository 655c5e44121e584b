"""The dashboard's pages and actions: a Flask blueprint over exekutor.operations (DESIGN §10, §12).

Read-only unless `dashboard_allow_actions` is on: then retry and cancel (one job, the jobs ticked on a list, or
every job of a search) are a GET that shows what would be touched and a form, and a POST of that form with a CSRF
token (see csrf.py); pause and resume of a queue or a schedule, and a schedule's run now, are a button each, a POST
with a CSRF token as well (no confirmation: a pause and a resume undo each other, and a run now is one job).
Every page can also be fetched as a fragment (`?fragment=1`, the content without the layout), which
dashboard.js swaps in every few seconds.
"""
import logging
import re

import psycopg2
import psycopg2.errors
from flask import Blueprint, Flask, abort, redirect, render_template, request, url_for
from werkzeug.exceptions import HTTPException

from exekutor import config, operations, queue_control
from exekutor.dashboard import csrf, data, hosts, rendering, search
from exekutor.definitions import check_queue
from exekutor.display import printable, redact
from exekutor.serialization import text_problem

blueprint = Blueprint("exekutor_dashboard", __name__, template_folder="templates", static_folder="static",
                      static_url_path="/static")
PAGE_SIZE = 50
MAX_SELECTED = PAGE_SIZE  # jobs one selection may name: the ticked rows of a page
REFRESH_SECONDS = 5
ACTIONS = {"retry": operations.RETRYABLE, "cancel": operations.CANCELLABLE}
QUEUE_ACTIONS = {"pause": queue_control.pause_queue, "resume": queue_control.resume_queue}
# What a queue action did, as the queue page says it (keyed by the redirect's `queue_action`: the words are ours).
QUEUE_NOTICES = {"paused": "Paused this queue: its running jobs finish, no other starts until it is resumed.",
                 "already-paused": "This queue was already paused.",
                 "resumed": "Resumed this queue: its held-back jobs start again.",
                 "not-paused": "This queue was not paused."}
SCHEDULE_NOTICES = {"ran": "Enqueued one job of its schedule now; the schedule's next tick is unchanged.",
                    "paused": "Paused the schedule: its ticks pass without a job until it is resumed.",
                    "already-paused": "The schedule was already paused.",
                    "resumed": "Resumed the schedule: it enqueues again from its next tick.",
                    "not-paused": "The schedule was not paused.",
                    "not-stored": "No worker has written this schedule to the database yet (start one that has it): "
                                  "nothing was done."}
rendering.install(blueprint)
blueprint.before_request(hosts.check)
logger = logging.getLogger("exekutor.dashboard")


def actions_enabled():
    return bool(config.get("dashboard_allow_actions"))


def _page(template, refresh=True, status=200, **context):
    fragment = request.args.get("fragment") == "1"
    html = render_template(f"exekutor_dashboard/{template}", fragment=fragment, notice=_notice(),
                           refresh=REFRESH_SECONDS if refresh else None, **context)
    return html, status


def _notice():
    """What the action redirected here did; only a known verb and a number are taken from the query string, so a
    link cannot put words of its own on the page."""
    if request.args.get("queue_action") in QUEUE_NOTICES:
        return QUEUE_NOTICES[request.args["queue_action"]]
    if request.args.get("schedule_action") in SCHEDULE_NOTICES:
        return SCHEDULE_NOTICES[request.args["schedule_action"]]
    action, done = request.args.get("action"), request.args.get("done", "")
    # ASCII digits, and few: str.isdigit() takes "²", and int() refuses more than 4,300 digits.
    if action not in ACTIONS or not re.fullmatch(r"[0-9]{1,12}", done):
        return None
    return f"{'Retried' if action == 'retry' else 'Cancelled'} {int(done)} job(s)."


# --- pages ------------------------------------------------------------------------------------------------------

@blueprint.route("/")
def overview():
    with data.connection() as conn:
        return _page("overview.html", page="overview", page_queues=data.PAGE_QUEUES, **data.overview(conn))


@blueprint.route("/queues")
def queues():
    with data.connection() as conn:
        listing = data.queue_list(conn, after=request.args.get("after", ""))
    return _page("queues.html", page="overview", page_queues=data.PAGE_QUEUES, **listing)


@blueprint.route("/queues/<path:name>")
def queue(name):
    try:
        operations.JobFilter(queue=name)
    except operations.OperationError as error:
        abort(404, str(error))
    with data.connection() as conn:
        return _page("queue.html", page="overview", name=name, **data.queue_page(conn, name))


@blueprint.route("/workers")
def workers():
    # ASCII digits, and few (as for `done`): anything else is the first page.
    number = request.args.get("page", "")
    number = int(number) if re.fullmatch(r"[0-9]{1,9}", number) else 0
    with data.connection() as conn:
        return _page("workers.html", page="workers", workers=data.workers(conn, number), count=data.worker_count(conn),
                     page_number=number, page_workers=data.PAGE_WORKERS)


@blueprint.route("/jobs")
def jobs():
    """The search: a page of the jobs that match, the count of each status with the other fields, the actions."""
    args = search.filter_args(request.args)
    try:
        job_filter = search.job_filter(args)
        with data.connection() as conn:
            result = search.list_jobs(conn, job_filter, limit=PAGE_SIZE, after=request.args.get("after") or None)
            counts = data.status_counts(conn, job_filter)
    except operations.OperationError as error:
        return _page("jobs.html", page="jobs", filters=args, error=str(error), jobs=[], next_cursor=None,
                     counts=None, status=400, refresh=False, **_search_context())
    if result is None:  # the search ran out of time: the page says how to narrow it, and does not run it again
        return _page("jobs.html", page="jobs", filters=args, error=None, stopped=search.TEXT_SEARCH_MS, jobs=[],
                     next_cursor=None, counts=counts, refresh=False, exact_limit=data.STATUS_COUNT_EXACT,
                     **_search_context())
    return _page("jobs.html", page="jobs", filters=args, error=None, jobs=result.jobs, counts=counts,
                 next_cursor=result.next_cursor, bulk=_bulk_actions(job_filter),
                 selectable=_selectable(result.jobs), exact_limit=data.STATUS_COUNT_EXACT, **_search_context())


def _search_context():
    return {"statuses": operations.STATUSES, "arguments_searchable": search.arguments_searchable()}


def _selectable(jobs):
    """The actions a selection of this page's jobs may take (none when actions are off)."""
    if not actions_enabled():
        return []
    return [action for action, statuses in ACTIONS.items() if any(job["status"] in statuses for job in jobs)]


@blueprint.route("/jobs/<job_id>")
def job(job_id):
    try:
        job_id = operations.check_job_id(job_id)
    except operations.OperationError as error:
        abort(404, str(error))
    with data.connection() as conn:
        found = operations.get_job(conn, job_id)
    if found is None:
        abort(404, f"no job {job_id}")
    finished = found["status"] in ("completed", "failed", "discarded", "cancelled")
    return _page("job.html", page="jobs", job=found, refresh=not finished,
                 show_arguments=bool(config.get("dashboard_show_arguments")),
                 can={action: found["status"] in statuses for action, statuses in ACTIONS.items()})


@blueprint.route("/schedules")
def schedules():
    from exekutor.schedule_overview import overview as schedule_overview
    from exekutor.schedules import active_schedules

    with data.connection() as conn:
        entries = schedule_overview(conn, active_schedules(config.get("schedules")))
    return _page("schedules.html", page="schedules", schedules=entries)


# --- actions ----------------------------------------------------------------------------------------------------

@blueprint.route("/actions/<action>", methods=["GET", "POST"])
def act(action):
    """GET: what the action would touch, and the form to confirm it; POST: do it (CSRF-checked)."""
    if action not in ACTIONS:
        abort(404)
    if not actions_enabled():
        abort(403, "actions are disabled: this dashboard is read-only (dashboard_allow_actions)")
    source = request.form if request.method == "POST" else request.args
    target = _target(action, source)
    if request.method == "POST":
        csrf.check()
        with data.connection() as conn:
            done = _perform(conn, action, target)
        return redirect(_return_url(target, action=action, done=len(done)), code=303)
    with data.connection() as conn:
        count = operations.count_jobs(conn, target["filter"], action, target["ids"])
    return _page("confirm.html", page="jobs", refresh=False, action=action, target=target, count=count,
                 back=_return_url(target))


@blueprint.route("/queue-actions/<action>", methods=["POST"])
def queue_act(action):
    """Pause or resume the queue named in the form (CSRF-checked), then back to its page, which says what changed."""
    if action not in QUEUE_ACTIONS:
        abort(404)
    if not actions_enabled():
        abort(403, "actions are disabled: this dashboard is read-only (dashboard_allow_actions)")
    csrf.check()
    try:
        name = check_queue(_form_name("queue"))
    except ValueError as error:  # not a queue name
        abort(400, f"invalid queue: {error}")
    with data.connection() as conn:
        changed = QUEUE_ACTIONS[action](name, connection=conn)
    return redirect(url_for(".queue", name=name, queue_action=_PAUSE_OUTCOMES[action, changed]), code=303)


@blueprint.route("/schedule-actions/<action>", methods=["POST"])
def schedule_act(action):
    """Run now, pause or resume the schedule named in the form (CSRF-checked): a job run now is shown, a pause or
    resume goes back to the schedules, each saying what changed."""
    from exekutor.schedule_control import pause_schedule, resume_schedule, run_now

    if action not in ("run", "pause", "resume"):
        abort(404)
    if not actions_enabled():
        abort(403, "actions are disabled: this dashboard is read-only (dashboard_allow_actions)")
    csrf.check()
    name = _form_name("schedule")
    with data.connection() as conn:
        if action == "run":
            job_id = run_now(conn, name)
            if job_id:
                return redirect(url_for(".job", job_id=job_id, schedule_action="ran"), code=303)
            return redirect(url_for(".schedules", schedule_action="not-stored"), code=303)
        changed = (pause_schedule if action == "pause" else resume_schedule)(conn, name)
    return redirect(url_for(".schedules", schedule_action=_PAUSE_OUTCOMES[action, changed]), code=303)


# What a pause or a resume of a queue or a schedule did (the page it returns to says it): (action, changed) -> word.
_PAUSE_OUTCOMES = {("pause", True): "paused", ("pause", False): "already-paused", ("resume", True): "resumed",
                   ("resume", False): "not-paused"}


def _form_name(field):
    """A name a form carries as hex of its UTF-8 (rendering.form_name); 400 when it is not."""
    try:
        name = bytes.fromhex(request.form.get(field, "")).decode("utf-8")
    except ValueError as error:  # not hex, or not UTF-8 (both ValueErrors)
        abort(400, f"invalid {field}: {error}")
    if not name or text_problem(name):
        abort(400, f"invalid {field}: empty, or not text a row can hold")
    return name


def _target(action, source):
    """{"ids": the jobs chosen (one, or a selection from a list) or None, "filter": JobFilter or None, "args":
    the list's search fields, "selection": whether it came from a list}; 400 on bad input."""
    try:
        ids = [job_id for job_id in source.getlist("id") if job_id]
        if len(ids) > MAX_SELECTED:
            abort(400, f"at most {MAX_SELECTED} jobs at once")
        args = search.filter_args(source)
        if ids:
            return {"ids": list(dict.fromkeys(operations.check_job_id(job_id) for job_id in ids)), "filter": None,
                    "args": args, "selection": bool(source.get("selection"))}
        if source.get("selection"):
            abort(400, "no job selected: tick the jobs to act on")
        if args["status"] not in ACTIONS[action]:
            abort(400, f"{action} by filter needs a status among {', '.join(ACTIONS[action])}")
        return {"ids": None, "filter": search.job_filter(args), "args": args, "selection": False}
    except operations.OperationError as error:
        abort(400, str(error))


def _perform(conn, action, target):
    arguments = {"job_ids": target["ids"]} if target["ids"] else {"job_filter": target["filter"]}
    if action == "retry":
        return operations.retry(conn, **arguments).retried
    result = operations.cancel(conn, **arguments)
    return result.cancelled + result.interrupting


def _return_url(target, **extra):
    if target["ids"] and not target["selection"]:
        return url_for(".job", job_id=target["ids"][0], **extra)
    return url_for(".jobs", **{key: value for key, value in target["args"].items() if value}, **extra)


def _bulk_actions(job_filter):
    """The actions a filter's "every matching job" buttons may offer (none when actions are off)."""
    if not actions_enabled():
        return []
    return [action for action, statuses in ACTIONS.items() if job_filter.status in statuses]


# --- errors and headers -----------------------------------------------------------------------------------------

@blueprint.errorhandler(HTTPException)
def http_error(error):
    return _page("error.html", refresh=False, status=error.code, page=None, code=error.code,
                 message=error.description if error.code in (400, 403, 404) else error.name)


@blueprint.errorhandler(psycopg2.Error)
def database_error(error):
    cause = _database_cause(error)
    # The log has the driver's text (passwords removed); the page never has it: it may name the server, and a page
    # is no place for the database's address.
    logger.error("dashboard: %s on %s %s: %s", cause, request.method, printable(request.path),
                 redact(str(error)).strip() or type(error).__name__)
    return _page("error.html", refresh=False, status=503, page=None, code=503, message=f"{cause}; reload to try again")


def _database_cause(error):
    if isinstance(error, psycopg2.errors.UndefinedTable):
        return "exekutor's tables are missing in the database (run 'exekutor-gevent migrate')"
    # No SQLSTATE: libpq's own (no connection, connection lost); class 08 and 57P: connection refused or ended.
    if error.pgcode is None or error.pgcode.startswith(("08", "57P")):
        return "the database is unreachable"
    return f"the database refused the query (SQLSTATE {error.pgcode})"


def _set_security_headers(response):
    response.headers["Content-Security-Policy"] = (
        "default-src 'none'; style-src 'self'; script-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Referrer-Policy"] = "same-origin"
    if request.endpoint != "exekutor_dashboard.static" or response.status_code >= 400:  # files may be cached
        response.headers["Cache-Control"] = "no-store"
    return response


@blueprint.after_request
def security_headers(response):
    return csrf.set_cookie(_set_security_headers(response))


def create_app(allowed_hosts=()):
    """The standalone dashboard: the blueprint at the root of an app of its own (no static route of the app's,
    so the blueprint's /static is the only one). It answers `allowed_hosts` and `dashboard_allowed_hosts` only,
    and its own pages (404, 405, a refused host) carry the blueprint's security headers too."""
    app = Flask("exekutor.dashboard", static_folder=None)
    app.extensions[hosts.EXTENSION] = tuple(allowed_hosts)
    app.before_request(hosts.check)  # also before a 404 or 405: the blueprint's hook runs only on its routes
    app.after_request(_set_security_headers)
    app.register_blueprint(blueprint, url_prefix="")
    return app
