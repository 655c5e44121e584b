"""A small bounded pool of psycopg2 connections.

Threading primitives make it safe for threads in an application and, once the worker has monkeypatched
them, cooperative for greenlets. A connection comes back to the pool only when it is idle and healthy; one
whose user was interrupted (gevent.Timeout, GreenletExit) or broke is closed, never handed to another user; if
the interruption came in the middle of a statement, the statement is cancelled on the server (see
`exekutor.db.connection.cancel_backend`), so it cannot go on holding locks or commit later.
"""
import os
import threading
from contextlib import contextmanager

import psycopg2
import psycopg2.extensions

from exekutor import config
from exekutor.db.connection import cancel_backend, close_quietly, connect, is_usable


class ConnectionPool:
    def __init__(self, size, url=None, application_name=None, autocommit=True, timeout=30):
        self.size = size
        self._connect_args = dict(url=url, application_name=application_name, autocommit=autocommit)
        self._timeout = timeout
        self._slots = threading.BoundedSemaphore(size)
        self._idle = []
        self._lock = threading.Lock()
        self._open = {}  # connection -> its server process id, for cancelling an interrupted statement

    @contextmanager
    def connection(self):
        conn = self._acquire()
        try:
            yield conn
        except Exception:
            self._release(conn, healthy=False)
            raise
        except BaseException:
            # Interrupted mid-use: the protocol state is unknown, so the connection is closed, and a statement
            # it was running is cancelled on the server.
            self._discard(conn, cancel=True)
            raise
        else:
            self._release(conn, healthy=True)

    def _acquire(self):
        if not self._slots.acquire(timeout=self._timeout):
            raise TimeoutError(f"no database connection free in the pool of {self.size} after {self._timeout}s")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                conn = connect(**self._connect_args)
                with self._lock:
                    self._open[conn] = conn.get_backend_pid()
            return conn
        except BaseException:
            self._slots.release()
            raise

    def _release(self, conn, healthy):
        try:
            if not healthy and not conn.closed:
                try:
                    conn.rollback()
                except psycopg2.Error:
                    pass
            if is_usable(conn):
                with self._lock:
                    self._idle.append(conn)
                return
            self._forget(conn)
        finally:
            self._slots.release()

    def _discard(self, conn, cancel=False):
        try:
            running = cancel and _in_statement(conn)
            pid = self._forget(conn)
            if running and pid:
                cancel_backend(self._connect_args["url"], pid, self._connect_args["application_name"])
        finally:
            self._slots.release()

    def _forget(self, conn):
        close_quietly(conn)
        with self._lock:
            return self._open.pop(conn, None)

    def open_count(self):
        with self._lock:
            return len(self._open)

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._forget(conn)


def _in_statement(conn):
    """Whether a statement may still be running on the server for this connection: psycopg2 closes a connection
    whose statement was interrupted under gevent; otherwise the transaction status says."""
    if conn.closed:
        return True
    try:
        return conn.info.transaction_status == psycopg2.extensions.TRANSACTION_STATUS_ACTIVE
    except psycopg2.Error:
        return True


_default = None
_default_pid = None
_default_lock = threading.Lock()


def default_pool():
    """The process's pool for enqueueing without a caller's connection (re-created after a fork), of
    `enqueue_pool_size` connections: in a web server, each process that enqueues opens up to that many."""
    global _default, _default_pid
    with _default_lock:
        if _default is None or _default_pid != os.getpid():
            _default = ConnectionPool(size=config.get("enqueue_pool_size"), autocommit=True)
            _default_pid = os.getpid()
        return _default


def reset_default_pool():
    global _default
    with _default_lock:
        if _default is not None and _default_pid == os.getpid():
            _default.close()
        _default = None
