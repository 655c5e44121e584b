"""`exekutor-gevent install [PATH] [--force]`: write a starter config file."""
import os

import click

from exekutor.cli.common import CONFIG_DIR, EXIT_FAILURE, fail


@click.command()
@click.argument("path", default=os.path.join(CONFIG_DIR, "exekutor.yml"), type=click.Path(dir_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing file.")
def install(path, force):
    """Write a starter config file (default config/exekutor.yml, which start, info, ... read by default)."""
    if os.path.exists(path) and not force:
        fail(f"{path} already exists; use --force to overwrite it", EXIT_FAILURE)
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "w", encoding="utf-8") as file:
            file.write(STARTER_CONFIG)
    except OSError as error:
        fail(f"cannot write {path}: {error.strerror}", EXIT_FAILURE)
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
