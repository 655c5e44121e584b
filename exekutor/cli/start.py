"""`exekutor-gevent start`, `restart` and `stop`: a worker's life, in the foreground or as a daemon."""
import glob
import os
import sys
from typing import NamedTuple

import click

from exekutor.cli.common import (
    EXIT_FAILURE,
    EXIT_USAGE,
    app_import_failure,
    config_file_options,
    config_options,
    configure_logging,
    database_label,
    fail,
    load_config,
    one_line,
    option,
    parse_range,
    parse_seconds,
)

# `stop` waits this much longer than the worker's own wait_for_termination before it escalates: the worker
# still has to write its jobs' outcomes and delete its row after the jobs end.
STOP_MARGIN = 30.0


def identifier_options(command):
    command = option("--pidfile", "--pid", default=None,
                     help="Pidfile path; %{identifier} is replaced. Default: tmp/pids/exekutor[.IDENTIFIER].pid "
                          "(start: with --daemonize only).")(command)
    return option("--identifier", "--id", default=None,
                  help="Name of the worker: shown by info and in the process title, part of the pidfile "
                       "name.")(command)


def start_options(command):
    for decorator in reversed([
        config_options,
        identifier_options,
        option("--daemonize", "--daemon", is_flag=True, default=False,
               help="Run in the background; returns once the worker runs."),
        option("--logfile", default=None,
               help="Where a daemonized worker logs; %{identifier} is replaced. Default: "
                    "log/exekutor[.IDENTIFIER].log."),
        option("--queue", multiple=True, help="Queue to work off (repeatable; default: all queues)."),
        option("--threads", default=None, help="Greenlets as MIN:MAX, or N for a fixed pool."),
        option("--max-threads", type=int, default=None, help="Maximum number of greenlets."),
        option("--priority", default=None, help="Priorities MIN:MAX (or N) of the jobs to run; 1 is highest."),
        option("--poll-interval", default=None, help="Seconds between polls (or a duration like 30s, 5m)."),
        option("--app", multiple=True, help="Module defining jobs to import, or module:factory (repeatable)."),
        option("--healthcheck-port", type=int, default=None, help="Port of the healthcheck server."),
        option("--quiet", is_flag=True, default=None, help="Log errors only."),
        option("--log-level", default=None, metavar="LEVEL",
               help="Level of the log: debug, info (the default), warning or error."),
    ]):
        command = decorator(command)
    return command


def shutdown_timeout_option(command):
    return option("--shutdown-timeout", "--timeout", default=None,
                  help="Seconds (or a duration, or 'forever') to let a worker finish its jobs before it is made "
                       "to cancel them, then killed. Default: wait_for_termination + 30s.")(command)


# ---------------------------------------------------------------------------------------------------------------
# start / restart


class StartPlan(NamedTuple):
    imports: list
    pidfile: str  # or None: no pidfile
    logfile: str  # or None: stdout/stderr stay where they are
    daemonize: bool
    quiet: bool


def _worker_overrides(params):
    overrides = {"database_url": params["database_url"], "identifier": params["identifier"],
                 "queues": list(params["queue"]) or None, "polling_interval": params["poll_interval"],
                 "healthcheck_port": params["healthcheck_port"], "quiet": params["quiet"],
                 "log_level": params["log_level"], "imports": list(params["app"]) or None}
    try:
        if params["threads"] is not None:
            low, high = parse_range(params["threads"], "--threads")
            overrides.update(min_execution_threads=low, max_execution_threads=high)
        if params["max_threads"] is not None:
            overrides["max_execution_threads"] = params["max_threads"]
        if params["priority"] is not None:
            overrides["min_priority"], overrides["max_priority"] = parse_range(params["priority"], "--priority")
    except ValueError as error:
        fail(str(error))
    return overrides


def _prepare_start(params):
    """Everything `start` needs, checked; exits with status 2 on the first bad input."""
    from exekutor import config, daemon

    # The command line's own default, below config files, as in the original: workers name their connections.
    config.configure(set_db_connection_name=True)
    load_config(params["configfile"], params["env"], _worker_overrides(params), params["identifier"])
    identifier, daemonize = config.get("identifier"), params["daemonize"]
    pidfile = params["pidfile"] or (daemon.DEFAULT_PIDFILE if daemonize else None)
    logfile = params["logfile"] or (daemon.DEFAULT_LOGFILE if daemonize else None)
    try:
        pidfile, logfile = (daemon.expand(path, identifier) if path else None for path in (pidfile, logfile))
    except ValueError as error:
        fail(str(error))
    return StartPlan(config.get("imports"), pidfile, logfile, daemonize, bool(params["quiet"]))


def _open_log(path):
    from exekutor import daemon

    try:
        return daemon.open_log(path)  # never through a symlink; created 0600
    except OSError as error:
        fail(f"cannot open log file {path}: {error.strerror}")


def _acquire_pidfile(path):
    from exekutor import daemon

    try:
        pidfile = daemon.Pidfile(path).acquire()
    except daemon.AlreadyRunning as error:
        fail(str(error), EXIT_FAILURE)
    except OSError as error:
        fail(f"cannot write pidfile {path}: {error.strerror}")
    if pidfile.stale_pid:
        click.echo(f"removed stale pidfile {path} (pid {pidfile.stale_pid} was not running)", err=True)
    return pidfile


