"""`exekutor-gevent jobs list|show|retry|cancel`: the command line of exekutor.operations (DESIGN §10).

Readable tables on a terminal, `--json` for scripts. Exit status: 0 done, 1 nothing matched or the database
failed, 2 bad input (one line, nothing done). An action by filter asks for confirmation on a terminal unless
`--yes`; where no one can answer (stdin is not a terminal) it needs `--yes`. `--dry-run` says how many jobs an
action would touch and touches none.
"""
import datetime as dt
import json
import sys

import click

from exekutor.cli.common import (
    EXIT_FAILURE,
    config_options,
    fail,
    load_config,
    option,
    parse_seconds,
    with_connection,
)


@click.group()
def jobs():
    """List, show, retry and cancel jobs."""


def _filter_options(statuses, help_status):
    def decorate(command):
        command = option("--since", default=None,
                         help="Only jobs enqueued (finished, for finished statuses) since: a duration ago "
                              "(24h, 90m; a bare number is hours) or an ISO 8601 time.")(command)
        command = click.option("--job", "job_name", default=None, help="Only jobs of this registered name.")(command)
        command = option("--queue", default=None, help="Only jobs of this queue.")(command)
        return option("--status", type=click.Choice(statuses), default=None, help=help_status)(command)
    return decorate


def _build_filter(status, queue, job_name, since):
    from exekutor import operations

    try:
        return operations.JobFilter(status=status, queue=queue, job=job_name,
                                    since=_parse_time(since, "--since", ago=True) if since else None)
    except operations.OperationError as error:
        fail(str(error))


def _parse_time(text, option, ago):
    """An ISO 8601 time (local time if it has no offset), or a duration before (`ago`) or after now."""
    try:
        value = dt.datetime.fromisoformat(text)
    except ValueError:
        unit = "h" if ago else "s"
        seconds = parse_seconds(text, option, unit=unit) * (3600 if ago else 1)
        now = dt.datetime.now(dt.timezone.utc)
        try:
            return now - dt.timedelta(seconds=seconds) if ago else now + dt.timedelta(seconds=seconds)
        except OverflowError:
            fail(f"invalid value for {option}: {text!r} is too far from now")
    try:
        return value if value.tzinfo else value.astimezone()
    except (OverflowError, ValueError, OSError):  # a naive time the local clock cannot place (year 1, 9999)
        fail(f"invalid value for {option}: {text!r} cannot be read as a local time; give an offset (+00:00)")


def _run(action):
    """`action(connection)` with one-line errors; OperationError is bad input (status 2)."""
    from exekutor.operations import OperationError

    def guarded(conn):
        try:
            return action(conn)
        except OperationError as error:
            fail(str(error))

    return with_connection(guarded, autocommit=True, application_name="exekutor-gevent jobs")


def _json(value):
    def default(item):
        if isinstance(item, (dt.datetime, dt.date)):
            return item.isoformat()
        raise TypeError(f"cannot serialize {type(item).__name__}")

    return json.dumps(value, indent=2, default=default)


# ---------------------------------------------------------------------------------------------------------------
# list, show


@jobs.command("list")
@_filter_options(["pending", "scheduled", "executing", "completed", "failed", "discarded", "cancelled"],
                 "Only jobs with this status (pending includes scheduled; cancelled jobs are discarded ones).")
@option("--limit", type=click.IntRange(1, 1000), default=50, help="Jobs per page (1-1000, default 50).")
@option("--after", default=None, help="Continue after the page that printed this cursor.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of a table.")
@config_options
def list_command(status, queue, job_name, since, limit, after, as_json, configfile, env, database_url):
    """List jobs, one page at a time (newest first; pending ones in the order they will run)."""
    from exekutor import operations
    from exekutor.info import render_jobs

    load_config(configfile, env, {"database_url": database_url})
    job_filter = _build_filter(status, queue, job_name, since)
    page = _run(lambda conn: operations.list_jobs(conn, job_filter, limit=limit, after=after))
    if as_json:
        click.echo(_json({"jobs": page.jobs, "next_cursor": page.next_cursor}))
    elif page.jobs:
        for line in render_jobs(page.jobs, status):
            click.echo(line)
        if page.next_cursor:
            click.echo(f"\nmore: add --after {page.next_cursor}")
    else:
        click.echo("no jobs match" + (_job_name_hint(job_name) if job_name else ""), err=True)
    sys.exit(0 if page.jobs else EXIT_FAILURE)


def _job_name_hint(job_name):
    """--job is the exact stored name ('module:function'): a near miss gets the names it may have meant."""
    from exekutor import operations
    from exekutor.display import printable

    similar = _run(lambda conn: operations.similar_job_names(conn, job_name))
    if not similar:
        return ""
    names = " or ".join(repr(printable(name)) for name in similar)  # stored names may hold control characters
    return f" (no job is named {printable(job_name)!r}; did you mean {names}?)"


