"""Failover: the primary is stopped hard mid-load and its streaming standby promoted, as Patroni or a managed service
does. Workers and the enqueuer are configured with a multi-host URL (`host=a,b target_session_attrs=read-write`).

They must reach the new primary by themselves (same processes), LISTEN there again, and with synchronous
replication lose no committed job and run none twice while its worker lived. The enqueuer retries an enqueue whose
outcome it could not learn, with the job's tag as its unique key: the retry of a commit that did get in inserts
nothing (docs/deployment.md, "Behind a failover"). With asynchronous replication the test measures what was lost.
"""
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest

from exekutor.enqueue import enqueue_many
from tests.conftest import WorkerProcess
from tests.reliability import cluster as clusters
from tests.reliability import jobs, netns
from tests.reliability.conftest import WORKER_ENV
from tests.reliability.replication import Pair
from tests.reliability.support import CONNECTION_ERRORS, log, query, reconcile, scalar, wait_for
from tests.tcpproxy import TCPProxy

pytestmark = pytest.mark.slow

THREADS = 10
JOB_SECONDS = 0.05
# worker_timeout longer than the failover: the worker's row must not look dead on the new primary.
# What a failover manager takes to give the primary up (Patroni: its TTL, 30 s by default): long enough for the
# worker's reconnect backoff to reach its cap.
PROMOTION_DELAY = 8.0
ASYNC_LAG = 0.02
ENV = dict(WORKER_ENV, EXEKUTOR_WORKER_TIMEOUT="30", EXEKUTOR_HEARTBEAT_INTERVAL="2", EXEKUTOR_POLLING_INTERVAL="30")


@pytest.fixture
def make_pair():
    made, workers = [], []

    def make(synchronous, lag=0.0):
        reason = clusters.PostgresCluster.usable()
        if reason:
            pytest.skip(f"failover: cannot run PostgreSQL clusters of its own: {reason}")
        pair = Pair(clusters.postgres_bindir()[0], synchronous, lag)
        made.append(pair)
        return pair.start(), workers

    yield make
    for worker in workers:
        worker.stop()
        if worker.proc.returncode not in (0, None):
            print(worker.output()[-5000:])
    for pair in made:
        pair.destroy()


