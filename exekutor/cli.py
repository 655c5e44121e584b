"""The `exekutor-gevent` command line."""
import logging
import sys

import click

from exekutor.version import __version__

EXIT_USAGE = 2


def _fail(message):
    click.echo(f"exekutor-gevent: error: {message}", err=True)
    sys.exit(EXIT_USAGE)


def _option(*names, **kwargs):
    """An option accepted in both --dash-case and --snake_case spellings."""
    spellings = []
    for name in names:
        spellings.append(name)
        alternate = "--" + name[2:].replace("-", "_") if "-" in name[2:] else "--" + name[2:].replace("_", "-")
        if alternate != name:
            spellings.append(alternate)
    dest = names[0][2:].replace("-", "_")
    return click.option(*spellings, dest, **kwargs)


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


def load_config(configfile, env, overrides):
    """Apply config files, environment and flags; a bad value exits with status 2 before anything starts."""
    from exekutor import config
    from exekutor.errors import ConfigError

    try:
        config.load(files=list(configfile), env=env, overrides={k: v for k, v in overrides.items() if v is not None})
    except ConfigError as error:
        _fail(str(error))


def _configure_logging(quiet):
    from exekutor import config

    level = logging.ERROR if quiet or config.get("quiet") else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s [%(process)d] %(name)s: %(message)s")


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="exekutor-gevent")
def main():
    """exekutor-gevent: a PostgreSQL-backed job queue with a gevent worker."""


def config_options(command):
    command = _option("--configfile", multiple=True, type=click.Path(dir_okay=False),
                      help="YAML or INI config file (repeatable; later wins).")(command)
    command = _option("--env", default=None, help="Environment section of the config files to apply.")(command)
    command = _option("--database-url", default=None, help="PostgreSQL URL (overrides config and environment).")(
        command)
    return command


@main.command()
@config_options
@_option("--identifier", default=None, help="Identifier shown in the process title and connection names.")
@_option("--queue", multiple=True, help="Queue to work off (repeatable; default: all queues).")
@_option("--threads", default=None, help="Greenlets as MIN:MAX, or N for a fixed pool.")
@_option("--max-threads", type=int, default=None, help="Maximum number of greenlets.")
@_option("--priority", default=None, help="Priority range MIN:MAX of jobs to run (1 is highest).")
@_option("--poll-interval", default=None, help="Seconds between polls (or a duration like 30s, 5m).")
@_option("--app", multiple=True, help="Module defining jobs to import, or module:factory (repeatable).")
@_option("--healthcheck-port", type=int, default=None, help="Port of the healthcheck server.")
@_option("--quiet", is_flag=True, default=None, help="Log errors only.")
def start(configfile, env, database_url, identifier, queue, threads, max_threads, priority, poll_interval, app,
          healthcheck_port, quiet):
    """Start a worker in the foreground."""
    from exekutor.worker import process

    process.patch()
    overrides = {"database_url": database_url, "identifier": identifier, "queues": list(queue) or None,
                 "polling_interval": poll_interval, "healthcheck_port": healthcheck_port, "quiet": quiet,
                 "set_db_connection_name": True}
    try:
        if threads is not None:
            overrides["min_execution_threads"], overrides["max_execution_threads"] = parse_range(threads, "--threads")
        if max_threads is not None:
            overrides["max_execution_threads"] = max_threads
        if priority is not None:
            overrides["min_priority"], overrides["max_priority"] = parse_range(priority, "--priority")
    except ValueError as error:
        _fail(str(error))
    if app:
        overrides["imports"] = list(app)
    load_config(configfile, env, overrides)
    _configure_logging(quiet)
    from exekutor import config
    from exekutor.errors import ConfigError

    try:
        process.import_applications(config.get("imports"))
    except ImportError as error:
        _fail(f"cannot import application module: {error}")
    try:
        sys.exit(process.run(config.worker_options()))
    except ConfigError as error:
        _fail(str(error))


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
    applied = migrations.migrate()
    click.echo(f"applied migrations: {', '.join(map(str, applied))}" if applied else "schema is up to date")


if __name__ == "__main__":
    main()