@jobs.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts.")
@config_options
def show_command(job_id, as_json, configfile, env, database_url):
    """Show one job: its arguments, options, times and every error with its traceback."""
    from exekutor import operations
    from exekutor.info import render_job

    load_config(configfile, env, {"database_url": database_url})
    try:
        job_id = operations.check_job_id(job_id)
    except operations.OperationError as error:
        fail(str(error))
    job = _run(lambda conn: operations.get_job(conn, job_id))
    if job is None:
        fail(f"no job {job_id}", EXIT_FAILURE)
    if as_json:
        click.echo(_json(job))
        return
    for line in render_job(job):
        click.echo(line)


# ---------------------------------------------------------------------------------------------------------------
# retry, cancel


def _action_options(command):
    command = option("--dry-run", is_flag=True, help="Say how many jobs would be touched; touch none.")(command)
    return click.option("--yes", "-y", is_flag=True, help="Act on a filter without asking.")(command)


@jobs.command("retry")
@click.argument("job_ids", nargs=-1)
@_filter_options(["failed", "discarded", "cancelled"], "Retry every job with this status (and the other filters).")
@option("--at", default=None, help="Run them at this time (ISO 8601) or after this duration (10m), not now.")
@_action_options
@config_options
def retry_command(job_ids, status, queue, job_name, since, at, yes, dry_run, configfile, env, database_url):
    """Put failed or discarded jobs back to pending, with their history and a fresh retry budget."""
    from exekutor import operations

    load_config(configfile, env, {"database_url": database_url})
    when = _parse_time(at, "--at", ago=False) if at else None
    target = _target(job_ids, status, queue, job_name, since, "retry")
    if not _confirmed(target, "retry", yes, dry_run):
        return
    result = _run(lambda conn: operations.retry(conn, **target.arguments, at=when))
    _report(result.retried, "retried", target, "not failed or discarded")


@jobs.command("cancel")
@click.argument("job_ids", nargs=-1)
@_filter_options(["pending", "scheduled", "executing"], "Cancel every job with this status (and the other filters).")
@_action_options
@config_options
def cancel_command(job_ids, status, queue, job_name, since, yes, dry_run, configfile, env, database_url):
    """Cancel pending jobs (discarded at once) and executing ones (interrupted by their worker)."""
    from exekutor import operations

    load_config(configfile, env, {"database_url": database_url})
    target = _target(job_ids, status, queue, job_name, since, "cancel")
    if not _confirmed(target, "cancel", yes, dry_run):
        return
    result = _run(lambda conn: operations.cancel(conn, **target.arguments))
    if result.interrupting:
        click.echo(f"interrupting {len(result.interrupting)} executing job(s): they end discarded when their "
                   "workers stop them (within a second; within a poll interval if a worker's listener is down)")
    _report(result.cancelled + result.interrupting, "cancelled", target, "not pending or executing, or already "
            "being cancelled")


class _Target:
    def __init__(self, ids, job_filter):
        self.ids, self.filter = ids, job_filter
        self.arguments = {"job_ids": ids} if ids else {"job_filter": job_filter}


def _target(job_ids, status, queue, job_name, since, action):
    from exekutor import operations

    if job_ids and (status or queue or job_name or since):
        fail(f"give job ids or filters to {action}, not both")
    if job_ids:
        try:
            return _Target([operations.check_job_id(job_id) for job_id in job_ids], None)
        except operations.OperationError as error:
            fail(str(error))
    if not status:
        fail(f"nothing to {action}: give job ids, or --status with optional --queue, --job, --since")
    return _Target(None, _build_filter(status, queue, job_name, since))


def _confirmed(target, action, yes, dry_run):
    """Whether to go on: --dry-run counts and stops; a filter is confirmed on a terminal or by --yes."""
    from exekutor import operations

    if not dry_run and (target.ids or yes):
        return True
    count = _run(lambda conn: operations.count_jobs(conn, target.filter, action, target.ids))
    if dry_run:
        click.echo(f"would {action} {count} job(s)")
        sys.exit(0 if count else EXIT_FAILURE)
    if not count:
        click.echo(f"no jobs to {action}", err=True)
        sys.exit(EXIT_FAILURE)
    if not sys.stdin.isatty():
        fail(f"{action} {count} job(s)? stdin is not a terminal to confirm on: add --yes (or --dry-run)")
    if not click.confirm(f"{action} {count} job(s)?", default=False):
        click.echo("nothing done")
        sys.exit(EXIT_FAILURE)
    return True


def _report(done, verb, target, why_not):
    click.echo(f"{verb} {len(done)} job(s)")
    if target.ids:
        missed = [job_id for job_id in target.ids if job_id not in set(done)]
        for job_id in missed:
            click.echo(f"  not {verb}: {job_id} ({why_not}, or no such job)", err=True)
    sys.exit(0 if done else EXIT_FAILURE)