def admin(pair, timeout=60):
    """A superuser connection to whichever server is the primary now."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = psycopg2.connect(pair.url(user=clusters.SUPERUSER), connect_timeout=3)
            conn.autocommit = True
            return conn
        except psycopg2.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


class Enqueuer:
    """Enqueues rel.work jobs one by one, each in its own transaction, on a multi-host URL. An enqueue whose commit
    it could not confirm is retried (after reconnecting) with the same tag as its unique key, as an application
    that must not lose a job does."""

    def __init__(self, url, prefix, unique=True):
        self.url, self.prefix, self.unique = url, prefix, unique
        self.acknowledged, self.retried = [], []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._stop.set()
        self._thread.join(60)

    def _loop(self):
        conn, sequence, tag = None, 0, None
        while not self._stop.is_set():
            if tag is None:
                tag, sequence = f"{self.prefix}-{sequence}", sequence + 1
            try:
                if conn is None:
                    conn = psycopg2.connect(self.url, connect_timeout=3, application_name="failover enqueuer")
                job = jobs.work.set(unique_key=tag) if self.unique else jobs.work
                enqueue_many([job.job(tag, sleep=JOB_SECONDS)], connection=conn)
                conn.commit()
                self.acknowledged.append(tag)
                tag = None
                self._stop.wait(0.005)
            except psycopg2.Error:
                self.errors += 1
                self.retried.append(tag)  # the same tag again: its commit may have got in
                if conn is not None:
                    conn.close()
                    conn = None
                self._stop.wait(0.1)


def completed_since(conn, since):
    return scalar(conn, "SELECT count(*) FROM rel_executions WHERE ok AND started_at >= to_timestamp(%s)", (since,))


@pytest.mark.timeout(180)
@pytest.mark.parametrize("synchronous", [True, False], ids=["sync", "async"])
def test_failover_mid_load(make_pair, synchronous):
    # Asynchronously, the standby's stream goes through 20 ms each way: what a network between them would lag.
    pair, workers = make_pair(synchronous, lag=0.0 if synchronous else ASYNC_LAG)
    url = pair.url()
    env = dict(ENV, RELIABILITY_RECORD_URL=url)
    db = admin(pair)
    worker = WorkerProcess(url, ["--threads", str(THREADS)], env=env, apps=("tests.reliability.jobs",))
    workers.append(worker)
    worker.wait_started(db, timeout=60)
    worker_id = worker.worker_id(db)
    enqueuer = Enqueuer(url, "fo").start()
    try:
        wait_for(lambda: completed_since(db, 0) >= 200, 60, "the worker to run jobs on the primary")
        db.close()
        log(f"stopping the primary (immediate), promoting the standby {PROMOTION_DELAY:g}s later")
        if pair.proxy is not None:
            pair.proxy.stop()  # the machine dies: the WAL still on the wire to the standby is lost with it
        pair.primary.stop("immediate")
        stopped = time.time()
        time.sleep(PROMOTION_DELAY)  # the outage (a step of the scenario, not a wait for a condition)
        pair.standby.promote()
        promoted = time.time()
        log(f"promoted {promoted - stopped:.1f}s after the stop")
        db = admin(pair)
        wait_for(lambda: completed_since(db, promoted) >= 100, 60, "the worker to run jobs on the new primary")
        first_job = float(scalar(db, "SELECT min(extract(epoch FROM started_at)) FROM rel_executions "
                                     "WHERE started_at >= to_timestamp(%s)", (promoted,)))
        listening = wait_for(lambda: scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                                "AND query ILIKE 'LISTEN%%'",
                                            (f"exekutor {worker_id[:8]} listener",)), 30,
                             "the listener to LISTEN on the new primary")
    finally:
        enqueuer.stop()
    drained = wait_for(lambda: scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status IN ('p', 'e')") == 0,
                       90, "every job to reach a final outcome")
    all_done = time.time()
    assert drained and listening
    assert worker.proc.poll() is None, "the worker exited"
    assert worker.worker_id(db) == worker_id, "the worker registered again: its row looked dead"
    rows = query(db, "SELECT payload->'args'->>0 FROM exekutor_jobs GROUP BY 1 HAVING count(*) > 1")
    lost = sorted(set(enqueuer.acknowledged) - {row[0] for row in query(
        db, "SELECT payload->'args'->>0 FROM exekutor_jobs")})
    log(f"failover ({'sync' if synchronous else 'async'}): {len(enqueuer.acknowledged)} acknowledged, "
        f"{enqueuer.errors} enqueue errors, retried {len(enqueuer.retried)}, duplicate rows {len(rows)}, "
        f"lost {len(lost)}; first job on the new primary {first_job - promoted:.2f}s after the promotion, "
        f"all done {all_done - promoted:.1f}s after it")
    assert not rows, f"tags with two rows despite their unique key: {rows[:5]}"
    if synchronous:
        result = reconcile(db, "failover (synchronous)", acknowledged=enqueuer.acknowledged)
        # A job whose own connection (its execution record) died with the primary failed of that error: the
        # application's job failed, not exekutor. Any other failure is one.
        causes = query(db, "SELECT DISTINCT e.error->>'type' FROM exekutor_job_errors e JOIN exekutor_jobs j "
                           "ON j.id = e.job_id WHERE j.status = 'f'")
        assert {cause for (cause,) in causes} <= set(CONNECTION_ERRORS), causes
        result.check(discarded=0)
        # The reconnect backoff is capped at 2 s (RECONNECT_BACKOFF): at 10 s the worker sat idle up to 10 s.
        assert first_job - promoted < 5, f"first job {first_job - promoted:.1f}s after the promotion"
    else:
        # What the lag lost (measured, not asserted): acknowledged enqueues, and outcomes (those jobs ran again).
        reconcile(db, "failover (asynchronous, 20 ms lag)", acknowledged=set(enqueuer.acknowledged) - set(lost))
    db.close()


@pytest.mark.timeout(120)
def test_worker_leaves_a_primary_fenced_read_only(make_pair):
    """The old primary stays up but read-only (fenced, as a failover manager may leave it), the standby is promoted.
    Libpq accepts the worker's open connections to the old one as they are: its writes there fail with SQLSTATE
    25006, which must count as a lost connection (pool and listener), so that connecting again finds the new
    primary. A connection kept and retried on the fenced server would stall the worker for good."""
    pair, workers = make_pair(False)
    url = pair.url()
    db = admin(pair)
    worker = WorkerProcess(url, ["--threads", str(THREADS)], env=dict(ENV, RELIABILITY_RECORD_URL=url),
                           apps=("tests.reliability.jobs",))
    workers.append(worker)
    worker.wait_started(db, timeout=60)
    worker_id = worker.worker_id(db)
    enqueuer = Enqueuer(url, "ro").start()
    try:
        wait_for(lambda: completed_since(db, 0) >= 100, 60, "the worker to run jobs on the primary")
        db.close()
        fence = pair.primary.connect(dbname="postgres")
        with fence.cursor() as cursor:
            cursor.execute("ALTER SYSTEM SET default_transaction_read_only = on")
            cursor.execute("SELECT pg_reload_conf()")
        fence.close()
        pair.standby.promote()
        promoted = time.time()
        db = psycopg2.connect(pair.standby.url(user=clusters.SUPERUSER))
        db.autocommit = True
        wait_for(lambda: completed_since(db, promoted) >= 100, 60, "the worker to run jobs on the new primary")
        # Its listener too: it pings a silent connection every 15 s and finds the fenced server read-only.
        wait_for(lambda: scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s "
                                    "AND query ILIKE 'LISTEN%%'", (f"exekutor {worker_id[:8]} listener",)), 40,
                 "the listener to LISTEN on the new primary")
    finally:
        enqueuer.stop()
    wait_for(lambda: scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status IN ('p', 'e')") == 0, 60,
             "every job on the new primary to finish")
    assert worker.proc.poll() is None and worker.worker_id(db) == worker_id
    assert "SQLSTATE 25006" in worker.output() or "read-only" in worker.output()
    db.close()


@pytest.mark.timeout(120)
def test_worker_skips_an_unreachable_first_host(pg_cluster):
    """The first host of the URL answers nothing (an old primary's machine that is gone): each host gets
    connect_timeout of its own, as libpq gives it, so the worker reaches the next one. Bounding the whole list
    by connect_timeout spent it all on the first host, and the worker never connected."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"cannot make an unreachable address: {reason}")
    with netns.blackhole() as address:
        params = psycopg2.extensions.parse_dsn(pg_cluster.url())
        url = psycopg2.extensions.make_dsn(**dict(params, host=f"{address},127.0.0.1",
                                                  port=f"5432,{pg_cluster.port}", target_session_attrs="read-write"))
        db = pg_cluster.connect()
        worker = WorkerProcess(url, ["--threads", "2"], env=dict(ENV, EXEKUTOR_CONNECT_TIMEOUT="2",
                                                                 RELIABILITY_RECORD_URL=pg_cluster.url()),
                               apps=("tests.reliability.jobs",))
        try:
            started = time.monotonic()
            worker.wait_started(db, timeout=60)
            log(f"worker registered {time.monotonic() - started:.1f}s after its start, past an unreachable host")
            with db.cursor() as cursor:
                cursor.execute("TRUNCATE rel_executions")
            enqueue_many([jobs.work.job("past-blackhole")], connection=db)
            wait_for(lambda: scalar(db, "SELECT count(*) FROM rel_executions WHERE tag = 'past-blackhole'"), 30,
                     "the job to run")
        finally:
            worker.stop()
            if worker.proc.returncode:
                print(worker.output()[-5000:])
            db.close()


@pytest.mark.timeout(120)
@pytest.mark.parametrize("unique", [False, True], ids=["plain", "unique_key"])
def test_enqueue_whose_reply_was_lost(make_pair, unique):
    """An enqueue commits on the primary (and, synchronously, on the standby), its reply is lost with the primary,
    the caller retries on the promoted standby. Without a unique key the job is there twice: the commit did get in.
    With the key, the retry is a duplicate of the job that holds it, and inserts nothing."""
    pair, _workers = make_pair(True)
    proxy = TCPProxy("127.0.0.1", pair.primary.port).start()
    try:
        url = psycopg2.extensions.make_dsn(host="127.0.0.1,127.0.0.1", port=f"{proxy.port},{pair.standby.port}",
                                           user=clusters.APP_USER, dbname=clusters.DATABASE,
                                           target_session_attrs="read-write")
        job = jobs.work.set(unique_key="order-42") if unique else jobs.work
        conn = psycopg2.connect(url, connect_timeout=3)
        enqueue_many([job.job("order-42")], connection=conn)
        proxy.hold_replies(None)  # what the server answers from now on never reaches the caller
        outcome = []
        committing = threading.Thread(target=lambda: _commit(conn, outcome), daemon=True)
        committing.start()
        primary = pair.primary.connect()
        wait_for(lambda: scalar(primary, "SELECT count(*) FROM exekutor_jobs"), 20, "the commit on the primary")
        primary.close()
        proxy.cut()  # the reply is lost with the connection
        proxy.stop()  # and the old primary's address refuses connections: the retry goes on to the next host
        pair.primary.stop("immediate")
        pair.standby.promote()
        committing.join(20)
        assert outcome and isinstance(outcome[0], psycopg2.Error), f"the commit did not fail: {outcome}"
        retry = psycopg2.connect(url, connect_timeout=3)  # on the new primary: the proxy's upstream is gone
        (request,) = enqueue_many([job.job("order-42")], connection=retry)
        retry.commit()
        rows = scalar(retry, "SELECT count(*) FROM exekutor_jobs")
        retry.close()
        log(f"enqueue retried after its reply was lost ({'unique key' if unique else 'no key'}): {rows} row(s), "
            f"duplicate={getattr(request, 'duplicate', None)}")
        assert rows == (1 if unique else 2)
        if unique:
            assert request.duplicate
    finally:
        proxy.stop()


def _commit(conn, outcome):
    try:
        conn.commit()
        outcome.append("committed")
    except psycopg2.Error as error:
        outcome.append(error)
