"""Database access: connections, the bounded pool, migrations and the queries exekutor runs."""
from exekutor.db.connection import connect, resolve_url
from exekutor.db.pool import ConnectionPool, default_pool

__all__ = ["connect", "resolve_url", "ConnectionPool", "default_pool"]
