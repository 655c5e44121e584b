"""Prometheus metrics at /metrics of real workers: parsed as Prometheus text, counters moving as jobs run."""
import datetime as dt
import sys
import uuid

import pytest

import exekutor
from exekutor.errors import ConfigError
from tests import health_jobs, jobs_app
from tests.conftest import query, wait_for
from tests.health_support import get, metric, metric_values, worker_starter
from tests.tcpproxy import TCPProxy


@pytest.fixture
def health_worker(start_worker):
    return worker_starter(start_worker)


def finished(db, total):
    def check():
        done = query(db, "SELECT count(*) FROM exekutor_jobs WHERE status IN ('c', 'f', 'd')")[0][0]
        return done == total
    return check


@pytest.mark.timeout(90)
def test_counters_and_histograms_move_as_jobs_run(health_worker, db):
    worker = health_worker("--threads", "5", "--queue", "mail", "--queue", "default",
                           "--poll-interval", "1")
    before = metric_values(worker.port)
    assert metric(before, "exekutor_jobs_started_total", queue="mail") == 0
    assert metric(before, "exekutor_greenlets_free") == 5

    exekutor.enqueue_many([jobs_app.noop.set(queue="mail").job() for _ in range(3)] + [
        health_jobs.fails.job(),
        health_jobs.discarded.job(),
        health_jobs.slow.job(),  # execution_timeout
        health_jobs.retried.job(),  # fails, retried once, then fails for good
        # Due a minute before its enqueue: it has waited past its queue_timeout.
        health_jobs.sleep.set(wait_until=dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1),
                              queue_timeout=0.5).job(0),
    ])
    wait_for(finished(db, 8), 30, message="8 jobs to finish")
    values = wait_for(lambda: (lambda v: metric(v, "exekutor_jobs_failed_total", queue="default") == 2 and v)(
        metric_values(worker.port)), 10, message="the last outcome in the metrics")

    assert metric(values, "exekutor_jobs_started_total", queue="mail") == 3
    assert metric(values, "exekutor_jobs_completed_total", queue="mail") == 3
    assert metric(values, "exekutor_job_latency_seconds_count", queue="mail") == 3
    assert metric(values, "exekutor_job_runtime_seconds_count", queue="mail") == 3
    assert metric(values, "exekutor_job_latency_seconds_bucket", queue="mail", le="+Inf") == 3
    # default: fails, discarded, slow, retried twice, queue-timed-out sleep
    assert metric(values, "exekutor_jobs_started_total", queue="default") == 6
    assert metric(values, "exekutor_jobs_failed_total", queue="default") == 2
    assert metric(values, "exekutor_jobs_retried_total", queue="default") == 1
    assert metric(values, "exekutor_jobs_discarded_total", queue="default") == 3
    assert metric(values, "exekutor_jobs_timed_out_total", queue="default", timeout="execution") == 1
    assert metric(values, "exekutor_jobs_timed_out_total", queue="default", timeout="queue") == 1
    assert metric(values, "exekutor_job_runtime_seconds_count", queue="default") == 5  # not the queue timeout
    assert metric(values, "exekutor_jobs_completed_total", queue="default") == 0
    assert metric(values, "exekutor_greenlets_busy") == 0 and metric(values, "exekutor_greenlets_free") == 5
    assert metric(values, "exekutor_outcomes_unwritten") == 0
    assert 0 <= metric(values, "exekutor_heartbeat_age_seconds") < 60
    assert metric(values, "exekutor_completion_statements_total") >= 1
    assert metric(values, "exekutor_completion_statement_seconds_total") > 0
    assert metric(values, "exekutor_reservation_statements_total") >= 1
    assert metric(values, "exekutor_reservation_statement_seconds_total") > 0


