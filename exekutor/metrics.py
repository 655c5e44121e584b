"""Prometheus metrics of the worker (the `metrics` extra: prometheus-client).

They live in prometheus_client's default registry, so an application that already exposes that registry shows
them too; the health check server serves it at `/metrics`. Counters and histograms move as jobs run (the worker
calls `job_started`, `job_finished` and `component_error`); gauges are read when scraped, from the worker itself
and, for the queues, from one query on the worker's connection pool.

With `metrics: false`, or with the `metrics` option unset and prometheus-client missing, `for_worker` returns
`DISABLED`, whose methods do nothing.
"""
import bisect
import collections
import importlib.util
import sys
import time
import weakref

import gevent
import psycopg2
from gevent import monkey

from exekutor.errors import ConfigError, DatabaseTimeout, JobTimeoutError, QueueTimeoutError
from exekutor.eventloop import SingleFlight
from exekutor.execution import COMPLETED, DISCARDED, FAILED, RELEASE, RETRY, error_record
from exekutor.queue_control import queue_settings
from exekutor.queue_stats import HELD_REASONS, EstimateCache, held_back_by_queue, pending_by_queue

# Seconds a scrape waits for the queue query; without an answer the queue gauges are left out of that scrape.
QUEUE_QUERY_TIMEOUT = 5.0
# Scrapes within QUEUE_STATS_MAX_AGE seconds of a queue query that took at least QUEUE_STATS_SLOW seconds reuse its
# answer. The query is a few index lookups per queue (exekutor.queue_stats), a few milliseconds whatever the
# backlog; a slow answer means a loaded database, which every scrape of every worker would load further.
QUEUE_STATS_MAX_AGE = 10.0
QUEUE_STATS_SLOW = 0.05
OPERATOR_ACTIONS = "SELECT action, jobs FROM exekutor_operator_actions"
# PostgreSQL's count of dead row versions in the jobs table (readable by any role): what VACUUM has yet to remove.
DEAD_ROWS = "SELECT coalesce(sum(n_dead_tup), 0) FROM pg_stat_user_tables WHERE relid = 'exekutor_jobs'::regclass"
# Upper bounds (seconds) of the latency and runtime histograms' buckets.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
_FINISHED = {COMPLETED: "completed", FAILED: "failed", DISCARDED: "discarded", RETRY: "retried",
             RELEASE: "released"}
_TIMEOUTS = {error_record(JobTimeoutError())["type"]: "execution", error_record(QueueTimeoutError())["type"]: "queue"}
_DATABASE_ERRORS = (psycopg2.Error, DatabaseTimeout, OSError)  # OSError: connection refused, pool timeout
# Queues with series of their own, per process; the jobs and gauges of any other queue are under OTHER_QUEUES. Each
# queue costs about 60 series (counters, two histograms, gauges): a process that saw every queue of a database with
# thousands of them would keep growing its scrape, and Prometheus its storage, for as long as it runs.
MAX_QUEUE_SERIES = 100
# Seconds between the checks whether the application imported prometheus-client (see Metrics.publish).
PUBLISH_CHECK_INTERVAL = 5.0
OTHER_QUEUES = "other"


class Disabled:
    """Metrics off: every call is a no-op."""

    enabled = False

    def job_started(self, info):
        pass

    def job_finished(self, outcome, info):
        pass

    def component_error(self, component, error):
        pass

    def event_loop_blocked(self, seconds, job):
        pass

    def publish(self):
        pass


DISABLED = Disabled()


def for_worker(worker):
    """The worker's metrics per its `metrics` option: true, false, or None (on when prometheus-client is there)."""
    setting = worker.options.get("metrics")
    if setting is False:
        return DISABLED
    if importlib.util.find_spec("prometheus_client") is None:
        if setting:
            raise ConfigError("metrics is true but prometheus-client is not installed: "
                              "pip install 'exekutor-gevent[metrics]'") from None
        return DISABLED
    return Metrics(worker)


