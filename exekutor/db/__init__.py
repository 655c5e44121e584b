"""Database access: connections, the bounded pool, migrations and the queries exekutor runs."""
from exekutor.db.connection import connect, resolve_url

__all__ = ["connect", "resolve_url", "ConnectionPool", "default_pool"]


def __getattr__(name):
    # The pool imports gevent: loaded by the first process that asks for it (a worker, an application that enqueues),
    # not by a command that opens one connection and exits.
    if name in ("ConnectionPool", "default_pool"):
        from exekutor.db import pool

        return getattr(pool, name)
    raise AttributeError(f"module 'exekutor.db' has no attribute {name!r}")