@pytest.mark.timeout(60)
def test_gauges_show_busy_greenlets_and_pending_jobs_per_queue(health_worker):
    worker = health_worker("--threads", "4", "--queue", "default", env={"EXEKUTOR_WAIT_FOR_TERMINATION": "0"})
    exekutor.enqueue_many([health_jobs.sleep.job(30) for _ in range(3)]  # running
                          + [jobs_app.noop.set(queue="elsewhere").job() for _ in range(2)]  # not this worker's
                          + [jobs_app.noop.set(queue="later", wait=3600).job()])

    values = wait_for(lambda: (lambda v: metric(v, "exekutor_greenlets_busy") == 3 and v)(metric_values(worker.port)),
                      20, message="3 busy greenlets")
    assert metric(values, "exekutor_greenlets_free") == 1
    assert metric(values, "exekutor_jobs_pending", queue="elsewhere") == 2
    assert metric(values, "exekutor_jobs_oldest_pending_age_seconds", queue="elsewhere") > 0
    assert metric(values, "exekutor_jobs_scheduled", queue="later") == 1
    assert metric(values, "exekutor_jobs_pending", queue="later") == 0
    assert metric(values, "exekutor_jobs_pending", queue="default") == 0


@pytest.mark.timeout(60)
def test_rescues_of_dead_workers_and_orphaned_jobs_are_counted(health_worker, db):
    dead_worker, orphan_owner = str(uuid.uuid4()), str(uuid.uuid4())
    with db.cursor() as cursor:
        cursor.execute("INSERT INTO exekutor_workers (id, hostname, pid, status, last_heartbeat_at) "
                       "VALUES (%s, 'gone', 1, 'r', now() - interval '1 hour')", (dead_worker,))
        cursor.execute("INSERT INTO exekutor_jobs (payload, status, worker_id, queue, scheduled_at) VALUES "
                       "('{\"job\": \"tests.noop\"}', 'e', %s, 'rescued', now() + interval '1 hour'), "
                       "('{\"job\": \"tests.noop\"}', 'e', %s, 'rescued', now() + interval '1 hour')",
                       (dead_worker, orphan_owner))
    # A worker rescues others once its own heartbeats went through for worker_timeout.
    worker = health_worker(env={"EXEKUTOR_HEARTBEAT_INTERVAL": "0.5", "EXEKUTOR_WORKER_TIMEOUT": "2"})
    values = wait_for(lambda: (lambda v: metric(v, "exekutor_rescued_workers_total") == 1 and v)(
        metric_values(worker.port)), 20, message="the dead worker to be rescued")
    assert metric(values, "exekutor_rescued_jobs_total") == 2  # the ownerless one and the one the trigger freed
    assert query(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'p'")[0][0] == 2


@pytest.mark.timeout(90)
def test_database_errors_are_counted_by_component(database_url, health_worker):
    with TCPProxy.for_url(database_url) as proxy:
        worker = health_worker("--database-url", proxy.url(database_url), env={"EXEKUTOR_HEARTBEAT_INTERVAL": "0.5"})
        assert not [key for key in metric_values(worker.port) if key[0] == "exekutor_database_errors_total"]
        proxy.down()
        wait_for(lambda: get(worker.port, "/ready").status == 503, 20, message="the outage to be noticed")
        wait_for(lambda: metric(metric_values(worker.port), "exekutor_database_errors_total",
                                component="heartbeat") >= 1, 20, message="a heartbeat error")
        proxy.up()
        values = wait_for(lambda: get(worker.port, "/ready").status == 200 and metric_values(worker.port), 40,
                          message="recovery")
        assert metric(values, "exekutor_database_errors_total", component="healthcheck") >= 1
        assert metric(values, "exekutor_component_errors_total", component="heartbeat") >= 1
        worker.stop()  # while the proxy still runs: the worker needs the database to stop cleanly


@pytest.mark.timeout(60)
def test_metrics_can_be_turned_off(health_worker):
    worker = health_worker(env={"EXEKUTOR_METRICS": "false"})
    response = get(worker.port, "/metrics")
    assert response.status == 404 and "metrics are off" in response.body
    assert "/metrics" not in get(worker.port, "/").body
    assert get(worker.port, "/ready").status == 200


def test_metrics_true_without_prometheus_client_is_a_config_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "prometheus_client", None)  # what an import meets when it is not installed
    with pytest.raises(ConfigError, match=r"metrics is true but prometheus-client is not installed: "
                                          r"pip install 'exekutor-gevent\[metrics\]'"):
        exekutor.Worker(metrics=True)
    assert exekutor.Worker().metrics.enabled is False  # unset: on only when it is installed


