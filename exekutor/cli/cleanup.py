"""`exekutor-gevent cleanup [all|jobs|workers]`: delete dead workers and old finished jobs (exekutor.cleanup does
the deleting)."""
import click

from exekutor.cli.common import config_options, database_errors, fail, load_config, option, parse_seconds


@click.command()
@click.argument("what", type=click.Choice(["all", "jobs", "workers"]), default="all")
@config_options
@option("--timeout", default=None,
        help="Hours (or a duration like 90m, 2d) for both workers and jobs, unless given specifically below.")
@option("--worker-timeout", default=None,
        help="Delete workers without a heartbeat for this many hours (default 4).")
@option("--job-timeout", default=None,
        help="Delete finished jobs scheduled and finished this many hours ago (default 48).")
@option("--job-status", multiple=True,
        help="Only jobs with this status: completed, failed, discarded (repeatable; default all three).")
@option("--quiet", is_flag=True, default=False, help="Print nothing.")
def cleanup(what, configfile, env, database_url, timeout, worker_timeout, job_timeout, job_status, quiet):
    """Delete dead workers and old finished jobs; pending and executing jobs are never deleted."""
    from exekutor import cleanup as purge

    load_config(configfile, env, {"database_url": database_url})
    # Specific timeouts win over --timeout, which wins over the defaults. All input is checked before anything
    # is deleted.
    worker_hours = _cleanup_hours("--worker-timeout", worker_timeout, timeout, purge.DEFAULT_WORKER_TIMEOUT)
    job_hours = _cleanup_hours("--job-timeout", job_timeout, timeout, purge.DEFAULT_JOB_TIMEOUT)
    try:
        statuses = purge.job_statuses(list(job_status) or None)
    except ValueError as error:
        fail(f"invalid value for --job-status: {error}")
    say = (lambda message: None) if quiet else click.echo
    cleaner = purge.Cleanup()
    with database_errors():
        if what in ("all", "workers"):
            _cleanup_workers(cleaner, worker_hours, say)
        if what in ("all", "jobs"):
            count = cleaner.cleanup_jobs(before=job_hours, status=statuses)
            names = ", ".join(name for name, letter in purge.FINISHED_STATUSES.items() if letter in statuses)
            say(f"jobs: deleted {count} ({names}; scheduled and finished over {_hours(job_hours)} ago)")


def _cleanup_hours(name, specific, general, default):
    if specific is not None:
        return parse_seconds(specific, name, unit="h")
    return parse_seconds(general, "--timeout", unit="h") if general is not None else default


def _hours(hours):
    from exekutor.info import duration

    return duration(hours * 3600)


def _cleanup_workers(cleaner, hours, say):
    try:
        workers = cleaner.cleanup_workers(timeout=hours)
    except ValueError as error:
        fail(f"invalid worker timeout: {error}")
    say(f"workers: deleted {len(workers)} (no heartbeat for over {_hours(hours)})")
    for worker in workers:
        say(f"  {worker['id']} on {worker['hostname']} (pid {worker['pid']}, identifier "
            f"{worker['identifier'] or '-'}, last heartbeat {worker['last_heartbeat_at']:%Y-%m-%d %H:%M:%S %Z})")
