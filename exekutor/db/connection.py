"""Opening psycopg2 connections to the configured database.

The URL comes from the configuration (database_url, EXEKUTOR_DATABASE_URL, DATABASE_URL; an empty one is not
set) or, only when none is set and the `embedded` extra is installed, from an embedded PostgreSQL started in a
local data directory (logged once, at INFO).
"""
import threading

import psycopg2
import psycopg2.extensions

from exekutor import config
from exekutor.display import database_label
from exekutor.errors import ConfigError

_resolved_url = None
_resolve_lock = threading.Lock()


def resolve_url():
    """The URL to connect to, starting the embedded server when nothing is configured."""
    global _resolved_url
    url = config.database_url()
    if url:
        return url
    with _resolve_lock:
        if _resolved_url is None:
            from exekutor.db import embedded

            if not embedded.available():
                raise ConfigError(
                    "no database configured: set database_url, EXEKUTOR_DATABASE_URL or DATABASE_URL, "
                    "or install exekutor-gevent[embedded] to run an embedded PostgreSQL"
                )
            _resolved_url = embedded.start()
        return _resolved_url


def connect(url=None, application_name=None, autocommit=False):
    """A new psycopg2 connection; TCP keepalives make a silently dead peer show up as an error.

    Under a wait callback (gevent), psycopg2 connects asynchronously and libpq's connect_timeout does not apply: the
    connect is bounded by the same number of seconds here, and a server that accepts but never answers gives
    "could not connect within Ns to <database>".
    """
    # libpq takes an int of seconds; the option may be up to 100 years, which is as good as forever.
    timeout = min(max(1, int(config.get("connect_timeout"))), 2**31 - 1)
    kwargs = {
        "connect_timeout": timeout,
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    if application_name:
        kwargs["application_name"] = application_name[:63]
    url = url or resolve_url()
    if psycopg2.extensions.get_wait_callback() is None:
        conn = psycopg2.connect(url, **kwargs)
    else:
        conn = _green_connect(url, kwargs, timeout)
    conn.autocommit = autocommit
    return conn


def _green_connect(url, kwargs, timeout):
    import gevent

    timer = gevent.Timeout(timeout)
    timer.start()
    try:
        return psycopg2.connect(url, **kwargs)
    except gevent.Timeout as timeout_error:
        if timeout_error is not timer:
            raise
        raise psycopg2.OperationalError(f"could not connect within {timeout}s to {database_label(url)} "
                                        "(connect_timeout)") from None
    finally:
        timer.close()


def is_usable(conn):
    """Whether a connection can be handed to the next user as it is."""
    if conn.closed:
        return False
    return conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def close_quietly(conn):
    """Close a connection that may be broken; never raises."""
    try:
        conn.close()
    except Exception:  # noqa: BLE001 - the connection is being thrown away anyway
        pass


CANCEL_TIMEOUT = 5.0


def cancel_backend(url, pid, application_name=None):
    """Cancel the statement server process `pid` is running, from a connection of its own.

    A query interrupted under gevent (an execution_timeout, a worker's statement_timeout, a kill) leaves
    psycopg2's connection closed on our side only: the server goes on running the statement, holding its locks,
    and in autocommit mode commits it. libpq's own cancel (`conn.cancel()`) needs the connection psycopg2 has
    already closed, and it blocks the whole process (it holds the GIL) while the server is unreachable, so the
    cancel is `pg_cancel_backend` on a fresh, cooperative connection, bounded by CANCEL_TIMEOUT. True if a
    statement was cancelled.
    """
    import gevent

    conn = None
    try:
        with gevent.Timeout(CANCEL_TIMEOUT):
            conn = connect(url, application_name=application_name, autocommit=True)
            with conn.cursor() as cursor:
                cursor.execute("SELECT pg_cancel_backend(%s)", (pid,))
                return bool(cursor.fetchone()[0])
    except BaseException as error:  # noqa: BLE001 - best effort; the caller is already handling an interruption
        if not isinstance(error, (Exception, gevent.Timeout)):
            raise
        return False
    finally:
        if conn is not None:
            close_quietly(conn)