@pytest.mark.timeout(60)
def test_cancellations_and_operator_actions_are_counted(health_worker, db):
    worker = health_worker("--threads", "4", "--poll-interval", "1")
    before = metric_values(worker.port)
    running = health_jobs.sleep.perform_later(30)
    wait_for(lambda: running.fetch()["status"] == "executing", 20, message="the job to start")
    failed = jobs_app.noop.perform_later()
    query(db, "UPDATE exekutor_jobs SET status = 'f', finished_at = now() WHERE id = %s", (failed.id,))
    assert running.cancel() and failed.retry()
    values = wait_for(lambda: (lambda v: metric(v, "exekutor_jobs_cancelled_total") == 1 and v)(
        metric_values(worker.port)), 10, message="the cancel in the metrics")
    for action in ("retry", "cancel"):
        assert metric(values, "exekutor_operator_actions_total", action=action) == \
            metric(before, "exekutor_operator_actions_total", action=action) + 1


@pytest.mark.timeout(60)
def test_queue_gauges_of_a_big_backlog_are_estimates_near_the_truth(health_worker, db):
    # Above the exact limit a gauge is the planner's estimate: never below the limit, near the real count once the
    # table has statistics (autovacuum's ANALYZE; here by hand), and the oldest pending age stays exact.
    from exekutor.queue_stats import EXACT_COUNT_LIMIT

    backlog = 5 * EXACT_COUNT_LIMIT
    query(db, "INSERT INTO exekutor_jobs (queue, payload, scheduled_at) SELECT 'backlog', "
              "'{\"job\": \"tests.noop\"}', now() - interval '10 minutes' FROM generate_series(1, %s)", (backlog,))
    query(db, "INSERT INTO exekutor_jobs (queue, payload, scheduled_at) SELECT 'backlog', "
              "'{\"job\": \"tests.noop\"}', now() + interval '1 hour' FROM generate_series(1, 3)")
    query(db, "ANALYZE exekutor_jobs")
    worker = health_worker("--queue", "default")
    values = wait_for(lambda: (lambda v: metric(v, "exekutor_jobs_pending", queue="backlog") and v)(
        metric_values(worker.port)), 20, message="the backlog's gauge")
    assert EXACT_COUNT_LIMIT < metric(values, "exekutor_jobs_pending", queue="backlog") <= 2 * backlog
    assert 0.5 * backlog <= metric(values, "exekutor_jobs_pending", queue="backlog")
    assert metric(values, "exekutor_jobs_scheduled", queue="backlog") == 3  # under the limit: exact
    assert 590 < metric(values, "exekutor_jobs_oldest_pending_age_seconds", queue="backlog") < 900


@pytest.mark.timeout(60)
def test_dead_rows_of_the_jobs_table_are_a_gauge(health_worker, db):
    worker = health_worker("--queue", "default")
    before = metric_values(worker.port)[("exekutor_jobs_table_dead_rows", frozenset())]
    query(db, "INSERT INTO exekutor_jobs (queue, payload) SELECT 'elsewhere', '{\"job\": \"tests.noop\"}' "
              "FROM generate_series(1, 500)")
    query(db, "DELETE FROM exekutor_jobs WHERE queue = 'elsewhere'")  # 500 dead rows, once the statistics see them
    wait_for(lambda: metric(metric_values(worker.port), "exekutor_jobs_table_dead_rows") >= before + 500, 30,
             message="the dead rows in the gauge")


def queue_labels(values):
    """{metric name: the set of its `queue` labels}."""
    labels = {}
    for name, sample_labels in values:
        queue = dict(sample_labels).get("queue")
        if queue is not None:
            labels.setdefault(name, set()).add(queue)
    return labels


@pytest.mark.timeout(120)
def test_queues_past_the_limit_share_one_series(health_worker, db):
    """A worker of every queue meets more queues than MAX_QUEUE_SERIES: the later ones are counted under "other"
    (no job is lost from the totals), and the gauges of the database's queues are bounded the same way."""
    from exekutor.metrics import MAX_QUEUE_SERIES, OTHER_QUEUES

    ran, waiting = MAX_QUEUE_SERIES + 30, 40
    worker = health_worker("--threads", "10", "--poll-interval", "1")
    exekutor.enqueue_many([jobs_app.noop.set(queue=f"run-{i:03}").job() for i in range(ran)]
                          + [jobs_app.noop.set(queue=f"later-{i:03}", wait=3600).job() for i in range(waiting)])
    wait_for(finished(db, ran), 60, message="the jobs to run")
    values = wait_for(lambda: (lambda v: sum(value for (name, _), value in v.items()
                                             if name == "exekutor_jobs_completed_total") == ran and v)(
        metric_values(worker.port)), 20, message="every completion in the metrics")
    for name, labels in queue_labels(values).items():
        assert len(labels) <= MAX_QUEUE_SERIES + 1, (name, len(labels))
    assert metric(values, "exekutor_jobs_completed_total", queue=OTHER_QUEUES) >= ran - MAX_QUEUE_SERIES
    assert sum(value for (name, _), value in values.items() if name == "exekutor_jobs_scheduled") == waiting
    assert metric(values, "exekutor_jobs_scheduled", queue=OTHER_QUEUES) >= waiting - MAX_QUEUE_SERIES


