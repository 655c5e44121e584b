"""Versioned schema migrations, applied under an advisory lock.

Migrations are the numbered SQL files beside this module (`NNNN_name.sql`). `migrate()` takes a session
advisory lock, so two hosts migrating at once apply each migration exactly once; each migration runs in its
own transaction together with the row that records it.
"""
import os
import re

import psycopg2.errors

from exekutor.db.connection import connect

# An arbitrary constant that identifies exekutor's migration lock among the application's advisory locks.
MIGRATION_LOCK_KEY = 0x65786B74_6D696772 & 0x7FFFFFFFFFFFFFFF
VERSIONS_TABLE = "exekutor_schema_migrations"
_FILE_PATTERN = re.compile(r"^(\d{4})_(\w+)\.sql$")

_CREATE_VERSIONS_TABLE = f"""
CREATE TABLE IF NOT EXISTS {VERSIONS_TABLE} (
    version    integer PRIMARY KEY,
    name       text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)"""


def available_migrations():
    """[(version, name, sql)] in order."""
    from importlib import resources

    found = []
    for entry in resources.files("exekutor.db").joinpath("migrations").iterdir():
        match = _FILE_PATTERN.match(entry.name)
        if match:
            found.append((int(match.group(1)), match.group(2), entry.read_text(encoding="utf-8")))
    return sorted(found)


def available_versions():
    """The versions of the migration files, from their names alone (none is read). A worker asks this at its start:
    the directory is listed as it is, without importlib.resources (4 ms of imports), unless the package is not
    a directory (a zip)."""
    directory = os.path.join(os.path.dirname(__file__), "migrations")
    if os.path.isdir(directory):
        names = os.listdir(directory)
    else:
        from importlib import resources

        names = [entry.name for entry in resources.files("exekutor.db").joinpath("migrations").iterdir()]
    return sorted(int(match.group(1)) for match in map(_FILE_PATTERN.match, names) if match)


def missing_versions(conn):
    """The versions not applied in `conn`'s database, in one statement (a worker's start waits for it)."""
    try:
        with conn.cursor() as cursor:
            cursor.execute(f"SELECT version FROM {VERSIONS_TABLE}")
            done = {row[0] for row in cursor.fetchall()}
    except psycopg2.errors.UndefinedTable:
        done = set()
    finally:
        if not conn.autocommit:
            conn.rollback()
    return [version for version in available_versions() if version not in done]


def applied_versions(cursor):
    cursor.execute("SELECT to_regclass(%s) IS NOT NULL", (VERSIONS_TABLE,))
    if not cursor.fetchone()[0]:
        return set()
    cursor.execute(f"SELECT version FROM {VERSIONS_TABLE}")
    return {row[0] for row in cursor.fetchall()}


def pending_migrations(conn):
    with conn.cursor() as cursor:
        done = applied_versions(cursor)
    conn.rollback()
    return [m for m in available_migrations() if m[0] not in done]


def migrate(url=None, conn=None):
    """Apply every migration not applied yet; returns the versions applied by this call."""
    own = conn is None
    conn = conn or connect(url, application_name="exekutor migrate")
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK_KEY,))
            try:
                return _apply_pending(conn, cursor)
            finally:
                cursor.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK_KEY,))
    finally:
        if own:
            conn.close()


def _apply_pending(conn, cursor):
    cursor.execute(_CREATE_VERSIONS_TABLE)
    done = applied_versions(cursor)
    applied = []
    for version, name, sql in available_migrations():
        if version in done:
            continue
        conn.autocommit = False
        try:
            cursor.execute(sql)
            cursor.execute(f"INSERT INTO {VERSIONS_TABLE} (version, name) VALUES (%s, %s)", (version, name))
            conn.commit()
        except BaseException:
            conn.rollback()
            raise
        finally:
            conn.autocommit = True
        applied.append(version)
    return applied


def migration_sql():
    """Every migration as one SQL script, for users who manage migrations with Alembic or Django."""
    parts = [_CREATE_VERSIONS_TABLE.strip() + ";"]
    for version, name, sql in available_migrations():
        parts.append(f"-- migration {version:04d} {name}\n{sql.strip()}\n"
                     f"INSERT INTO {VERSIONS_TABLE} (version, name) VALUES ({version}, '{name}');")
    return "\n\n".join(parts) + "\n"