def _launch(plan):
    """Start the worker of `plan` in this process or as a daemon; returns the exit status."""
    from exekutor import daemon
    from exekutor.worker import process

    log_fd = _open_log(plan.logfile) if plan.logfile else None
    pidfile = _acquire_pidfile(plan.pidfile) if plan.pidfile else None
    runner = None
    if plan.daemonize:
        runner = daemon.Daemon(log_fd)
        if not runner.fork():
            pidfile.close()  # the daemon holds the lock now
            return _report_daemon(runner, plan)
    elif log_fd is not None:
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
    process.stop_on_signals()
    process.patch()
    status, error = _serve(plan, pidfile, runner)
    if error:
        click.echo(f"exekutor-gevent: error: {one_line(error)}", err=True)  # in a daemon: to its log file
    if runner is not None:
        runner.report(status, one_line(error) if error else "the worker stopped")
    return status


def _serve(plan, pidfile, runner):
    """Run the worker until it stops: (exit status, error message or None). The pidfile is gone on return."""
    import psycopg2

    from exekutor import config
    from exekutor.errors import ConfigError
    from exekutor.serialization import json_backend
    from exekutor.worker import process

    running = []

    def started(worker):
        running.append(worker)
        if runner is not None:
            runner.report(0, f"worker {worker.id} started (pid {os.getpid()})")

    try:
        if pidfile is not None:
            pidfile.write_pid()
        configure_logging(plan.quiet)
        try:
            process.import_applications(plan.imports)
        except process.ApplicationImportError as error:
            return EXIT_USAGE, app_import_failure(error)
        try:
            json_backend(config.get("json_serializer"))  # a bad json_serializer is bad input (status 2)
        except ValueError as error:
            return EXIT_USAGE, str(error)
        # The worker's options are read only now: the application's factory may have set some (Flask's app.config
        # is the code level of the configuration, below files, environment and flags), log_level and quiet too.
        configure_logging(plan.quiet)
        try:
            return process.run(config.worker_options(), on_started=started), None
        except ConfigError as error:
            return EXIT_USAGE, str(error)
        except Exception as error:  # noqa: BLE001 - e.g. the database is unreachable
            what = "the worker failed" if running else "cannot start the worker"
            # Which server it tried, as info says it (host, port, database; never the password).
            where = f" ({database_label()})" if isinstance(error, psycopg2.Error) else ""
            return EXIT_FAILURE, f"{what}{where}: {type(error).__name__}: {error}"
    except process.StopDuringStartUp as stop:
        click.echo(f"exekutor-gevent: {stop}: stopped during start-up", err=True)  # the log may not be set up yet
        return 0, None
    finally:
        if pidfile is not None:
            pidfile.release()


def _report_daemon(runner, plan):
    status, message = runner.wait()
    if status:
        fail(f"{message}; see {plan.logfile}", status)
    click.echo(f"{message} as a daemon (pidfile {plan.pidfile}, log {plan.logfile})")
    return 0


@click.command()
@start_options
def start(**params):
    """Start a worker (in the foreground unless --daemonize)."""
    sys.exit(_launch(_prepare_start(params)))


@click.command()
@start_options
@shutdown_timeout_option
def restart(shutdown_timeout, **params):
    """Stop the daemonized worker of this pidfile/identifier (if any) and start a new one with these options."""
    from exekutor import daemon

    plan = _prepare_start(dict(params, daemonize=True))
    timeout = _shutdown_timeout(shutdown_timeout)
    if daemon.stop([plan.pidfile], timeout, click.echo, missing_ok=True):
        fail("the running worker could not be stopped; not starting a new one", EXIT_FAILURE)
    sys.exit(_launch(plan))


# ---------------------------------------------------------------------------------------------------------------
# stop


def _shutdown_timeout(value):
    """--shutdown-timeout in seconds (None: forever); by default wait_for_termination plus a margin."""
    from exekutor import config

    if value is not None:
        return parse_seconds(value, "--shutdown-timeout", allow_forever=True)
    wait = config.get("wait_for_termination")
    # True waits forever, and so do None/False: the worker then neither waits nor kills, its jobs just finish.
    return None if wait is None or isinstance(wait, bool) else wait + STOP_MARGIN


@click.command()
@config_file_options
@identifier_options
@option("--all", dest="stop_all", is_flag=True,
        help="Stop every daemonized worker with a default pidfile (tmp/pids/exekutor*.pid), or matching --pidfile.")
@shutdown_timeout_option
def stop(configfile, env, identifier, pidfile, stop_all, shutdown_timeout):
    """Stop daemonized workers: SIGTERM, then (after --shutdown-timeout) cancel their jobs, then SIGKILL."""
    from exekutor import config, daemon

    load_config(configfile, env, {"identifier": identifier}, identifier)
    timeout = _shutdown_timeout(shutdown_timeout)
    pattern = pidfile or daemon.DEFAULT_PIDFILE
    if stop_all:
        paths = sorted(glob.glob(daemon.glob_pattern(pattern)))
        if not paths:
            click.echo(f"no daemonized workers (no pidfile matches {daemon.glob_pattern(pattern)})")
    else:
        try:
            paths = [daemon.expand(pattern, config.get("identifier"))]
        except ValueError as error:
            fail(str(error))
    try:
        failures = daemon.stop(paths, timeout, click.echo)
    except OSError as error:  # e.g. not allowed to signal another user's worker
        fail(f"cannot stop the worker: {error}", EXIT_FAILURE)
    sys.exit(EXIT_FAILURE if failures else 0)
