import subprocess
import sys
import threading

import psycopg2

from exekutor.db import migrations
from tests.conftest import ROOT, query, scalar


def test_migrate_twice_applies_nothing_the_second_time(database_url, db):
    assert migrations.migrate(database_url) == []
    versions = [v for v, _, _ in migrations.available_migrations()]
    assert [r[0] for r in query(db, "SELECT version FROM exekutor_schema_migrations ORDER BY 1")] == versions


def test_concurrent_migrations_on_a_fresh_database_apply_each_version_once(database_url, db):
    name = "exekutor_migrate_race"
    with db.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    url = psycopg2.extensions.make_dsn(database_url, dbname=name)
    results, errors = [], []

    def run():
        try:
            results.append(migrations.migrate(url))
        except Exception as error:  # noqa: BLE001
            errors.append(error)

    threads = [threading.Thread(target=run) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    try:
        assert errors == []
        versions = [v for v, _, _ in migrations.available_migrations()]
        assert sorted(v for applied in results for v in applied) == versions
        conn = psycopg2.connect(url)
        try:
            assert scalar(conn, "SELECT count(*) FROM exekutor_schema_migrations") == len(versions)
            assert scalar(conn, "SELECT to_regclass('exekutor_jobs') IS NOT NULL")
        finally:
            conn.close()
    finally:
        with db.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_migrate_sql_prints_every_migration_and_applies_cleanly(database_url, db):
    out = subprocess.run([sys.executable, "-m", "exekutor", "migrate", "--sql"], cwd=ROOT, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "CREATE TABLE exekutor_jobs" in out
    assert "exekutor_schema_migrations" in out
    name = "exekutor_migrate_sql"
    with db.cursor() as cursor:
        cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        cursor.execute(f'CREATE DATABASE "{name}"')
    try:
        conn = psycopg2.connect(psycopg2.extensions.make_dsn(database_url, dbname=name))
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(out)
        # What the printed SQL recorded is what migrate() would have applied: nothing left to do.
        assert migrations.pending_migrations(conn) == []
        conn.close()
    finally:
        with db.cursor() as cursor:
            cursor.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def test_schema_has_the_partial_pending_index_and_triggers(db):
    indexdef = scalar(db, "SELECT indexdef FROM pg_indexes WHERE indexname = 'exekutor_jobs_pending_idx'")
    assert "(priority, scheduled_at, enqueued_at)" in indexdef
    assert "WHERE ((status = 'p'::bpchar) AND (blocked_on IS NULL))" in indexdef  # held-back jobs are not walked
    triggers = {r[0] for r in query(db, "SELECT tgname FROM pg_trigger WHERE NOT tgisinternal")}
    assert {"exekutor_jobs_notify_insert", "exekutor_workers_release_jobs"} <= triggers