class Metrics:
    """Per-job counting on the hot path is plain dict and list arithmetic (`JobStats`); prometheus-client's
    metric objects take a lock per update, which under gevent is a gevent lock and costs more than a no-op
    job. The numbers become metric families when scraped."""

    enabled = True

    def __init__(self, worker):
        stats = _process_stats()
        self._stats = stats.jobs
        self._label = stats.queue_labels.label
        for queue in worker.queues or ():  # the worker's own queues first, before the database's others
            self._label(queue)
        stats.workers.add(worker)
        # Registered at once when the health check serves /metrics or metrics are asked for explicitly.
        self._eager = bool(worker.options.get("metrics") or worker.options.get("healthcheck_port"))

    def publish(self):
        """Create and register the metric families in prometheus-client's default registry (once per process), as
        soon as something may read it: at once when the health check serves /metrics (or `metrics` is true), else
        once the application has imported prometheus-client (to expose the registry itself), checked every few
        seconds. The worker calls this on its liveness thread: importing prometheus-client takes 25-70 ms of CPU,
        which a worker's start, or one whose metrics nobody reads, should not spend. Counting needs none of it."""
        while not (self._eager or "prometheus_client" in sys.modules):
            gevent.sleep(PUBLISH_CHECK_INTERVAL)
        _process_metrics()

    def job_started(self, info):
        stats = self._stats
        queue = self._label(info["queue"])
        stats.counts["started", queue] += 1
        ready_at = info.get("scheduled_at")  # the enqueue time, or the later time a job was scheduled for
        if ready_at is not None:
            stats.observe(stats.latency, queue, max(0.0, time.time() - ready_at.timestamp()))

    def job_finished(self, outcome, info):
        stats = self._stats
        queue = self._label(info["queue"])
        stats.counts[_FINISHED.get(outcome.status, "failed"), queue] += 1
        timeout = _TIMEOUTS.get(outcome.error["type"]) if outcome.error else None
        if timeout is not None:
            stats.timeouts[queue, timeout] += 1
        if timeout != "queue" and outcome.runtime is not None:  # a queue timeout never ran
            stats.observe(stats.runtime, queue, outcome.runtime)

    def component_error(self, component, error):
        m = _process_metrics()
        m.errors.labels(component).inc()
        if isinstance(error, _DATABASE_ERRORS):
            m.database_errors.labels(component).inc()

    def event_loop_blocked(self, seconds, job):
        """A block longer than max_blocking_time ended (called from the liveness thread); `job` is the job's name,
        "-" for code outside any job."""
        m = _process_metrics()
        m.blocks.labels(job).inc()
        m.blocked_seconds.labels(job).inc(seconds)

    @staticmethod
    def render():
        """(content type, body) of the Prometheus text exposition of the default registry."""
        _process_metrics()  # registered, if the liveness thread has not done it yet
        from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

        return CONTENT_TYPE_LATEST, generate_latest(REGISTRY)


class QueueLabels:
    """The `queue` label of a queue's series: its name for the first `limit` queues the process meets, OTHER_QUEUES
    for every later one. Kept for the process's life, so a counter never moves from one series to another (a queue
    named like OTHER_QUEUES shares that series)."""

    def __init__(self, limit=MAX_QUEUE_SERIES):
        self.limit = limit
        self.own = {}  # queue -> itself, for the queues with series of their own

    def label(self, queue):
        own = self.own.get(queue)
        if own is not None:
            return own
        if len(self.own) >= self.limit:
            return OTHER_QUEUES
        return self.own.setdefault(queue, queue)


