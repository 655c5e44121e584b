"""The peers' side of `python -m benchmarks peers`: their own virtualenv and their own database.

PgQueuer (PyPI `pgqueuer` 1.6.x with asyncpg and uvloop) is installed into benchmarks/.peers-venv (git-ignored),
created with this interpreter's `venv` and `pip` the first time the scenario runs and reused afterwards; nothing
of it enters exekutor's environment. Its schema goes into a database of its own, `exekutor_bench_pgq`, installed
by its own CLI (`pgq install`, the default durable tables: logged, as exekutor's are) and dropped at the end.
"""
import os
import subprocess
import sys

from benchmarks import harness

VENV = os.path.join(os.path.dirname(os.path.abspath(__file__)), ".peers-venv")
PYTHON = os.path.join(VENV, "bin", "python")
# typer < 0.20: with typer 0.29 PgQueuer 1.6.0's `pgq run` fails before it starts (its --log-level parser hands
# the logging set-up a str where it expects its LogLevel enum); 0.19 works.
REQUIREMENTS = ("pgqueuer[asyncpg]>=1.6,<1.7", "uvloop", "typer<0.20")
PGQ_DATABASE = harness.BENCH_DATABASE + "_pgq"
PGQ_TABLES = ("pgqueuer", "pgqueuer_log", "pgqueuer_statistics")


def ensure_venv(say):
    """The virtualenv with PgQueuer in it (created and installed when missing); returns PgQueuer's version."""
    version = _installed_version()
    if version:
        return version
    if not os.path.exists(PYTHON):
        say(f"  creating {os.path.relpath(VENV)} ...")
        subprocess.run([sys.executable, "-m", "venv", VENV], check=True)
    say(f"  installing {', '.join(REQUIREMENTS)} into it ...")
    subprocess.run([PYTHON, "-m", "pip", "install", "--quiet", *REQUIREMENTS], check=True)
    version = _installed_version()
    if not version:
        raise RuntimeError(f"PgQueuer did not install into {VENV}")
    return version


def _installed_version():
    if not os.path.exists(PYTHON):
        return None
    probe = subprocess.run([PYTHON, "-c", "import asyncpg, uvloop, pgqueuer, typer; "
                            "print(pgqueuer.__version__, typer.__version__)"], capture_output=True, text=True)
    if probe.returncode != 0:
        return None
    version, typer = probe.stdout.split()
    return version if tuple(int(p) for p in typer.split(".")[:2]) < (0, 20) else None


def peer_env(url):
    """What the peer's processes read: PgQueuer takes its DSN from PGDSN."""
    return {"PGDSN": url}


class PgqDatabase(harness.BenchDatabase):
    """`exekutor_bench_pgq` with PgQueuer's schema, installed by `pgq install`."""

    def __init__(self, admin):
        super().__init__(admin, PGQ_DATABASE)

    def create(self):
        harness.recreate_database(self.admin, self.name)
        result = subprocess.run([PYTHON, "-m", "pgqueuer", "install"], env=harness.child_env(self.url)
                                | peer_env(self.url), cwd=harness.REPO_ROOT, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"pgq install failed:\n{result.stderr[-2000:]}")
        return self

    def reset(self):
        self.execute(f"TRUNCATE {', '.join(PGQ_TABLES)}")

    def insert_pending(self, count, entrypoint):
        """`count` queued jobs in one INSERT ... SELECT, with the 'queued' log rows PgQueuer's own enqueue writes
        beside them, then VACUUM ANALYZE: the same starting point as exekutor's pre-filled table."""
        self.execute(
            "WITH inserted AS (INSERT INTO pgqueuer (priority, entrypoint, payload, status) "
            "SELECT 0, %s, convert_to(i::text, 'UTF8'), 'queued' FROM generate_series(1, %s) AS i "
            "RETURNING id, entrypoint, priority) "
            "INSERT INTO pgqueuer_log (job_id, status, entrypoint, priority) "
            "SELECT id, 'queued', entrypoint, priority FROM inserted", (entrypoint, count))
        for table in PGQ_TABLES[:2]:
            self.execute(f"VACUUM ANALYZE {table}")

    def unfinished(self):
        # A finished job's row is deleted (its outcome goes to pgqueuer_log in the same statement).
        return self.scalar("SELECT count(*) FROM pgqueuer")
