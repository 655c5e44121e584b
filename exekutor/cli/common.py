"""What every command of `exekutor-gevent` shares: exit statuses, one-line errors, the options both spellings of
which are accepted, the configuration sources, the database's one-line errors.

It imports no command (the commands import it), and nothing heavy at import time: `--help` and a command that
fails on a bad flag never pay for the configuration, YAML or psycopg2.
"""
import contextlib
import logging
import os
import sys

import click

EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
CONFIG_DIR = "config"


def one_line(message):
    from exekutor.display import redact

    # Redacted once more here: a message may quote an argument that holds a database URL.
    return redact(" ".join(str(message).split()))


def fail(message, status=EXIT_USAGE):
    click.echo(f"exekutor-gevent: error: {one_line(message)}", err=True)
    sys.exit(status)


def option(*names, dest=None, **kwargs):
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
    from exekutor.durations import parse_duration

    if allow_forever and str(text).strip().lower() == "forever":
        return None
    try:
        value = parse_duration(text, unit)
    except ValueError:
        value = -1
    if value < 0:
        units = {"s": "seconds", "h": "hours"}[unit]
        forever = ", or 'forever'" if allow_forever else ""
        fail(f"invalid value for {what}: expected {units} or a duration like '90s', '15m', '4h'{forever}, "
             f"got {text!r}")
    return value


# ---------------------------------------------------------------------------------------------------------------
# Configuration


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
        fail(str(error))


_LOGGING = {"level": None}  # the root level configure_logging set last


def configure_logging(quiet):
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


def config_file_options(command):
    # Decorators apply bottom-up: the options show in --help in the reverse order of these lines.
    command = option("--env", "--environment", default=None,
                     help="Environment section of the config files to apply.")(command)
    return option("--configfile", multiple=True, type=click.Path(dir_okay=False),
                  help="YAML or INI config file (repeatable; later wins). Default: config/exekutor.yml and "
                       "config/exekutor.IDENTIFIER.yml, if they exist.")(command)


def config_options(command):
    command = option("--database-url", default=None,
                     help="PostgreSQL URL (overrides config and environment).")(command)
    return config_file_options(command)


def app_import_failure(error):
    """The one-line error of an `--app` that does not import, after its traceback (the user's frames) on stderr:
    the line alone named neither the file nor the line that failed."""
    text = error.traceback()
    if text:
        click.echo(text.rstrip("\n"), err=True)
    return str(error)


# ---------------------------------------------------------------------------------------------------------------
# The database


def database_label():
    """The configured database as messages name it (host, port, database; never the password)."""
    from exekutor.config import configured_database

    return configured_database()


@contextlib.contextmanager
def database_errors():
    """One-line errors for database work: none configured (2), unreachable or not migrated (1)."""
    import psycopg2
    import psycopg2.errors

    from exekutor.errors import ConfigError

    try:
        yield
    except ConfigError as error:
        fail(str(error))
    except psycopg2.errors.UndefinedTable as error:
        fail(f"exekutor's tables are missing in {database_label()} ({pg_message(error)}); run "
             f"'exekutor-gevent migrate'", EXIT_FAILURE)
    except psycopg2.Error as error:
        fail(f"database error ({database_label()}): {pg_message(error)}", EXIT_FAILURE)


def pg_message(error):
    # The server's own message, without the LINE/caret context psycopg2 appends (which may quote our SQL).
    return getattr(error.diag, "message_primary", None) or str(error)


def with_connection(action, autocommit=False, application_name="exekutor-gevent cli"):
    """`action(connection)` on a connection of its own, with one-line errors."""
    from exekutor.db import connect

    with database_errors():
        with contextlib.closing(connect(application_name=application_name, autocommit=autocommit)) as conn:
            return action(conn)
