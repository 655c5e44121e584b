"""Partition: one host of two is cut off from PostgreSQL (a network namespace whose link drops every packet) for
2 x worker_timeout while its jobs run long. Its own ownership guard must stop them before the other host, which
presumes it dead after worker_timeout, runs them again: no two runs of a job overlap. The other host carries on
with the short jobs throughout, and the cut-off host rejoins by itself (registers again, runs jobs).

Times compared are the cut-off host's log (when its guard stopped its jobs) and the database's clock (when the
other host started them again): one kernel clock here, as the hosts share the machine.
"""
import os
import time

import psycopg2
import psycopg2.extensions
import pytest

from exekutor.enqueue import enqueue_many
from tests.conftest import WorkerProcess
from tests.reliability import cluster as clusters
from tests.reliability import jobs, netns
from tests.reliability.conftest import WORKER_ENV
from tests.reliability.support import Load, log, query, reconcile, scalar, wait_for

pytestmark = pytest.mark.slow

WORKER_TIMEOUT = 6.0
ENV = dict(WORKER_ENV, EXEKUTOR_WORKER_TIMEOUT=str(WORKER_TIMEOUT), EXEKUTOR_HEARTBEAT_INTERVAL="1",
           EXEKUTOR_CONNECT_TIMEOUT="2")
LONG_JOBS = 4
LONG_SECONDS = 15.0


@pytest.fixture
def cut_host():
    """(host, cluster listening on the host's gateway too, workers list): all removed after the test."""
    reason = netns.unavailable() or clusters.PostgresCluster.usable()
    if reason:
        pytest.skip(f"partition: cannot make a host of its own: {reason}")
    host = netns.Host()
    cluster = clusters.PostgresCluster(clusters.postgres_bindir()[0])
    workers = []
    try:
        host.create()
        cluster.init()
        with open(os.path.join(cluster.data, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write(f"listen_addresses = '127.0.0.1,{host.gateway}'\n")
        with open(os.path.join(cluster.data, "pg_hba.conf"), "a", encoding="utf-8") as hba:
            hba.write(f"host all all {host.address}/32 trust\n")
        cluster.start()
        cluster.setup_database()
        from exekutor.db import migrations

        migrations.migrate(cluster.url())
        conn = psycopg2.connect(cluster.url())
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(jobs.EXECUTIONS_DDL)
        conn.close()
        yield host, cluster, workers
    finally:
        for worker in workers:
            worker.stop()
        host.destroy()
        cluster.destroy()


def trips(worker):
    """Epoch seconds of each time the worker's guard stopped its jobs (from its log's timestamps)."""
    times = []
    for line in worker.output().splitlines():
        if "no heartbeat went through" in line:
            stamp, millis = line[:23].split(",")
            times.append(time.mktime(time.strptime(stamp, "%Y-%m-%d %H:%M:%S")) + int(millis) / 1000)
    return times


@pytest.mark.timeout(150)
def test_a_host_cut_off_for_twice_worker_timeout_stops_its_jobs_before_they_run_elsewhere(cut_host):
    host, cluster, workers = cut_host
    params = psycopg2.extensions.parse_dsn(cluster.url())
    far_url = psycopg2.extensions.make_dsn(**dict(params, host=host.gateway))
    db = cluster.connect()
    cut_off = WorkerProcess(far_url, ["--threads", str(LONG_JOBS)], env=dict(ENV, RELIABILITY_RECORD_URL=far_url),
                            apps=("tests.reliability.jobs",), prefix=host.prefix)
    workers.append(cut_off)
    cut_off.wait_started(db, timeout=60)
    first_id = cut_off.worker_id(db)
    enqueue_many([jobs.long.job(f"long-{i}", LONG_SECONDS) for i in range(LONG_JOBS)], connection=db)
    wait_for(lambda: scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s",
                            (first_id,)) == LONG_JOBS, 30, "the cut-off host to run every long job")
    other = WorkerProcess(cluster.url(), ["--threads", "10"], env=dict(ENV, RELIABILITY_RECORD_URL=cluster.url()),
                          apps=("tests.reliability.jobs",))
    workers.append(other)
    other.wait_started(db, timeout=60)
    load = Load(cluster.url(), rate=40, prefix="short", sleep=0.05).start()
    try:
        wait_for(lambda: scalar(db, "SELECT count(*) FROM rel_executions WHERE tag LIKE 'short-%%' AND ok") >= 20,
                 30, "the other host to run short jobs")
        host.cut()
        cut_at = time.time()
        log(f"host {host.netns} cut off for {2 * WORKER_TIMEOUT:g}s (2 x worker_timeout)")
        time.sleep(2 * WORKER_TIMEOUT)  # the partition itself (a step of the scenario)
        during = scalar(db, "SELECT count(*) FROM rel_executions WHERE tag LIKE 'short-%%' AND ok "
                            "AND finished_at > to_timestamp(%s)", (cut_at,))
        host.join()
        joined = time.time()
        log(f"host rejoined; the other host completed {during} short jobs during the cut")
        wait_for(lambda: scalar(db, "SELECT count(*) FROM rel_executions WHERE tag LIKE 'long-%%' AND ok")
                 == LONG_JOBS, 60, "every long job to complete once")
        try:
            rejoined_id = wait_for(lambda: cut_off.worker_id(db), 30, "the cut-off host to register again")
        except AssertionError as error:
            raise AssertionError(f"{error}\n{cut_off.output()[-6000:]}") from None
        wait_for(lambda: scalar(db, "SELECT count(*) FROM rel_executions WHERE pid = %s AND ok "
                                    "AND started_at > to_timestamp(%s)", (cut_off.pid, joined)), 30,
                 "the cut-off host to run jobs again")
    finally:
        load.stop()
    wait_for(lambda: scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status IN ('p', 'e')") == 0, 60,
             "every job to reach a final outcome")
    stopped = trips(cut_off)
    assert stopped, f"the cut-off host's guard never stopped its jobs:\n{cut_off.output()[-3000:]}"
    runs = query(db, "SELECT tag, pid, ok, extract(epoch FROM started_at)::float FROM rel_executions "
                     "WHERE tag LIKE 'long-%%' ORDER BY tag, started_at")
    stop = stopped[0]
    margins = []
    for i in range(LONG_JOBS):
        mine = [run for run in runs if run[0] == f"long-{i}"]
        first, *again = mine
        assert first[1] == cut_off.pid and not first[2], f"long-{i}: its first run went on: {mine}"
        assert len(again) == 1 and again[0][2] and again[0][1] == other.pid, mine
        margins.append(again[0][3] - stop)
    log(f"partition: guard stopped the cut-off host's {LONG_JOBS} jobs {stop - cut_at:.1f}s after the cut; the other "
        f"host started them again {min(margins):.1f}s to {max(margins):.1f}s later; short jobs during the cut: "
        f"{during}; the cut-off host rejoined as {rejoined_id[:8]} (was {first_id[:8]})")
    assert min(margins) > 0, f"a job ran again before the cut-off host stopped it: {margins}"
    assert during > 0, "the other host did not carry on during the partition"
    reconcile(db, "partition", load=load).check(failed=0, discarded=0)
    db.close()
