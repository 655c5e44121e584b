"""A primary and a streaming standby of the failover scenarios' own: two clusters in temporary directories.

The standby is a `pg_basebackup -R` copy of the primary on a port of its own. `synchronous=True` makes the primary
wait for the standby's flush before a commit returns (`synchronous_standby_names = '*'`, `synchronous_commit = on`):
an acknowledged commit then survives the primary's loss. `promote()` is what a failover manager (Patroni, a managed
service) does once it gave the primary up.
"""
import os

import psycopg2.extensions

from tests.conftest import wait_for
from tests.reliability import cluster as clusters
from tests.reliability.jobs import EXECUTIONS_DDL


class Standby(clusters.PostgresCluster):
    def clone(self, primary):
        self._run(self._bin("pg_basebackup"), "-h", "127.0.0.1", "-p", str(primary.port), "-U", clusters.SUPERUSER,
                  "-D", self.data, "-R", "-X", "stream", "-c", "fast", "--no-sync")
        with open(os.path.join(self.data, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write(f"\n# the standby\nport = {self.port}\nunix_socket_directories = '{self.root}'\n")
        self.version = primary.version
        return self

    def promote(self):
        self._run(self._bin("pg_ctl"), "-D", self.data, "-w", "-t", "60", "promote")


class Pair:
    """The primary and its standby; `url()` is the multi-host URL an application is configured with."""

    def __init__(self, bindir, synchronous, lag=0.0):
        self.primary = clusters.PostgresCluster(bindir)
        self.standby = Standby(bindir)
        self.synchronous = synchronous
        self.lag = lag  # seconds the standby's replication stream is delayed, each way (a network between them)
        self.proxy = None

    def start(self):
        primary = self.primary
        primary.init()
        with open(os.path.join(primary.data, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 5\nsynchronous_commit = on\n")
        primary.start()
        primary.setup_database()
        from exekutor.db import migrations

        migrations.migrate(primary.url())
        self._execute(primary, EXECUTIONS_DDL, user=clusters.APP_USER)  # the jobs' own table, the app's
        self.standby.clone(primary)
        if self.lag:
            from tests.delay_proxy import DelayProxy

            self.proxy = DelayProxy("127.0.0.1", "127.0.0.1", primary.port, self.lag).start()
            with open(os.path.join(self.standby.data, "postgresql.auto.conf"), "a", encoding="utf-8") as conf:
                conf.write(f"primary_conninfo = 'host=127.0.0.1 port={self.proxy.port} user={clusters.SUPERUSER}'\n")
        self.standby.start()
        if self.synchronous:
            # Only now: a synchronous primary without its standby waits for it on every commit.
            self._execute(primary, "ALTER SYSTEM SET synchronous_standby_names = '*'", "SELECT pg_reload_conf()")
        wait_for(self.streaming, 60, "the standby to stream from the primary")
        return self

    @staticmethod
    def _execute(server, *statements, user=clusters.SUPERUSER):
        conn = server.connect(user=user)
        try:
            with conn.cursor() as cursor:
                for statement in statements:
                    cursor.execute(statement)
        finally:
            conn.close()

    def streaming(self):
        conn = self.primary.connect()
        try:
            with conn.cursor() as cursor:
                cursor.execute("SELECT sync_state FROM pg_stat_replication WHERE state = 'streaming'")
                row = cursor.fetchone()
        finally:
            conn.close()
        return row is not None and (row[0] == "sync") == self.synchronous

    def url(self, user=clusters.APP_USER):
        return psycopg2.extensions.make_dsn(host="127.0.0.1,127.0.0.1", port=f"{self.primary.port},{self.standby.port}",
                                            user=user, dbname=clusters.DATABASE, target_session_attrs="read-write")

    def destroy(self):
        try:
            self.standby.destroy()
        finally:
            self.primary.destroy()
            if self.proxy is not None:
                self.proxy.stop()
