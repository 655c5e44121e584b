"""`exekutor-gevent dashboard`: the dashboard on gevent's WSGI server, for a machine or an SSH tunnel.

It has no login of its own, so it is safe by default: bound to 127.0.0.1, read-only unless `--allow-actions`
(or `dashboard_allow_actions`), arguments hidden unless `--show-arguments`. To put it on a network, mount the
blueprint in an application that has a login instead (docs/dashboard.md).
"""
import ipaddress
import signal

import click

from exekutor.cli.common import (
    EXIT_FAILURE,
    config_options,
    configure_logging,
    database_errors,
    fail,
    load_config,
    option,
)


@click.command()
@option("--host", default="127.0.0.1", show_default=True,
        help="Address to listen on. It has no login: keep it on loopback, or mount the blueprint behind one.")
@option("--port", type=click.IntRange(0, 65535), default=8080, show_default=True,
        help="Port to listen on (0: any free port, printed at start).")
@option("--allow-actions", is_flag=True, default=None, help="Allow retry and cancel (default: read-only).")
@option("--show-arguments", is_flag=True, default=None, help="Show job arguments on job pages (default: hidden).")
@option("--allowed-host", multiple=True, metavar="NAME",
        help="Another host name to answer, besides the bound address and localhost (repeatable; "
             "dashboard_allowed_hosts). Other Host headers get 400: a defence against DNS rebinding.")
@config_options
def dashboard(host, port, allow_actions, show_arguments, allowed_host, configfile, env, database_url):
    """Serve the web dashboard (read-only, on 127.0.0.1:8080, unless told otherwise)."""
    try:
        import flask  # noqa: F401
    except ImportError:
        fail("the dashboard needs Flask: pip install 'exekutor-gevent[dashboard]'", EXIT_FAILURE)
    load_config(configfile, env, {"database_url": database_url, "dashboard_allow_actions": allow_actions,
                                  "dashboard_show_arguments": show_arguments,
                                  "dashboard_allowed_hosts": list(allowed_host) or None})
    from exekutor.worker.process import patch

    patch()  # cooperative sockets and psycopg2: one slow query does not stall the other requests
    configure_logging(quiet=False)  # the dashboard's database errors are logged
    _check_database()
    _serve(host, port)


def _check_database():
    """Fail at start, in one line, rather than on every page: no database, or exekutor's tables missing."""
    from exekutor.dashboard import data

    with database_errors():
        with data.connection() as conn, conn.cursor() as cursor:
            cursor.execute("SELECT 1 FROM exekutor_jobs LIMIT 1")


def _serve(host, port):
    import gevent
    from gevent.pywsgi import WSGIServer

    from exekutor import config
    from exekutor.dashboard.views import create_app

    # The bound address and localhost (a tunnel's browser uses either), with dashboard_allowed_hosts.
    server = WSGIServer((host, port), create_app(allowed_hosts=(host, "localhost")))
    try:
        server.start()
    except OSError as error:
        fail(f"cannot listen on {host}:{port}: {error.strerror or error}", EXIT_FAILURE)
    mode = "actions enabled" if config.get("dashboard_allow_actions") else "read-only"
    shown = f"[{host}]" if ":" in host else host
    click.echo(f"exekutor dashboard on http://{shown}:{server.server_port}/ ({mode}); Ctrl-C stops it", err=True)
    if not _is_loopback(host):
        click.echo("exekutor-gevent: warning: the dashboard has no login and listens beyond this machine; "
                   "anyone who reaches it sees your jobs", err=True)
    for signum in (signal.SIGTERM, signal.SIGINT):
        gevent.signal_handler(signum, server.stop)
    server.serve_forever()


def _is_loopback(host):
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"
