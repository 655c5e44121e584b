"""Flask integration (extra `flask`): `Exekutor(app)`, or `Exekutor()` and `init_app(app)` in an app factory.

- `EXEKUTOR_*` keys of `app.config` set exekutor's options at the code level (`EXEKUTOR_DEFAULT_QUEUE_PRIORITY =
  100` is `exekutor.configure(default_queue_priority=100)`); config files, environment variables and the worker's
  command line still override them. Options are per process: one app per process configures exekutor.
- With Flask-SQLAlchemy (found in `app.extensions`, or given as `db=`): its models become job arguments and
  asynchronous receivers, reloaded in the worker with `db.session`, and `.set(connection=db.session)` enqueues in
  the request's transaction (the job exists if and only if the request commits).
- Jobs run by a worker that loaded the app (`exekutor-gevent start --app myapp:create_app`) run inside its
  application context, pushed for each job and popped after it (Flask-SQLAlchemy removes the job's session then).
- `flask exekutor ...` runs exekutor's commands for this app; `flask exekutor start` (and `restart`) replaces the
  `flask` process with a worker (`python -m exekutor start`) that loads the same app, so that gevent patches the
  process before the app is imported.
"""
import os
import sys

import click
from flask import has_app_context
from flask.cli import AppGroup

from exekutor import config, hooks
from exekutor.errors import ConfigError

__all__ = ["Exekutor", "configure_from", "load_cli_app"]

PREFIX = "EXEKUTOR_"
CLI_APP = "exekutor.contrib.flask:load_cli_app"


_INITIALISED = []  # apps init_app set up in this process (the worker warns when Flask is imported but none is)


def initialised():
    """Whether an app of this process was set up for exekutor (Exekutor(app) or init_app)."""
    return bool(_INITIALISED)


class Exekutor:
    """The Flask extension; `app.extensions["exekutor"]` once initialised.

    db: the Flask-SQLAlchemy extension (default: the one initialised on the app, if any). models_name: the tag of
    its models in job payloads (see `exekutor.contrib.sqlalchemy.register_models`).
    """

    def __init__(self, app=None, db=None, models_name="sqlalchemy"):
        self.app = None
        self.db = db
        self.models_name = models_name
        if app is not None:
            self.init_app(app)

    def init_app(self, app, db=None):
        configure_from(app.config)
        db = db or self.db or _flask_sqlalchemy(app)
        if db is not None:
            from exekutor.contrib.sqlalchemy import register_models

            # The application context scopes db.session, and popping it after each job removes the session.
            register_models(db.Model, db.session, name=self.models_name, remove_after_job=False)
        self.app = app  # the app whose context jobs run in: the last one initialised
        app.extensions["exekutor"] = self
        _INITIALISED.append(app)
        hooks.around_job_execution(self.app_context)
        app.cli.add_command(cli_group())

    def app_context(self, info):
        """around_job_execution hook: run the job in an application context (the active one, if any)."""
        if has_app_context() or self.app is None:
            yield
            return
        with self.app.app_context():
            yield


def configure_from(flask_config):
    """Apply the `EXEKUTOR_*` keys of a Flask config as exekutor options (all or none)."""
    options = {key[len(PREFIX):].lower(): value for key, value in flask_config.items() if key.startswith(PREFIX)}
    try:
        config.configure(**options)
    except ConfigError as error:
        raise ConfigError(str(error).replace(" in code", " in Flask app.config", 1)) from None


def _flask_sqlalchemy(app):
    state = app.extensions.get("sqlalchemy")
    # Flask-SQLAlchemy 3.x keeps the extension itself there, 2.x a state object with .db
    return state if state is None or hasattr(state, "Model") else state.db


# --- `flask exekutor ...` ------------------------------------------------------------------------------------

def cli_group():
    """`flask exekutor`: one command per command of `exekutor-gevent`, its arguments passed on unchanged.

    Commands that start a worker (those taking `--app`: start, restart) become a new worker process that loads
    this app; the others run in the `flask` process.
    """
    from exekutor.cli import main

    group = AppGroup("exekutor", help="exekutor job queue: run workers, migrate, inspect and clean up.")
    context = click.Context(main)
    for name in main.list_commands(context):
        command = main.get_command(context, name)
        starts_worker = any(param.name == "app" for param in command.params)
        group.add_command(_forwarding_command(name, command.get_short_help_str(limit=70),
                                              _exec_with_this_app if starts_worker else _run_in_process))
    return group


def _forwarding_command(name, short_help, forward):
    @click.command(name, short_help=short_help, add_help_option=False,
                   context_settings={"ignore_unknown_options": True, "allow_extra_args": True})
    @click.argument("args", nargs=-1, type=click.UNPROCESSED)
    def command(args):
        forward(name, list(args))

    return command


def _run_in_process(name, args):
    from exekutor.cli import main

    main.main(args=[name, *args], prog_name="flask exekutor")


def _exec_with_this_app(name, args):
    """Become `python -m exekutor NAME --app <this Flask app> ARGS`: same process id, signals reach the worker, and
    gevent patches before the app is imported again."""
    from flask.cli import ScriptInfo

    info = click.get_current_context().find_object(ScriptInfo)
    environ = dict(os.environ)
    if info is not None and info.app_import_path:
        environ["FLASK_APP"] = info.app_import_path
        app_spec = CLI_APP
    elif info is not None and info.create_app is not None:  # a custom FlaskGroup(create_app=...)
        app_spec = f"{info.create_app.__module__}:{info.create_app.__qualname__}"
    else:
        app_spec = CLI_APP  # FLASK_APP, or wsgi.py / app.py in the current directory, as flask found it
    argv = [sys.executable, "-m", "exekutor", name, "--app", app_spec, *args]
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, argv, environ)


def load_cli_app():
    """The app `flask` would load (FLASK_APP, else wsgi.py or app.py in the current directory), for a worker's
    `--app exekutor.contrib.flask:load_cli_app`."""
    from flask.cli import ScriptInfo

    return ScriptInfo(app_import_path=os.environ.get("FLASK_APP")).load_app()