class JobStats:
    """Job counters and histograms per queue label (see QueueLabels), as plain numbers (see Metrics)."""

    def __init__(self):
        self.counts = collections.Counter()  # (word, queue) -> runs
        self.timeouts = collections.Counter()  # (queue, "execution" | "queue") -> jobs
        self.latency = {}  # queue -> [bucket counts..., +Inf count, sum]
        self.runtime = {}

    @staticmethod
    def observe(histograms, queue, value):
        counts = histograms.get(queue)
        if counts is None:
            counts = histograms[queue] = [0] * (len(LATENCY_BUCKETS) + 1) + [0.0]
        counts[bisect.bisect_left(LATENCY_BUCKETS, value)] += 1
        counts[-1] += value

    def families(self):
        from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

        started = CounterMetricFamily("exekutor_jobs_started", "Jobs a greenlet took up (including those then "
                                      "discarded for queue_timeout).", labels=["queue"])
        finished = {word: CounterMetricFamily(f"exekutor_jobs_{word}", f"Job runs that ended {word}.",
                                              labels=["queue"]) for word in _FINISHED.values()}
        for (word, queue), count in sorted(self.counts.items()):
            (started if word == "started" else finished[word]).add_metric([queue], count)
        timed_out = CounterMetricFamily("exekutor_jobs_timed_out", "Jobs discarded for exceeding their "
                                        "execution_timeout or queue_timeout (also counted as discarded).",
                                        labels=["queue", "timeout"])
        for (queue, kind), count in sorted(self.timeouts.items()):
            timed_out.add_metric([queue, kind], count)
        latency = HistogramMetricFamily("exekutor_job_latency_seconds", "From the time a job could run (enqueued "
                                        "or scheduled for) to its start.", labels=["queue"])
        runtime = HistogramMetricFamily("exekutor_job_runtime_seconds", "Run time of jobs.", labels=["queue"])
        for family, histograms in ((latency, self.latency), (runtime, self.runtime)):
            for queue, counts in sorted(histograms.items()):
                family.add_metric([queue], _cumulative(counts), sum_value=counts[-1])
        return [started, *finished.values(), timed_out, latency, runtime]


def _cumulative(counts):
    bounds = [str(float(bound)) for bound in LATENCY_BUCKETS] + ["+Inf"]
    total, buckets = 0, []
    for bound, count in zip(bounds, counts[:-1]):
        total += count
        buckets.append((bound, total))
    return buckets


_stats = None
_metrics = None
# A native lock: the liveness thread creates the metrics while the worker's hub may ask for them.
_metrics_lock = monkey.get_original("_thread", "allocate_lock")()


class _ProcessStats:
    """What the process's workers count as jobs run (shared by its workers), without prometheus-client."""

    def __init__(self):
        self.jobs = JobStats()
        self.queue_labels = QueueLabels()
        self.workers = weakref.WeakSet()


def _process_stats():
    global _stats
    with _metrics_lock:
        if _stats is None:
            _stats = _ProcessStats()
        return _stats


def _process_metrics():
    """The metric objects, created and registered once per process (shared by its workers)."""
    global _metrics
    stats = _process_stats()
    with _metrics_lock:
        if _metrics is None:
            _metrics = _create(stats)
        return _metrics


class _Families:
    pass


def _create(stats):
    from prometheus_client import REGISTRY, Counter

    m = _Families()
    m.jobs = stats.jobs
    m.queue_labels = stats.queue_labels
    m.errors = Counter("exekutor_component_errors", "Errors of the worker's components (each is retried with "
                       "backoff).", ["component"])
    m.database_errors = Counter("exekutor_database_errors", "Database errors of the worker's own queries "
                                "(components, health check, metrics).", ["component"])
    m.blocks = Counter("exekutor_event_loop_blocks", "Times a job (by name; - for code outside any job) blocked "
                       "the event loop for longer than max_blocking_time.", ["job"])
    m.blocked_seconds = Counter("exekutor_event_loop_blocked_seconds", "Seconds the event loop spent in blocks "
                                "longer than max_blocking_time, by the job that blocked it.", ["job"])
    m.collector = _WorkerCollector(m.database_errors, m.jobs, m.queue_labels, stats.workers)
    REGISTRY.register(m.collector)
    return m