@pytest.mark.timeout(60)
def test_a_workers_own_queue_keeps_its_series_among_many(health_worker, db):
    from exekutor.metrics import MAX_QUEUE_SERIES, OTHER_QUEUES

    many = MAX_QUEUE_SERIES + 20
    exekutor.enqueue_many([jobs_app.noop.set(queue=f"a-{i:03}").job() for i in range(many)])
    worker = health_worker("--queue", "zz-mine", "--poll-interval", "1")
    metric_values(worker.port)  # a scrape meets the database's queues before the worker's own has any job
    jobs_app.noop.set(queue="zz-mine").perform_later()
    values = wait_for(lambda: (lambda v: metric(v, "exekutor_jobs_completed_total", queue="zz-mine") == 1 and v)(
        metric_values(worker.port)), 20, message="the worker's own queue in the metrics")
    assert len(queue_labels(values)["exekutor_jobs_pending"]) <= MAX_QUEUE_SERIES + 1
    assert metric(values, "exekutor_jobs_pending", queue=OTHER_QUEUES) >= many - MAX_QUEUE_SERIES
    assert sum(value for (name, _), value in values.items() if name == "exekutor_jobs_pending") == many


@pytest.mark.timeout(90)
def test_paused_queues_and_held_back_jobs_are_gauges_by_queue_and_reason(health_worker, db):
    """A paused queue reads 1, a resumed one 0; held-back jobs are counted by queue and reason, never by limit key
    (here two keys of one job, in one queue)."""
    from tests import flow_app

    odd = 'we"ird %s q ü'
    worker = health_worker("--threads", "10", "--poll-interval", "1", "--app", "tests.flow_app")
    query(db, flow_app.RUNS_DDL)
    try:
        exekutor.pause_queue(odd)
        exekutor.pause_queue("resumed")
        exekutor.resume_queue("resumed")
        for key in ("a", "b"):
            for i in range(3):
                flow_app.limited.set(queue="imports").perform_later(f"{key}{i}", key, seconds=30)
        for i in range(2):
            flow_app.free.set(queue=odd).perform_later(f"p{i}")

        def settled(values):
            return (metric(values, "exekutor_jobs_held_back", queue="imports", reason="concurrency") == 2
                    and metric(values, "exekutor_jobs_held_back", queue=odd, reason="paused") == 2 and values)

        values = wait_for(lambda: settled(metric_values(worker.port)), 30, message="the held-back jobs in the gauges")
        assert metric(values, "exekutor_queue_paused", queue=odd) == 1
        assert values[("exekutor_queue_paused", frozenset({("queue", "resumed")}))] == 0
        assert ("exekutor_queue_paused", frozenset({("queue", "imports")})) not in values  # no row: no series
        assert metric(values, "exekutor_jobs_held_back", queue="imports", reason="paused") == 0
        assert metric(values, "exekutor_jobs_held_back", queue="imports", reason="rate") == 0
        held = {labels for name, labels in values if name == "exekutor_jobs_held_back"}
        assert all(set(dict(labels)) == {"queue", "reason"} for labels in held)
        assert {dict(labels)["reason"] for labels in held} == {"concurrency", "rate", "paused"}
        exekutor.resume_queue(odd)
        wait_for(lambda: metric(metric_values(worker.port), "exekutor_queue_paused", queue=odd) == 0, 30,
                 message="the resumed queue's gauge")
    finally:
        query(db, "UPDATE exekutor_jobs SET cancel_requested_at = now() WHERE status IN ('p', 'e')")
        query(db, flow_app.RUNS_TEARDOWN)
