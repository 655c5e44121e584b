"""The `exekutor-gevent` command line: start, stop, restart, info, jobs, queues, schedules, dashboard, cleanup,
migrate, install.

Every command checks all of its input (flags, config files, environment variables) before it does anything:
bad input is one line on stderr and exit status 2, with nothing started, stopped or deleted. Other failures
(the database is unreachable, a worker is already running) exit with status 1.

One module per command (group) in this package, the helpers they share in `common`. A command's module is
imported only when that command runs: `--help` lists the commands from `COMMANDS` below, so that it answers
without importing any of them (tests/test_cli.py checks that each summary is its command's own).
"""
import importlib
import sys

import click

from exekutor.cli.common import EXIT_FAILURE, EXIT_INTERRUPTED, EXIT_USAGE, fail
from exekutor.version import __version__

__all__ = ["main", "COMMANDS", "EXIT_FAILURE", "EXIT_USAGE", "EXIT_INTERRUPTED"]

# name: (module:attribute, the first paragraph of the command's help, which --help shortens)
COMMANDS = {
    "start": ("exekutor.cli.start:start", "Start a worker (in the foreground unless --daemonize)."),
    "restart": ("exekutor.cli.start:restart", "Stop the daemonized worker of this pidfile/identifier (if any) and "
                                              "start a new one with these options."),
    "stop": ("exekutor.cli.start:stop", "Stop daemonized workers: SIGTERM, then (after --shutdown-timeout) cancel "
                                        "their jobs, then SIGKILL."),
    "info": ("exekutor.cli.info:info", "Show the workers per host, the pending jobs per queue and the recent "
                                       "failures."),
    "jobs": ("exekutor.cli.jobs:jobs", "List, show, retry and cancel jobs."),
    "queues": ("exekutor.cli.queues:queues", "List queues with their limits and held-back jobs; pause and resume "
                                             "them."),
    "schedules": ("exekutor.cli.schedules:schedules", "List the recurring jobs with their last and next run."),
    "dashboard": ("exekutor.cli.dashboard:dashboard", "Serve the web dashboard (read-only, on 127.0.0.1:8080, unless "
                                                      "told otherwise)."),
    "cleanup": ("exekutor.cli.cleanup:cleanup", "Delete dead workers and old finished jobs; pending and executing "
                                                "jobs are never deleted."),
    "migrate": ("exekutor.cli.migrate:migrate", "Create or upgrade exekutor's tables (idempotent, safe to run from "
                                                "several hosts at once)."),
    "install": ("exekutor.cli.install:install", "Write a starter config file (default config/exekutor.yml, which "
                                                "start, info, ... read by default)."),
}

# click >= 8.2 raises this for a group called without a command; older versions print the help themselves.
_NO_ARGS_IS_HELP = getattr(click.exceptions, "NoArgsIsHelpError", ())


class Cli(click.Group):
    """The top-level group: usage errors are one line too (click prints a usage block), with exit status 2, and
    the commands of COMMANDS are imported when they run (click's "lazily loading subcommands")."""

    def main(self, args=None, prog_name=None, **extra):
        try:
            status = super().main(args, prog_name or "exekutor-gevent", standalone_mode=False, **extra)
        except _NO_ARGS_IS_HELP as error:  # a bare `exekutor-gevent`: the help, not an error line
            click.echo(error.ctx.get_help(), err=True)
            sys.exit(EXIT_USAGE)
        except click.UsageError as error:
            hint = f" (see '{error.ctx.command_path} --help')" if error.ctx else ""
            fail(error.format_message() + hint)
        except click.ClickException as error:
            fail(error.format_message(), error.exit_code)
        except click.Abort:
            fail("interrupted", EXIT_INTERRUPTED)
        sys.exit(status if isinstance(status, int) else 0)

    def list_commands(self, ctx):
        return sorted({*COMMANDS, *super().list_commands(ctx)})

    def get_command(self, ctx, name):
        if name in self.commands or name not in COMMANDS:
            return super().get_command(ctx, name)
        module, _, attribute = COMMANDS[name][0].partition(":")
        return getattr(importlib.import_module(module), attribute)

    def format_commands(self, ctx, formatter):
        """As click's, from COMMANDS' summaries: listing the commands imports none of them."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names))
        rows = [(name, self._summary(ctx, name, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def _summary(self, ctx, name, limit):
        if name in COMMANDS and name not in self.commands:
            return click.Command(name, help=COMMANDS[name][1]).get_short_help_str(limit)
        return self.get_command(ctx, name).get_short_help_str(limit)


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


@click.group(cls=Cli, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110})
@click.version_option(__version__, prog_name="exekutor-gevent")
def main():
    """exekutor-gevent: a PostgreSQL-backed job queue with a gevent worker."""
    _hide_secrets_from_ps()