# What each of the worker's families (in _WorkerCollector._families' order) reads from a worker.
_WORKER_VALUES = (
    lambda worker, now: worker.executor.busy(),
    lambda worker, now: worker.executor.free(),
    lambda worker, now: now - worker.heartbeat.last_beat,
    lambda worker, now: worker.completer.pending_count(),
    lambda worker, now: worker.heartbeat.rescued_workers,
    lambda worker, now: worker.heartbeat.rescued_jobs,
    lambda worker, now: worker.heartbeat.presumed_dead,
    lambda worker, now: worker.ownership.trips,
    lambda worker, now: worker.executor.stopped_unowned,
    lambda worker, now: worker.completer.fenced_off,
    lambda worker, now: worker.completer.refused,
    lambda worker, now: worker.reconciler.reconciled_jobs,
    lambda worker, now: worker.executor.adopted,
    lambda worker, now: worker.listener.malformed if worker.listener is not None else 0,
    lambda worker, now: worker.executor.cancelled,
    lambda worker, now: worker.completer.statements,
    lambda worker, now: worker.completer.statement_seconds,
    lambda worker, now: worker.provider.statements,
    lambda worker, now: worker.provider.statement_seconds,
    lambda worker, now: worker.watchdog.interrupted,
    lambda worker, now: worker.watchdog.given_up,
    lambda worker, now: worker.heartbeat.rescue_limit_failed,
    lambda worker, now: worker.provider.floors.resets,
    lambda worker, now: worker.provider.below_floors,
    lambda worker, now: worker.provider.reserved_ahead,
)


