"""What a worker's start-up skips or defers must not change what it does."""
import os
import sys
from importlib import metadata

import pytest

from exekutor.worker import process
from tests.conftest import ROOT


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


@pytest.mark.timeout(60)
def test_a_worker_registers_its_metrics_only_once_something_may_read_them(database_url, db):
    """Without a health check port, prometheus-client is not imported at start; once the application imports it
    (to serve the registry itself), exekutor's families appear there, with the jobs counted before."""
    import subprocess
    import sys

    script = r"""
import sys, time
from gevent import monkey; monkey.patch_all()
import exekutor
from exekutor.worker import Worker
from tests import jobs_app
worker = Worker(min_threads=2, max_threads=2, polling_interval=0.2)
worker.start()
jobs_app.noop.perform_later()
deadline = time.time() + 20
while worker.executor.busy() or worker.completer.written < 1:
    assert time.time() < deadline
    time.sleep(0.05)
assert "prometheus_client" not in sys.modules, "imported at start"
import prometheus_client
while True:
    names = {metric.name for metric in prometheus_client.REGISTRY.collect()}
    if "exekutor_jobs_started" in names:
        break
    assert time.time() < deadline, names
    time.sleep(0.1)
value = prometheus_client.REGISTRY.get_sample_value("exekutor_jobs_started_total", {"queue": "default"})
assert value == 1.0, value
worker.stop(); worker.join(10)
print("ok")
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50,
                            env=dict(os.environ, EXEKUTOR_DATABASE_URL=database_url), cwd=ROOT)
    assert result.stdout.strip().endswith("ok"), result.stdout + result.stderr


def _fake_distribution(root, name, entry_points):
    info = root / f"{name}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)


def test_gevent_plugins_are_found_as_importlib_metadata_finds_them(tmp_path, monkeypatch):
    found = process._gevent_plugins()
    groups = {group for group in metadata.entry_points().groups if group.startswith("gevent.plugins")}
    assert found == {group: [ep.value for ep in metadata.entry_points(group=group)] for group in groups}
    assert "gevent.plugins.monkey.will_patch_all" in found  # gevent declares one of its own
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir(), second.mkdir()
    _fake_distribution(first, "probe_plugin", "[gevent.plugins.monkey.did_patch_all]\nmine = probe_mod:seen [x]\n"
                                              "[console_scripts]\nprobe = probe_mod:main\n")
    _fake_distribution(second, "probe_plugin", "[gevent.plugins.monkey.did_patch_all]\ntwice = probe_mod:other\n")
    monkeypatch.setattr(sys, "path", [str(first), str(second), *sys.path])
    plugins = process._gevent_plugins()
    assert plugins["gevent.plugins.monkey.did_patch_all"] == ["probe_mod:seen [x]"]  # the first of a name wins
    assert plugins == {group: [ep.value for ep in metadata.entry_points(group=group)]
                       for group in set(plugins) | groups}
    archive = tmp_path / "packed.zip"
    archive.write_bytes(b"PK\x05\x06" + b"\0" * 18)
    monkeypatch.setattr(sys, "path", [str(archive), *sys.path])
    assert process._gevent_plugins() is None  # left to importlib.metadata


@pytest.mark.timeout(60)
def test_patching_calls_the_plugins_without_importing_importlib_metadata(tmp_path):
    import subprocess

    _fake_distribution(tmp_path, "probe_plugin", "[gevent.plugins.monkey.did_patch_all]\nmine = probe_mod:seen\n")
    (tmp_path / "probe_mod.py").write_text("CALLS = []\ndef seen(event):\n    CALLS.append(type(event).__name__)\n")
    script = ("import sys\nfrom exekutor.worker import process\nprocess.patch()\nimport probe_mod\n"
              "print(probe_mod.CALLS, 'importlib.metadata' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=50, cwd=ROOT,
                            env=dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT])))
    assert result.stdout.strip() == "['GeventDidPatchAllEvent'] False", result.stdout + result.stderr
