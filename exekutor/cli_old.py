"""The `exekutor-gevent` command line: start, stop, restart, info, jobs, schedules, dashboard, cleanup, migrate,
install.

Every command checks all of its input (flags, config files, environment variables) before it does anything:
bad input is one line on stderr and exit status 2, with nothing started, stopped or deleted. Other failures
(the database is unreachable, a worker is already running) exit with status 1.
"""
import contextlib
import glob
import logging
import os
import sys
from typing import NamedTuple

import click

from exekutor.version import __version__

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
# `stop` waits this much longer than the worker's own wait_for_termination before it escalates: the worker
# still has to write its jobs' outcomes and delete its row after the jobs end.
STOP_MARGIN = 30.0
CONFIG_DIR = "config"


def _one_line(message):
    from exekutor.config import redact_url

    # Redacted once more here: a message may quote an argument that holds a database URL.
    return redact_url(" ".join(str(message).split()))


def _fail(message, status=EXIT_USAGE):
    click.echo(f"exekutor-gevent: error: {_one_line(message)}", err=True)
    sys.exit(status)


# click >= 8.2 raises this for a group called without a command; older versions print the help themselves.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class _Cli(click.Group):
    """A click group whose usage errors are one line too (click prints a usage block), with exit status 2."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            status = super().main(args, prog_name or "exekutor-gevent", standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as error:  # a bare `exekutor-gevent`: the help, not an error line
            click.echo(error.ctx.get_help(), err=True)
            sys.exit(EXIT_USAGE)
        except click.UsageError as error:
            hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
            _fail(error.format_message() + hint)
        except click.ClickException as error:
            _fail(error.format_message(), error.exit_code)
        except click.Abort:
            _fail("interrupted", EXIT_INTERRUPTED)
        sys.exit(status if isinstance(status, int) else 0)


def _option(*names, dest=None, **kwargs):
    """An option accepted in both --dash-case and --snake_case spellings."""
    spellings = []
    for name in names:
        spellings.append(name)
        alternate = "--" + name[2:].replace("-", "_") if "-" in name[2:] else "--" + name[2:].replace("_", "-")
        if alternate != name:
            spellings.append(alternate)
    return click.option(*spellings, dest or names[0][2:].replace("-", "_"), **kwargs)


def parse_range(text, what, allow_single=True):
    """'10:200' -> (10, 200); '50' -> (50, 50)."""
    parts = str(text).split(":")
    if len(parts) > 2 or (len(parts) == 1 and not allow_single):
        raise ValueError(f"invalid {what} {text!r}: expected MIN:MAX" + (" or N" if allow_single else ""))
    try:
        low, high = (int(p) for p in (parts if len(parts) == 2 else parts * 2))
    except ValueError:
        raise ValueError(f"invalid {what} {text!r}: expected integers, as MIN:MAX"
                         + (" or N" if allow_single else "")) from None
    if low > high:
        raise ValueError(f"invalid {what} {text!r}: minimum {low} is greater than maximum {high}")
    return low, high


def parse_seconds(text, what, unit="s", allow_forever=False):
    """A flag's duration in `unit` (a number in that unit, or with a unit of its own like '90s', '2h')."""
    from exekutor.config import parse_duration

    if allow_forever and str(text).strip().lower() == "forever":
        return None
    try:
        value = parse_duration(text, unit)
    except ValueError:
        value = -1
    if value < 0:
        units = {"s": "seconds", "h": "hours"}[unit]
        forever = ", or 'forever'" if allow_forever else ""
        _fail(f"invalid value for {what}: expected {units} or a duration like '90s', '15m', '4h'{forever}, "
              f"got {text!r}")
    return value


def default_config_files(identifier=None):
    """Without --configfile: config/exekutor.yml (or .yaml, .ini), then config/exekutor.IDENTIFIER.yml (...),
    those that exist, as the Ruby original does."""
    names = ["exekutor"] + ([f"exekutor.{identifier}"] if identifier else [])
    found = []
    for name in names:
        candidates = [os.path.join(CONFIG_DIR, f"{name}.{ext}") for ext in ("yml", "yaml", "ini")]
        found += [path for path in candidates if os.path.isfile(path)][:1]
    return found