class _WorkerCollector:
    """Gauges read at scrape time from the process's running workers and the jobs table."""

    def __init__(self, database_errors, jobs, queue_labels, workers):
        self.workers = workers
        self._jobs = jobs
        self._queue_labels = queue_labels
        self._database_errors = database_errors
        self._queue_stats = SingleFlight(self._query_queues, max_age=QUEUE_STATS_MAX_AGE, slow=QUEUE_STATS_SLOW)
        self._estimates = EstimateCache()
        self._held_estimates = EstimateCache()
        self._other_seen = False  # once a queue was under OTHER_QUEUES, its series stays (reading 0 when empty)

    def describe(self):
        return self._families(with_queues=True) + self._jobs.families()

    def collect(self):
        workers = [worker for worker in list(self.workers) if worker.state == "started"]
        families = self._families(with_queues=bool(workers))
        count = len(_WORKER_VALUES)
        now = time.time()
        for worker in workers:
            for family, value in zip(families[:count], _WORKER_VALUES):
                family.add_metric([], value(worker, now))
        queue_families = families[count:]
        yield from families[:count]
        yield from self._jobs.families()
        if workers and self._add_queue_stats(workers[0], *queue_families):
            yield from queue_families

    @staticmethod
    def _families(with_queues):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        families = [
            GaugeMetricFamily("exekutor_greenlets_busy", "Greenlets running a job (or reserved for one)."),
            GaugeMetricFamily("exekutor_greenlets_free", "Jobs the worker could take up now (max_threads - busy)."),
            GaugeMetricFamily("exekutor_heartbeat_age_seconds", "Seconds since the worker's last heartbeat."),
            GaugeMetricFamily("exekutor_outcomes_unwritten", "Finished jobs whose outcome waits to be written."),
            CounterMetricFamily("exekutor_rescued_workers", "Workers presumed dead (no heartbeat within "
                                "worker_timeout) whose rows this worker deleted."),
            CounterMetricFamily("exekutor_rescued_jobs", "Jobs this worker put back to pending to run again: the "
                                "executing jobs of the workers it presumed dead, and executing jobs without any "
                                "worker."),
            CounterMetricFamily("exekutor_worker_presumed_dead", "Times this worker found its row deleted by another "
                                "worker that presumed it dead (it stops its jobs and registers again)."),
            CounterMetricFamily("exekutor_ownership_lost", "Times no heartbeat went through for nearly "
                                "worker_timeout, so the worker stopped its jobs (they run again)."),
            CounterMetricFamily("exekutor_jobs_stopped_unowned", "Jobs stopped without an outcome because the worker "
                                "may have been presumed dead."),
            CounterMetricFamily("exekutor_outcomes_fenced_off", "Outcomes not written because the job was no longer "
                                "this worker's at the attempt it ran."),
            CounterMetricFamily("exekutor_outcomes_refused", "Outcomes the database refused for their content, "
                                "written with a minimal error record instead."),
            CounterMetricFamily("exekutor_reconciled_jobs", "Jobs this worker owned in the database without running "
                                "them (a lost reservation reply), released by its heartbeat."),
            CounterMetricFamily("exekutor_reservations_adopted", "Jobs reserved again while this worker still ran "
                                "them; the running copy carried on."),
            CounterMetricFamily("exekutor_notifications_malformed", "Notifications on exekutor's channel that were "
                                "not what exekutor sends, ignored."),
            CounterMetricFamily("exekutor_jobs_cancelled", "Jobs this worker interrupted (or dropped before they "
                                "started) because an operator cancelled them."),
            CounterMetricFamily("exekutor_completion_statements", "Statements that wrote batches of outcomes."),
            CounterMetricFamily("exekutor_completion_statement_seconds", "Seconds those statements took (divided "
                                "by their number: the mean time of a completion, which must stay flat over hours)."),
            CounterMetricFamily("exekutor_reservation_statements", "Statements that reserved jobs."),
            CounterMetricFamily("exekutor_reservation_statement_seconds", "Seconds those statements took (divided by "
                                "their number: the mean time of a reservation, which must stay flat, also while "
                                "a snapshot is held)."),
            CounterMetricFamily("exekutor_jobs_interrupted_blocking", "Jobs the watchdog interrupted because they "
                                "blocked the event loop past their execution_timeout or blocking_timeout."),
            CounterMetricFamily("exekutor_jobs_blocking_given_up", "Blocks that an interruption did not end: the "
                                "worker failed the job itself and stopped its heartbeat until the loop ran again."),
            CounterMetricFamily("exekutor_jobs_failed_after_rescues", "Jobs this worker failed, instead of running "
                                "them again, because their workers had been presumed dead max_job_rescues times."),
            CounterMetricFamily("exekutor_reservation_floor_resets", "Times the reservation's floors went back to the "
                                "pending index's start (the listener connected again, or a reservation failed)."),
            CounterMetricFamily("exekutor_jobs_found_below_floors", "Ready jobs the check at a poll found below the "
                                "reservation's floors (a reservation of another worker that rolled back)."),
            CounterMetricFamily("exekutor_jobs_reserved_ahead", "Jobs reserved for greenlets whose short job was "
                                "about to end; they waited in the worker's queue for the first greenlet free."),
        ]
        if with_queues:
            families += [
                GaugeMetricFamily("exekutor_jobs_pending", "Pending jobs ready to run.", labels=["queue"]),
                GaugeMetricFamily("exekutor_jobs_scheduled", "Pending jobs scheduled for later.", labels=["queue"]),
                GaugeMetricFamily("exekutor_jobs_oldest_pending_age_seconds", "How long the oldest ready pending "
                                  "job has been waiting.", labels=["queue"]),
                CounterMetricFamily("exekutor_operator_actions", "Jobs operators retried or cancelled (exekutor-gevent "
                                    "jobs, JobRequest.retry/cancel), counted in the database: every worker reports "
                                    "the same totals.", labels=["action"]),
                GaugeMetricFamily("exekutor_queue_paused", "1 while the queue is paused (exekutor-gevent queues "
                                  "pause), 0 once resumed or only limited: for the queues with a row in "
                                  "exekutor_queues.",
                                  labels=["queue"]),
                GaugeMetricFamily("exekutor_jobs_held_back", "Pending jobs a limit holds back, by queue and reason: "
                                  "concurrency, rate (a limit of their job or queue) or paused (their queue).",
                                  labels=["queue", "reason"]),
                GaugeMetricFamily("exekutor_jobs_table_dead_rows", "Dead row versions in exekutor_jobs that VACUUM "
                                  "has not removed yet (PostgreSQL's statistics): growing without end means "
                                  "autovacuum is off or a long-held snapshot keeps it from cleaning."),
            ]
        return families

    def _add_queue_stats(self, worker, pending, scheduled, age, operator_actions, paused, held_back, dead_rows):
        try:
            rows, actions, flow, dead = self._queue_stats(QUEUE_QUERY_TIMEOUT, worker)
        except Exception as error:  # noqa: BLE001 - a scrape without queue gauges beats a failed scrape
            if isinstance(error, _DATABASE_ERRORS):
                self._database_errors.labels("metrics").inc()
            return False
        for queue, (ready, later, oldest) in sorted(self._queue_gauges(rows).items()):
            pending.add_metric([queue], ready)
            scheduled.add_metric([queue], later)
            age.add_metric([queue], float(oldest))
        for action, jobs in sorted(actions):
            operator_actions.add_metric([action], jobs)
        states, held = self._flow_gauges(*flow)
        for queue, value in sorted(states.items()):
            paused.add_metric([queue], value)
        for (queue, reason), jobs in sorted(held.items()):
            held_back.add_metric([queue, reason], jobs)
        dead_rows.add_metric([], float(dead))
        return True

    def _queue_gauges(self, rows):
        """{label: (ready, scheduled, oldest age)}: an emptied queue reads 0, not absent; the queues under
        OTHER_QUEUES add up (their oldest age is the oldest of them)."""
        labels = [(self._queue_labels.label(queue), ready, later, oldest) for queue, ready, later, oldest in rows]
        self._other_seen = self._other_seen or any(label == OTHER_QUEUES for label, *_ in labels)
        stats = {queue: (0, 0, 0.0) for queue in list(self._queue_labels.own)}
        if self._other_seen:
            stats.setdefault(OTHER_QUEUES, (0, 0, 0.0))
        for label, ready, later, oldest in labels:
            total_ready, total_later, total_oldest = stats.get(label, (0, 0, 0.0))
            stats[label] = (total_ready + ready, total_later + later, max(total_oldest, float(oldest)))
        return stats

    def _flow_gauges(self, states, held):
        """({label: 1 if paused else 0} for the queues with a row, {(label, reason): held-back jobs}): every queue
        with series of its own reads 0 rather than nothing once its jobs go, and queues under OTHER_QUEUES add up
        (it reads paused while any of them is)."""
        paused = {}
        for queue, state in states.items():
            label = self._queue_labels.label(queue)
            paused[label] = max(paused.get(label, 0), int(state["paused"]))
        labels = [(self._queue_labels.label(queue), figures) for queue, figures in held.items()]
        own = list(self._queue_labels.own) + ([OTHER_QUEUES] if self._other_seen else [])
        jobs = {(queue, reason): 0 for queue in own for reason in HELD_REASONS}
        for label, figures in labels:
            for reason in HELD_REASONS:
                jobs[label, reason] = jobs.get((label, reason), 0) + figures[reason]
        return paused, jobs

    def _query_queues(self, worker):
        with worker.db() as conn, conn.cursor() as cursor:
            rows = [(queue["queue"], queue["due"], queue["scheduled"], queue["overdue_for"] or 0.0)
                    for queue in pending_by_queue(cursor, estimates=self._estimates)]
            cursor.execute(OPERATOR_ACTIONS)
            actions = cursor.fetchall()
            flow = (queue_settings(cursor), held_back_by_queue(cursor, estimates=self._held_estimates))
            cursor.execute(DEAD_ROWS)
            return rows, actions, flow, cursor.fetchone()[0]
