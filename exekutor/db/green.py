"""psycopg2 under gevent: the wait callback the worker installs, and what its errors say about connections.

It is psycogreen's loop (poll the connection, wait cooperatively on its socket) with one addition: an
OperationalError raised while polling an *established* connection means the connection itself broke (the server
closed it, the network dropped it), as opposed to an error of the statement (a timeout, a deadlock) or a failed
connect. The callback marks such an error with the server, database and port the connection was to, so the worker
can tell "this job lost its connection to our database" (release the job: not its fault) from anything else (the
job's retry policy decides). See `is_connection_lost`.
"""
import psycopg2
import psycopg2.extensions as extensions
from gevent.socket import wait_read, wait_write

_ESTABLISHED = (extensions.STATUS_READY, extensions.STATUS_BEGIN, extensions.STATUS_PREPARED)
_LOCAL_HOSTS = ("localhost", "127.0.0.1", "::1", "")
# SQLSTATEs of a connection the server is ending: admin_shutdown, crash_shutdown, cannot_connect_now.
_SERVER_ENDING = ("57P01", "57P02", "57P03")


def wait_callback(conn, timeout=None):
    try:
        _wait(conn, timeout)
    except BaseException:
        # psycopg2 closes a connection whose statement was interrupted, but not one interrupted while it connects:
        # nobody holds that one, yet the traceback does (often in a reference cycle, a gevent.Timeout's), so it
        # would stay open on the server until the garbage collector came by.
        if conn.status not in _ESTABLISHED and not conn.closed:
            conn.close()
        raise


def _wait(conn, timeout):
    while True:
        try:
            state = conn.poll()
        except psycopg2.OperationalError as error:
            _mark_lost(conn, error)
            raise
        if state == extensions.POLL_OK:
            return
        if state == extensions.POLL_READ:
            wait_read(conn.fileno(), timeout=timeout)
        elif state == extensions.POLL_WRITE:
            wait_write(conn.fileno(), timeout=timeout)
        else:
            raise psycopg2.OperationalError(f"bad result from poll: {state!r}")


def patch_psycopg():
    """Make psycopg2 cooperative (as psycogreen does), with `wait_callback`; harmless to repeat."""
    extensions.set_wait_callback(wait_callback)


def _mark_lost(conn, error):
    try:
        if conn.status in _ESTABLISHED:
            error.exekutor_lost_connection = server_of(conn)
    except Exception:  # noqa: BLE001 - a connection too broken to describe is just not marked
        pass


def server_of(conn):
    """(host, port, database) of a connection."""
    info = conn.info
    return info.host, info.port, info.dbname


def is_connection_lost(error, own_server=None):
    """Whether `error` means a connection to our database broke (not a statement's error, not a failed connect).

    `own_server` is the worker's (host, port, database); a connection marked as lost to another server, or
    another database, is the job's own business. An unmarked InterfaceError is a closed connection being used
    again; SQLSTATE class 08 and 57P01-57P03 say the server is ending the connection.
    """
    error = _unwrap(error)
    if isinstance(error, psycopg2.InterfaceError):
        return True
    if not isinstance(error, psycopg2.OperationalError):
        return False
    lost = getattr(error, "exekutor_lost_connection", None)
    if lost is not None:
        return own_server is None or same_server(lost, own_server)
    code = error.pgcode or ""
    return code.startswith("08") or code in _SERVER_ENDING


def same_server(one, other):
    (host, port, dbname), (own_host, own_port, own_dbname) = one, other
    if dbname != own_dbname or int(port or 5432) != int(own_port or 5432):
        return False
    return host == own_host or (_is_local(host) and _is_local(own_host))


def _is_local(host):
    return host is None or host in _LOCAL_HOSTS or host.startswith("/")


def _unwrap(error):
    """The psycopg2 error behind an ORM's wrapper (SQLAlchemy's DBAPIError keeps it in `.orig`)."""
    original = getattr(error, "orig", None)
    return original if isinstance(original, psycopg2.Error) else error