def load_config(configfile, env, overrides, identifier=None):
    """Apply config files, environment and flags; a bad value exits with status 2 before anything starts."""
    from exekutor import config
    from exekutor.errors import ConfigError

    identifier = identifier or os.environ.get("EXEKUTOR_IDENTIFIER")
    try:
        config.load(files=list(configfile) or default_config_files(identifier), env=env,
                    overrides={k: v for k, v in overrides.items() if v is not None})
    except ConfigError as error:
        _fail(str(error))


_LOGGING = {"level": None}  # the root level _configure_logging set last


def _configure_logging(quiet):
    """The worker's console log: `quiet` (errors only) wins over `log_level`. Called again once the application
    was imported, as an app factory may set them (Flask's app.config); only a change is applied then, so that
    an application that configures logging itself keeps its level otherwise."""
    from exekutor import config

    level = logging.ERROR if quiet or config.get("quiet") else logging.getLevelName(config.get("log_level").upper())
    if level == _LOGGING["level"]:
        return
    logging.basicConfig(format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")  # once
    logging.getLogger().setLevel(level)
    _LOGGING["level"] = level


def _hide_secrets_from_ps():
    """ps shows argv, which may hold --database-url with its password: then show the arguments redacted (a
    worker replaces this title with its own as soon as it exists). Otherwise the title is left alone, also
    for a program that runs this CLI in-process."""
    from exekutor.display import redact, remember

    arguments = sys.argv[1:]
    for before, arg in zip([None, *arguments], arguments):
        if before in ("--database-url", "--database_url"):
            remember(arg)
        elif arg.startswith(("--database-url=", "--database_url=")):
            remember(arg.partition("=")[2])
    redacted = [redact(arg) for arg in arguments]
    if redacted != arguments:
        from setproctitle import setproctitle

        setproctitle(" ".join(["exekutor-gevent", *redacted]))


@click.group(cls=_Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="exekutor-gevent")
def main():
    """exekutor-gevent: a PostgreSQL-backed job queue with a gevent worker."""
    _hide_secrets_from_ps()


# ---------------------------------------------------------------------------------------------------------------
# Shared options


def config_file_options(command):
    # Decorators apply bottom-up: the options show in --help in the reverse order of these lines.
    command = _option("--env", "--environment", default=None,
                      help="Environment section of the config files to apply.")(command)
    return _option("--configfile", multiple=True, type=click.Path(dir_okay=False),
                   help="YAML or INI config file (repeatable; later wins). Default: config/exekutor.yml and "
                        "config/exekutor.IDENTIFIER.yml, if they exist.")(command)


def config_options(command):
    command = _option("--database-url", default=None,
                      help="PostgreSQL URL (overrides config and environment).")(command)
    return config_file_options(command)


def identifier_options(command):
    command = _option("--pidfile", "--pid", default=None,
                      help="Pidfile path; %{identifier} is replaced. Default: tmp/pids/exekutor[.IDENTIFIER].pid "
                           "(start: with --daemonize only).")(command)
    return _option("--identifier", "--id", default=None,
                   help="Name of the worker: shown by info and in the process title, part of the pidfile "
                        "name.")(command)


def start_options(command):
    for decorator in reversed([
        config_options,
        identifier_options,
        _option("--daemonize", "--daemon", is_flag=True, default=False,
                help="Run in the background; returns once the worker runs."),
        _option("--logfile", default=None,
                help="Where a daemonized worker logs; %{identifier} is replaced. Default: "
                     "log/exekutor[.IDENTIFIER].log."),
        _option("--queue", multiple=True, help="Queue to work off (repeatable; default: all queues)."),
        _option("--threads", default=None, help="Greenlets as MIN:MAX, or N for a fixed pool."),
        _option("--max-threads", type=int, default=None, help="Maximum number of greenlets."),
        _option("--priority", default=None, help="Priorities MIN:MAX (or N) of the jobs to run; 1 is highest."),
        _option("--poll-interval", default=None, help="Seconds between polls (or a duration like 30s, 5m)."),
        _option("--app", multiple=True, help="Module defining jobs to import, or module:factory (repeatable)."),
        _option("--healthcheck-port", type=int, default=None, help="Port of the healthcheck server."),
        _option("--quiet", is_flag=True, default=None, help="Log errors only."),
        _option("--log-level", default=None, metavar="LEVEL",
                help="Level of the log: debug, info (the default), warning or error."),
    ]):
        command = decorator(command)
    return command


def shutdown_timeout_option(command):
    return _option("--shutdown-timeout", "--timeout", default=None,
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
        _fail(str(error))
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
        _fail(str(error))
    return StartPlan(config.get("imports"), pidfile, logfile, daemonize, bool(params["quiet"]))


def _open_log(path):
    from exekutor import daemon

    try:
        return daemon.open_log(path)  # never through a symlink; created 0600
    except OSError as error:
        _fail(f"cannot open log file {path}: {error.strerror}")


def _acquire_pidfile(path):
    from exekutor import daemon

    try:
        pidfile = daemon.Pidfile(path).acquire()
    except daemon.AlreadyRunning as error:
        _fail(str(error), EXIT_FAILURE)
    except OSError as error:
        _fail(f"cannot write pidfile {path}: {error.strerror}")
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
        click.echo(f"exekutor-gevent: error: {_one_line(error)}", err=True)  # in a daemon: to its log file
    if runner is not None:
        runner.report(status, _one_line(error) if error else "the worker stopped")
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
        _configure_logging(plan.quiet)
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
        _configure_logging(plan.quiet)
        try:
            return process.run(config.worker_options(), on_started=started), None
        except ConfigError as error:
            return EXIT_USAGE, str(error)
        except Exception as error:  # noqa: BLE001 - e.g. the database is unreachable
            what = "the worker failed" if running else "cannot start the worker"
            # Which server it tried, as info says it (host, port, database; never the password).
            where = f" ({_database_label()})" if isinstance(error, psycopg2.Error) else ""
            return EXIT_FAILURE, f"{what}{where}: {type(error).__name__}: {error}"
    except process.StopDuringStartUp as stop:
        click.echo(f"exekutor-gevent: {stop}: stopped during start-up", err=True)  # the log may not be set up yet
        return 0, None
    finally:
        if pidfile is not None:
            pidfile.release()


def app_import_failure(error):
    """The one-line error of an `--app` that does not import, after its traceback (the user's frames) on stderr:
    the line alone named neither the file nor the line that failed."""
    text = error.traceback()
    if text:
        click.echo(text.rstrip("\n"), err=True)
    return str(error)


def _report_daemon(runner, plan):
    status, message = runner.wait()
    if status:
        _fail(f"{message}; see {plan.logfile}", status)
    click.echo(f"{message} as a daemon (pidfile {plan.pidfile}, log {plan.logfile})")
    return 0


@main.command()
@start_options
def start(**params):
    """Start a worker (in the foreground unless --daemonize)."""
    sys.exit(_launch(_prepare_start(params)))


@main.command()
@start_options
@shutdown_timeout_option
def restart(shutdown_timeout, **params):
    """Stop the daemonized worker of this pidfile/identifier (if any) and start a new one with these options."""
    from exekutor import daemon

    plan = _prepare_start(dict(params, daemonize=True))
    timeout = _shutdown_timeout(shutdown_timeout)
    if daemon.stop([plan.pidfile], timeout, click.echo, missing_ok=True):
        _fail("the running worker could not be stopped; not starting a new one", EXIT_FAILURE)
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


@main.command()
@config_file_options
@identifier_options
@_option("--all", dest="stop_all", is_flag=True,
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
            _fail(str(error))
    try:
        failures = daemon.stop(paths, timeout, click.echo)
    except OSError as error:  # e.g. not allowed to signal another user's worker
        _fail(f"cannot stop the worker: {error}", EXIT_FAILURE)
    sys.exit(EXIT_FAILURE if failures else 0)


# ---------------------------------------------------------------------------------------------------------------
# info, cleanup, migrate


def _database_label():
    from exekutor.display import configured_database

    return configured_database()


@contextlib.contextmanager
def _database_errors():
    """One-line errors for database work: none configured (2), unreachable or not migrated (1)."""
    import psycopg2
    import psycopg2.errors

    from exekutor.errors import ConfigError

    try:
        yield
    except ConfigError as error:
        _fail(str(error))
    except psycopg2.errors.UndefinedTable as error:
        _fail(f"exekutor's tables are missing in {_database_label()} ({_pg_message(error)}); run "
              f"'exekutor-gevent migrate'", EXIT_FAILURE)
    except psycopg2.Error as error:
        _fail(f"database error ({_database_label()}): {_pg_message(error)}", EXIT_FAILURE)


def _pg_message(error):
    # The server's own message, without the LINE/caret context psycopg2 appends (which may quote our SQL).
    return getattr(error.diag, "message_primary", None) or str(error)


def _with_connection(action, autocommit=False):
    """`action(connection)` on a connection of its own, with one-line errors."""
    from exekutor.db import connect

    with _database_errors():
        with contextlib.closing(connect(application_name="exekutor-gevent cli", autocommit=autocommit)) as conn:
            return action(conn)


@main.command()
@config_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON for scripts instead of tables.")
@_option("--since", default=None, help="Show the failures of this period (24h, 90m, 7d; default 24h).")
def info(configfile, env, database_url, as_json, since):
    """Show the workers per host, the pending jobs per queue and the recent failures."""
    from exekutor import info as report

    load_config(configfile, env, {"database_url": database_url})
    seconds = parse_seconds(since, "--since", unit="h") * 3600 if since else report.FAILURES_SINCE
    if seconds > report.MAX_FAILURES_SINCE:
        _fail(f"invalid value for --since: {since!r} is longer than 100 years")
    data = _with_connection(lambda conn: report.collect(conn, seconds))
    if as_json:
        click.echo(report.to_json(data, _database_label()))
        return
    # click.echo drops the styles unless stdout is a terminal; NO_COLOR (no-color.org) drops them always.
    color = False if os.environ.get("NO_COLOR") else None
    for line in report.render(data, _database_label()):
        click.echo(line, color=color)


@main.command()
@click.argument("what", type=click.Choice(["all", "jobs", "workers"]), default="all")
@config_options
@_option("--timeout", default=None,
         help="Hours (or a duration like 90m, 2d) for both workers and jobs, unless given specifically below.")
@_option("--worker-timeout", default=None,
         help="Delete workers without a heartbeat for this many hours (default 4).")
@_option("--job-timeout", default=None,
         help="Delete finished jobs scheduled and finished this many hours ago (default 48).")
@_option("--job-status", multiple=True,
         help="Only jobs with this status: completed, failed, discarded (repeatable; default all three).")
@_option("--quiet", is_flag=True, default=False, help="Print nothing.")
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
        _fail(f"invalid value for --job-status: {error}")
    say = (lambda message: None) if quiet else click.echo
    cleaner = purge.Cleanup()
    with _database_errors():
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
        _fail(f"invalid worker timeout: {error}")
    say(f"workers: deleted {len(workers)} (no heartbeat for over {_hours(hours)})")
    for worker in workers:
        say(f"  {worker['id']} on {worker['hostname']} (pid {worker['pid']}, identifier "
            f"{worker['identifier'] or '-'}, last heartbeat {worker['last_heartbeat_at']:%Y-%m-%d %H:%M:%S %Z})")


@main.command()
@config_options
@click.option("--sql", is_flag=True, help="Print the migrations as SQL instead of applying them.")
def migrate(configfile, env, database_url, sql):
    """Create or upgrade exekutor's tables (idempotent, safe to run from several hosts at once)."""
    from exekutor.db import migrations

    if sql:
        click.echo(migrations.migration_sql(), nl=False)
        return
    load_config(configfile, env, {"database_url": database_url})
    # Which database first, before connecting: migrating the wrong one (the embedded server because a variable
    # was not exported) must be obvious. On stderr, so that stdout stays the one line of the result.
    click.echo(f"migrating exekutor's tables in {_migrate_target()}", err=True)
    applied = _with_connection(lambda conn: migrations.migrate(conn=conn))
    click.echo(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema is up to date")


def _migrate_target():
    from exekutor import config
    from exekutor.db import embedded

    if config.database_url():
        return _database_label()
    return f"{_database_label()} in {embedded.data_dir()}"


# ---------------------------------------------------------------------------------------------------------------
# install


@main.command()
@click.argument("path", default=os.path.join(CONFIG_DIR, "exekutor.yml"), type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def install(path, force):
    """Write a starter config file (default config/exekutor.yml, which start, info, ... read by default)."""
    if os.path.exists(path) and not force:
        _fail(f"{path} already exists; use --force to overwrite it", EXIT_FAILURE)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as file:
            file.write(STARTER_CONFIG)
    except OSError as error:
        _fail(f"cannot write {path}: {error.strerror}", EXIT_FAILURE)
    click.echo(f"wrote {path}\nnext: set EXEKUTOR_DATABASE_URL, run 'exekutor-gevent migrate', then "
          f"'exekutor-gevent start --app YOUR.JOBS.MODULE'")


# The starter config; conf/exekutor.yml is this text (a test keeps them equal).
STARTER_CONFIG = """\
# exekutor-gevent configuration (written by `exekutor-gevent install`).
#
# Every option is documented in docs/configuration.md. Precedence, lowest to highest: defaults < this file
# (later --configfile files win) < EXEKUTOR_* environment variables < command-line flags.
# Durations are seconds unless they carry a unit: 500ms, 90s, 15m, 4h.
exekutor:
  # The database. Better left out of this file: EXEKUTOR_DATABASE_URL or DATABASE_URL from the environment
  # are used when it is not set here, which keeps the password out of version control.
  # database_url: postgresql://app@localhost/app

  # Modules that define your jobs, imported by the worker when it starts (like --app).
  # imports: [myapp.jobs]

  # Queues this worker takes jobs from, and the priorities (1 is the highest); unset means all (like --queue
  # and --priority).
  # queues: [default, mail]
  # min_priority: 1
  # max_priority: 32767

  # Greenlets that run jobs: kept even when idle, and at most (like --threads 1:100).
  min_execution_threads: 1
  max_execution_threads: 100
  max_execution_thread_idletime: 60s

  # New jobs are picked up at once through LISTEN/NOTIFY; polling is the safety net. Behind a PgBouncer in
  # transaction pooling mode, LISTEN does not work: set enable_listener: false and poll more often.
  enable_listener: true
  polling_interval: 60s
  polling_jitter: 0.1

  # On stop (SIGTERM), how long running jobs may finish before they are cancelled and put back to pending.
  wait_for_termination: 2m

  # Workers heartbeat (from a thread of their own, whatever the jobs do); one silent for worker_timeout is
  # presumed dead and its jobs run again elsewhere, at most max_job_rescues times.
  heartbeat_interval: 12s
  worker_timeout: 1m
  max_job_rescues: 3

  # A job that blocks the event loop (CPU work, a blocking C call) longer than this is interrupted and fails.
  blocking_timeout: 2m

  # Name the worker's connections in pg_stat_activity.
  set_db_connection_name: true

  # HTTP health checks (/ready, /live, /threads, /metrics); unset means no server.
  # healthcheck_port: 9090
  # healthcheck_host: 127.0.0.1

  # Keep finished jobs for inspection; `exekutor-gevent cleanup` deletes old ones.
  delete_completed_jobs: false
  delete_failed_jobs: false
  delete_discarded_jobs: false

# Values for one environment, chosen with --env production, override the ones above.
production:
  exekutor:
    max_execution_threads: 200
    polling_interval: 30s
"""


# ---------------------------------------------------------------------------------------------------------------
# jobs, queues, dashboard, schedules: modules of their own, registered last since they use the helpers above

from exekutor.dashboard.command import dashboard as _dashboard_command  # noqa: E402
from exekutor.jobs_command import jobs as _jobs_group  # noqa: E402
from exekutor.queues_command import queues as _queues_group  # noqa: E402
from exekutor.schedules_command import schedules as _schedules_command  # noqa: E402

main.add_command(_jobs_group, "jobs")
main.add_command(_queues_group, "queues")
main.add_command(_dashboard_command, "dashboard")
main.add_command(_schedules_command, "schedules")
