"""What a worker's start-up skips or defers must not change what it does."""
from importlib import metadata

import pytest

from exekutor.worker import process


def test_entry_points_are_read_once_per_group_during_patching_and_restored_after():
    original = metadata.entry_points
    with process._entry_points_read_once():
        first = metadata.entry_points(group="gevent.plugins.monkey.will_patch_all")
        again = metadata.entry_points(group="gevent.plugins.monkey.will_patch_all")
        other = metadata.entry_points(group="console_scripts")
        assert again is first  # cached, not read again
        assert sorted(ep.name for ep in other) == sorted(ep.name for ep in original(group="console_scripts"))
        assert "exekutor-gevent" in {ep.name for ep in other}  # what the lookup finds is what it always found
    assert metadata.entry_points is original


def test_entry_points_are_restored_when_patching_fails():
    original = metadata.entry_points
    with pytest.raises(KeyboardInterrupt), process._entry_points_read_once():
        raise KeyboardInterrupt
    assert metadata.entry_points is original


def test_the_worker_finds_missing_migrations_from_the_file_names_alone(db):
    from exekutor.db import migrations

    assert migrations.available_versions() == [version for version, _, _ in migrations.available_migrations()]
    assert migrations.missing_versions(db) == []
    db.autocommit = False
    try:
        # On a connection in a transaction, the check sees it and ends it (as the worker's own check did).
        with db.cursor() as cursor:
            cursor.execute("DELETE FROM exekutor_schema_migrations WHERE version = 12")
        assert migrations.missing_versions(db) == [12]
        with db.cursor() as cursor:
            cursor.execute("DROP TABLE exekutor_schema_migrations")
        assert migrations.missing_versions(db) == migrations.available_versions()
    finally:
        db.rollback()
        db.autocommit = True
    assert migrations.missing_versions(db) == []
