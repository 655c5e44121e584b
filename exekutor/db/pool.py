"""A small bounded pool of psycopg2 connections.

Safe for threads in an application and, under gevent's monkeypatching, cooperative for greenlets. A connection
comes back to the pool only when it is idle and healthy; one whose user was interrupted (gevent.Timeout,
GreenletExit, a cancel) or broke is closed, never handed to another user; if the interruption came in the middle
of a statement, the statement is cancelled on the server (see `exekutor.db.connection.cancel_backend`), so it
cannot go on holding locks or commit later.

Under gevent an exception can be thrown into a greenlet wherever it switches, so no interruption may cost a slot
or a connection: a wait for a slot that is interrupted has taken none (gevent's semaphore takes it only after the
wait, with no switch in between), and giving one back never switches before its bookkeeping is done: the pool's
lock is a native one held only around list and dict operations, a semaphore's release never blocks, and the one
thing that switches on the way back (a rollback, a cancel) is finished off, or handed to a greenlet of its own,
whatever interrupts it.
"""
import os
import threading
from contextlib import contextmanager

import gevent
import psycopg2
import psycopg2.extensions
from gevent import lock as green_lock
from gevent import monkey

from exekutor import config
from exekutor.db.connection import cancel_backend, close_quietly, connect, is_usable, on_read_only_server


class ConnectionPool:
    def __init__(self, size, url=None, application_name=None, autocommit=True, timeout=30):
        self.size = size
        self._connect_args = dict(url=url, application_name=application_name, autocommit=autocommit)
        self._timeout = timeout
        # Chosen when the pool is made: threading's semaphore is made of gevent's locks once threading is
        # monkeypatched, and its release waits for one of them, so it could switch (and be interrupted) before
        # giving the slot back. gevent's own never switches in release.
        self._green = monkey.is_module_patched("threading")
        self._slots = (green_lock.BoundedSemaphore if self._green else threading.BoundedSemaphore)(size)
        self._idle = []
        self._lock = monkey.get_original("threading", "Lock")()  # never held across a switch: cannot block one
        self._open = {}  # connection -> its server process id, for cancelling an interrupted statement

    @contextmanager
    def connection(self):
        conn = self._acquire()
        try:
            yield conn
        except Exception as error:
            if on_read_only_server(error):
                self._discard(conn)  # as a lost connection: the next one may find the server that took over
            else:
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
        # An interrupted wait raises before taking a slot; from its return to the `try` below nothing switches.
        if not self._slots.acquire(timeout=self._timeout):
            raise TimeoutError(f"no database connection free in the pool of {self.size} after {self._timeout}s")
        try:
            with self._lock:
                conn = self._idle.pop() if self._idle else None
            if conn is None or conn.closed:
                if conn is not None:
                    self._forget(conn)
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
        finally:
            # Also when the rollback was interrupted: the connection is then mid-protocol, so not usable.
            self._settle(conn)

    def _settle(self, conn):
        """The connection back to the idle list if usable, else closed; then its slot. Never switches."""
        try:
            if is_usable(conn):
                with self._lock:
                    self._idle.append(conn)
            else:
                self._forget(conn)
        finally:
            self._slots.release()

    def _discard(self, conn, cancel=False):
        running = cancel and _in_statement(conn)
        pid = self._forget(conn)
        if not (running and pid):
            self._slots.release()
        elif self._green:
            # The cancel switches: in a greenlet of its own, a second interruption of this one (a kill while
            # it waits) cannot stop it, and its slot comes back when the statement is gone, not before.
            gevent.spawn(self._cancel_then_release, pid).join()
        else:
            self._cancel_then_release(pid)

    def _cancel_then_release(self, pid):
        try:
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
