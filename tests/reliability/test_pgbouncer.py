"""Scenario 5, PgBouncer in transaction pooling mode (Debian's pgbouncer, started here) with the listener off.

Two workers and the load generator share a pool of 3 server connections, so consecutive statements of one
client land on different server sessions: anything exekutor kept in a session (a SET, a prepared statement, a
LISTEN, a temporary table, an advisory lock) would break here. Jobs must flow through polling, every job must
reach one outcome, and PgBouncer must really have multiplexed the clients.
"""

import pytest

from tests.reliability import cluster as clusters
from tests.reliability.support import Load, log, measure, reconcile, scalar, wait_drained, wait_for

pytestmark = pytest.mark.slow

POOL_SIZE = 3
ENV = {"EXEKUTOR_ENABLE_LISTENER": "false", "EXEKUTOR_POLLING_INTERVAL": "0.5", "EXEKUTOR_WORKER_TIMEOUT": "30",
       "EXEKUTOR_HEARTBEAT_INTERVAL": "1"}


@pytest.fixture
def pgbouncer(pg_cluster):
    binary = clusters.pgbouncer_binary()
    if binary is None:
        pytest.skip("pgbouncer is not installed (Debian package pgbouncer; .ci/run installs it)")
    bouncer = clusters.PgBouncer(binary, pg_cluster, pool_size=POOL_SIZE).start()
    yield bouncer
    bouncer.stop()


@pytest.mark.timeout(180)
def test_jobs_flow_through_pgbouncer_in_transaction_mode(pgbouncer, rel):
    url = pgbouncer.url()
    workers = [rel.start_worker(url=url, threads=10, env=ENV) for _ in range(2)]
    # The load generator enqueues through PgBouncer too, in its own transactions (enqueue_many + commit).
    assert scalar(rel.db, "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE '%listener'") == 0
    load = Load(url, rate=150, prefix="bouncer", sleep=0.02, batch=50, interval=0.05).start()
    try:
        wait_for(lambda: scalar(rel.db, "SELECT count(DISTINCT pid) FROM rel_executions") == 2, 30,
                 "both workers to run jobs")
        rate = measure(rel.db, 10, "through PgBouncer")
    finally:
        load.stop()
    wait_drained(rel.db, 60)
    pools = [row for row in pgbouncer.admin("SHOW POOLS") if row["database"] == clusters.DATABASE]
    stats = [row for row in pgbouncer.admin("SHOW STATS") if row["database"] == clusters.DATABASE]
    servers = scalar(rel.db, "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' "
                             "AND application_name NOT LIKE 'reliability%'")
    transactions = int(stats[0]["total_xact_count"]) if stats else 0
    clients = sum(row["cl_active"] + row["cl_waiting"] for row in pools)
    log(f"PgBouncer: {transactions} transactions from {clients} clients over at most {POOL_SIZE} server "
        f"connections (server connections now: {servers})")
    for worker in workers:
        assert worker.proc.poll() is None, worker.output()[-3000:]
        worker.stop()
        output = worker.output()
        for symptom in ("ERROR", "Traceback"):
            assert symptom not in output, f"worker {worker.pid} logged an error behind PgBouncer:\n{output[-3000:]}"
    result = reconcile(rel.db, "PgBouncer transaction mode", load=load)
    log(f"throughput through PgBouncer: {rate:.1f} jobs/s (offered 150/s); load generator errors={load.errors}")
    result.check(failed=0, discarded=0, uncertain_commits=0)
    assert result["enqueued"] > 1000
    assert servers <= POOL_SIZE, f"{servers} server connections for a pool of {POOL_SIZE}"
    assert clients > POOL_SIZE and transactions > 100, "PgBouncer did not multiplex the workers' traffic"
    assert rate > 100, f"jobs did not flow: {rate:.1f}/s for 150/s offered"
