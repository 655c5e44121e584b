"""Opening psycopg2 connections to the configured database.

The URL comes from the configuration (database_url, EXEKUTOR_DATABASE_URL, DATABASE_URL; an empty one is not
set) or, only when none is set and the `embedded` extra is installed, from an embedded PostgreSQL started in a
local data directory (logged once, at INFO).
"""
import random
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
    """Each host of a multi-host URL (`host=a,b`) in turn, each with `timeout` of its own, as libpq does when it
    connects synchronously: one bound for the whole list would spend it all on a first host that does not answer
    (an old primary whose machine is gone) and never try the next (the new primary)."""
    errors = []
    for single in per_host(url):
        try:
            return _green_connect_one(single, kwargs, timeout)
        except psycopg2.OperationalError as error:
            errors.append(str(error).strip())
    if len(errors) == 1:
        raise psycopg2.OperationalError(errors[0])
    raise psycopg2.OperationalError("\n".join(errors))


def _green_connect_one(url, kwargs, timeout):
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


def per_host(url):
    """`url` split into one connection string per host of its `host`/`hostaddr` lists, in order (their `port` list
    paired, or one port for all), shuffled with `load_balance_hosts=random`. As it is: a single-host URL, lists that
    do not pair (libpq says why), and `target_session_attrs=prefer-standby`, whose two passes need the whole list."""
    try:
        params = psycopg2.extensions.parse_dsn(url)
    except psycopg2.ProgrammingError:
        return [url]  # libpq reports it
    hosts = params.get("host", "").split(",")
    addresses = params.get("hostaddr", "").split(",")
    count = max(len(hosts), len(addresses))
    if count == 1 or params.get("target_session_attrs") == "prefer-standby":
        return [url]
    ports = params.get("port", "").split(",")
    if len(ports) == 1:
        ports = ports * count
    if any(len(values) not in (1, count) for values in (hosts, addresses)) or len(ports) != count:
        return [url]
    if len(hosts) == 1:
        hosts = hosts * count
    if len(addresses) == 1:
        addresses = addresses * count
    singles = []
    for host, address, port in zip(hosts, addresses, ports):
        one = dict(params, host=host, hostaddr=address, port=port)
        singles.append(psycopg2.extensions.make_dsn(**{key: value for key, value in one.items() if value}))
    if params.get("load_balance_hosts") == "random":
        random.shuffle(singles)
    return singles


def is_usable(conn):
    """Whether a connection can be handed to the next user as it is."""
    if conn.closed:
        return False
    return conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_IDLE


READ_ONLY_SQL_TRANSACTION = "25006"


def on_read_only_server(error):
    """Whether `error` says the server cannot write (a standby, a primary demoted or fenced read-only after a
    failover): for exekutor's own connections, whose statements never ask for a read-only transaction, that is a
    lost connection. The server that took over is found by connecting again (a multi-host URL with
    `target_session_attrs=read-write` skips read-only servers), never by retrying on this one."""
    return getattr(error, "pgcode", None) == READ_ONLY_SQL_TRANSACTION


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
