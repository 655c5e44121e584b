"""The worker: lifecycle of the components that reserve, run and complete jobs in one process.

`Worker(**options).start()` returns at once; the components are greenlets in the calling thread's hub,
so the process must be monkeypatched (`exekutor-gevent start` does it) for jobs to run concurrently.
"""
import logging
import os
import socket
import uuid
from contextlib import contextmanager

import gevent
from gevent.event import Event

from exekutor import config, hooks, log, metrics
from exekutor.config import configured_database
from exekutor.db.green import server_of
from exekutor.db.pool import ConnectionPool
from exekutor.db.queries import DELETE_WORKER, REGISTER_WORKER, SET_WORKER_STATUS, UNBLOCK
from exekutor.definitions import MAX_PRIORITY, MIN_PRIORITY
from exekutor.errors import ConfigError, DatabaseTimeout, SchemaError
from exekutor.execution import COMPLETED, DISCARDED, FAILED, RELEASE
from exekutor.serialization import json_backend
from exekutor.worker.cancellation import Cancellation
from exekutor.worker.completer import Completer
from exekutor.worker.executor import Executor
from exekutor.worker.heartbeat import Heartbeat
from exekutor.worker.listener import Listener
from exekutor.worker.liveness import LivenessThread
from exekutor.worker.ownership import OwnershipGuard
from exekutor.worker.provider import Provider
from exekutor.worker.reconciler import Reconciler
from exekutor.worker.scheduler import Scheduler
from exekutor.worker.watchdog import Watchdog

logger = logging.getLogger("exekutor")

# The worker's own connections: reservation, completion and reconciliation share this pool; the listener has
# one more, and the liveness thread (heartbeat and watchdog) one or two of its own. The total stays at most
# POOL_SIZE + 3 whatever the number of greenlets.
POOL_SIZE = 3
SHUTDOWN_WRITE_TIMEOUT = 30.0
RESERVATION_WAIT = 5.0  # how long a stop waits for a reservation in flight (the database may be gone)
_DELETE_STATUS = {"delete_completed_jobs": COMPLETED, "delete_failed_jobs": FAILED,
                  "delete_discarded_jobs": DISCARDED}


class _StartMethod:
    """`Worker.start(**options)` creates and starts a worker; `worker.start()` starts that one."""

    def __get__(self, instance, owner):
        if instance is None:
            return lambda **options: owner(**options).start()
        return instance._start


class Worker:
    start = _StartMethod()

    def __init__(self, **options):
        settings = config.worker_options()
        unknown = set(options) - set(settings)
        if unknown:
            raise ConfigError(f"unknown worker option(s): {', '.join(sorted(unknown))}; "
                              f"allowed: {', '.join(sorted(settings))}")
        settings.update(options)
        config.check_worker_options(settings)
        self.options = settings
        self.id = str(uuid.uuid4())
        self.identifier = settings["identifier"]
        self.queues = list(settings["queues"]) if settings["queues"] else None
        self.queue_limits = config.queue_limits(settings["queues"])
        self.min_priority = settings["min_priority"] or MIN_PRIORITY
        self.max_priority = settings["max_priority"] or MAX_PRIORITY
        self.polling_interval = settings["polling_interval"]
        self.polling_jitter = settings["polling_jitter"]
        self.wait_for_termination = settings["wait_for_termination"]
        self.statement_timeout = config.get("statement_timeout")
        self.state = "new"
        self.pool = None
        self._hub = None  # the hub of the thread the worker runs in
        self.database_server = None  # (host, port, database): a job's lost connection to it releases the job
        self._registered = False
        self._stopped = Event()
        self._in_start = False  # _start is running: a stop or kill waits for its next step (see _start)
        self._start_interrupted = False
        self._build_components(settings)

    def _build_components(self, settings):
        backend = json_backend(config.get("json_serializer"))
        self.executor = Executor(self, settings["min_threads"], settings["max_threads"],
                                 settings["max_thread_idletime"], self._job_finished, self.capacity_freed)
        self.provider = Provider(self, self.executor, backend.loads)
        delete = [status for key, status in _DELETE_STATUS.items() if settings[key]]
        self.completer = Completer(self, backend.dumps, delete)
        self.executor.unwritten = self.completer.pending_count
        # What must go on while a job blocks the event loop runs on the liveness thread: the heartbeat and the
        # watchdog that notices the block (see exekutor.worker.liveness).
        self.heartbeat = Heartbeat(self, settings["heartbeat_interval"], settings["worker_timeout"],
                                   settings["max_job_rescues"])
        self.watchdog = Watchdog(self, settings["blocking_timeout"], settings["max_blocking_time"])
        self.liveness = LivenessThread(self.heartbeat.run, self.watchdog.run, self._publish_metrics)
        self.ownership = OwnershipGuard(self, self.heartbeat, settings["worker_timeout"])
        self.reconciler = Reconciler(self, settings["heartbeat_interval"])
        self.cancellation = Cancellation(self, self.executor)
        self.listener = Listener(self, self.provider) if settings["enable_listener"] else None
        # Read from the configuration (not a Worker keyword: Worker takes the original's options).
        self.scheduler = Scheduler(self) if config.get("enable_scheduler") else None
        self.healthcheck = None
        self.metrics = metrics.for_worker(self)

    def _publish_metrics(self):
        # On the liveness thread, once: the metric families' import would otherwise hold up the start.
        try:
            self.metrics.publish()
        except Exception as error:  # noqa: BLE001 - metrics never stop a worker
            logger.warning("exekutor worker %s: could not register its metrics: %s", self.id, error)

    # --- what components ask ----------------------------------------------------------------------------

    @property
    def stopping(self):
        return self.state in ("stopping", "stopped", "killed")

    @property
    def ownership_uncertain(self):
        """No heartbeat went through for nearly worker_timeout: others may have released this worker's jobs."""
        return self.ownership.tripped

    def ownership_confirmed(self):
        self.ownership.confirmed()

    def database_unreachable(self):
        """A component's query, or a job's connection, lost the database: the jobs reserved that no greenlet has
        taken up yet (reserved ahead) are not started now, as their own connections would fail too (and a job whose
        connect fails is the job's failure). They stay owned in the database until the reconciliation, once the
        database answers again, releases them to pending."""
        dropped = self.executor.drop_queued()
        if dropped:
            logger.warning("exekutor worker %s: the database is unreachable; %d reserved job(s) that had not started "
                           "go back to pending once it answers again", self.id, dropped)

    def in_hub(self, fn, *args):
        """Run fn(*args) in the worker's hub at its next turn; callable from any thread (the liveness thread)."""
        if self._hub is not None:
            self._hub.loop.run_callback_threadsafe(fn, *args)

    def stopped_or_killed(self):
        return self.state in ("stopped", "killed")

    def accepts(self, queue, lowest, highest=None):
        """Whether jobs of `queue` with priorities from `lowest` to `highest` include some this worker runs."""
        if self.queues is not None and queue not in self.queues:
            return False
        return lowest <= self.max_priority and (lowest if highest is None else highest) >= self.min_priority

    def reserve_params(self, limit):
        return {"worker_id": self.id, "queues": self.queues, "min_priority": self.min_priority,
                "max_priority": self.max_priority, "limit": limit}

    def connection_name(self, component):
        if not self.options["set_db_connection_name"]:
            return None
        return f"exekutor {self.identifier or self.id[:8]} {component}"

    @contextmanager
    def db(self, pool=None):
        """A pooled connection (of the worker's pool, or `pool`) for the worker's own queries, limited to
        statement_timeout. Client-side, so it also works behind PgBouncer; a query cut off this way loses its
        connection (the pool closes it)."""
        limit = self.statement_timeout
        timer = gevent.Timeout(limit) if limit else None
        if timer is not None:
            timer.start()
        try:
            with (pool or self.pool).connection() as conn:
                yield conn
        except gevent.Timeout as timeout:
            if timeout is not timer:
                raise
            raise DatabaseTimeout(f"a worker query took longer than statement_timeout ({limit:g}s)") from None
        finally:
            if timer is not None:
                timer.close()

    def components(self):
        return [c for c in (self.provider, self.completer, self.reconciler, self.cancellation, self.listener,
                            self.scheduler) if c is not None]

    # --- start ------------------------------------------------------------------------------------------

    def _start(self):
        if self.state != "new":
            raise RuntimeError(f"worker {self.id} was already started (state: {self.state})")
        _patch_psycopg()
        self.state = "starting"
        self._in_start = True
        try:
            self._start_steps()
        except _StartInterrupted:
            self._abandon_start()
            return self
        finally:
            self._in_start = False
        logger.info("exekutor worker %s started on %s (queues: %s, threads: %d-%d, listener: %s)", self.id,
                    configured_database(), ", ".join(self.queues) if self.queues else "all",
                    self.executor.min_threads, self.executor.max_threads, "on" if self.listener else "off")
        self._set_status("r")
        hooks.run_after("after_startup", self)
        return self

    def _start_steps(self):
        """Each step that waits (hooks, queries) lets a signal's stop() or kill() run: that one only asks, and
        the start ends at the next check. Stopping alongside a start that carries on would let the start
        register the row after the stop deleted it, or start components the stop never stops."""
        log.use_logger(config.get("logger"))
        log.apply_quiet(self.options["quiet"])
        hooks.run_before("before_startup", self)
        self._unless_interrupted()
        self._hub = gevent.get_hub()
        self.pool = ConnectionPool(POOL_SIZE, application_name=self.connection_name("worker"), autocommit=True)
        self._check_schema()
        self._unless_interrupted()
        self.register(status="i")
        self._unless_interrupted()
        self.ownership.start()
        self.watchdog.install()
        self.liveness.start()
        self.executor.start()
        for component in self.components():
            component.start()
        self._start_healthcheck()
        self._unless_interrupted()
        self.state = "started"  # from here on stop() and kill() do their whole work at once

    def _unless_interrupted(self):
        if self._start_interrupted:
            raise _StartInterrupted

    def _abandon_start(self):
        """Undo what started; a job reserved meanwhile is released to pending with the row."""
        self.state = "stopping"
        self._tear_down()
        self.state = "stopped"
        logger.info("exekutor worker %s stopped during start-up", self.id)
        self._stopped.set()

    def _check_schema(self):
        """A clear error instead of "relation does not exist" when the database was never migrated."""
        from exekutor.db.migrations import missing_versions

        with self.db() as conn:
            missing = missing_versions(conn)
            self.database_server = server_of(conn)
        if missing:
            raise SchemaError(f"exekutor's tables are missing or out of date in this database (migrations "
                              f"{', '.join(map(str, missing))} not applied): run `exekutor-gevent migrate`")
        self._check_maintenance()
        if self.queue_limits:
            from exekutor.queue_control import publish_queue_limits

            with self.db() as conn, conn.cursor() as cursor:
                publish_queue_limits(cursor, self.queue_limits)

    def _check_maintenance(self):
        from exekutor.db.maintenance import autovacuum_problem

        try:
            with self.db() as conn:
                problem = autovacuum_problem(conn)
        except Exception as error:  # noqa: BLE001 - advice, never a reason not to start
            logger.debug("exekutor worker %s: could not check autovacuum: %s", self.id, error)
            return
        if problem:
            logger.warning("exekutor worker %s: %s", self.id, problem)

    def register(self, status="r"):
        from psycopg2.extras import Json

        params = {"id": self.id, "hostname": socket.gethostname(), "pid": os.getpid(),
                  "identifier": self.identifier, "status": status, "queues": self.queues,
                  "min_priority": self.min_priority, "max_priority": self.max_priority,
                  "min_threads": self.executor.min_threads, "max_threads": self.executor.max_threads,
                  "info": Json({"polling_interval": self.polling_interval,
                                "enable_listener": self.listener is not None})}
        self._registered = True  # before: an INSERT cut off by a timeout may have committed all the same
        with self.db() as conn, conn.cursor() as cursor:
            cursor.execute(REGISTER_WORKER, params)

    def _set_status(self, status):
        try:
            with self.db() as conn, conn.cursor() as cursor:
                cursor.execute(SET_WORKER_STATUS, (status, self.id))
        except Exception as error:  # noqa: BLE001 - the heartbeat keeps trying; status is informational
            logger.warning("exekutor worker %s: could not record status %r: %s", self.id, status, error)

    def _start_healthcheck(self):
        port = self.options.get("healthcheck_port")
        if not port:
            return
        from exekutor.healthcheck import HealthcheckServer

        self.healthcheck = HealthcheckServer(self, self.options["healthcheck_host"], port)
        self.healthcheck.start()

    # --- running jobs -----------------------------------------------------------------------------------

    def job_started(self, info):
        log.job_started(info)
        self.metrics.job_started(info)

    def _job_finished(self, outcome, info):
        self.completer.add(outcome)
        log.job_finished(outcome, info)
        self.metrics.job_finished(outcome, info)
        if outcome.status == RELEASE:
            # The job lost its connection to the worker's own database: the first sign of an outage, often before
            # any component's query meets it. Called before this greenlet takes the next job.
            self.database_unreachable()

    def capacity_freed(self):
        """A job finished or outcomes were written: the provider may reserve again."""
        self.provider.capacity_freed()

    # --- stop, kill, join -------------------------------------------------------------------------------

    def stop(self):
        """Stop reserving, run the shutdown hooks, wait for running jobs per wait_for_termination, write their
        outcomes, release what did not finish and delete this worker's row. During start-up it returns at once:
        the start ends at its next step, undoes what it did and logs that it stopped (join() waits for that)."""
        if self._interrupt_start():
            return
        if self.state not in ("starting", "started"):
            return
        self.state = "stopping"
        # From here on no job starts that has not started yet (reserved ahead, or waiting for a greenlet): they go
        # back to pending with the worker's row, or sooner by its reconciliation while the running ones finish.
        self.executor.drop_queued()
        self._set_status("s")
        self._stop_reserving()
        hooks.run_before("before_shutdown", self)
        wait = self.wait_for_termination
        if wait is None or wait is False:
            # Neither wait nor kill: finish the shutdown in the background once the jobs are done.
            gevent.spawn(self._finish_after_jobs)
            return
        if wait is True:
            self.executor.wait_idle()
        elif not (wait > 0 and self.executor.wait_idle(wait)):
            self.executor.kill_jobs()
        self._finish()

    def _finish_after_jobs(self):
        self.executor.wait_idle()
        self._finish()

    def _finish(self):
        if self.state == "killed":  # a second signal killed the worker while it waited for its jobs
            return
        self._write_outcomes(SHUTDOWN_WRITE_TIMEOUT)
        self._shutdown_components()
        self._delete_row()  # the heartbeat beat until now, so no other worker took this one for dead
        self.state = "stopped"
        self._close()
        logger.info("exekutor worker %s stopped", self.id)
        hooks.run_after("after_shutdown", self)
        self._stopped.set()

    def kill(self):
        """Cancel running jobs and release them to pending, without the shutdown hooks."""
        if self.state in ("stopped", "killed", "new") or self._interrupt_start():
            return
        starting = self.state == "starting"
        self.state = "killed"
        self.executor.drop_queued()
        self._tear_down()
        if starting:  # the start failed: its own error is what the log must show
            logger.debug("exekutor worker %s: cleaned up after a failed start", self.id)
        else:
            logger.info("exekutor worker %s killed", self.id)
        self._stopped.set()

    def _interrupt_start(self):
        """True if the start is running: it is asked to end at its next step instead (see _start_steps)."""
        if self._in_start:
            self._start_interrupted = True
        return self._in_start

    def _tear_down(self):
        self._stop_reserving()
        self.executor.kill_jobs()
        self._write_outcomes(timeout=5.0)
        self._shutdown_components()
        self._delete_row(timeout=5.0)
        self._close()

    def join(self, timeout=None):
        """Block until the worker has stopped; True if it did within the timeout."""
        return self._stopped.wait(timeout)

    def _stop_reserving(self):
        self.provider.stop()
        # A reservation in flight finishes first: killed, it could commit after this worker's row is deleted and
        # leave its jobs executing under a worker that no longer exists. Finished, its jobs are ours to release.
        finished = self.provider.reservation_lock.acquire(timeout=RESERVATION_WAIT)
        try:
            self.provider.kill(block=False)
        finally:
            if finished:
                self.provider.reservation_lock.release()
        if self.listener is not None:
            self.listener.stop()

    def _write_outcomes(self, timeout):
        """Give the completer time to write what finished (the database may be down)."""
        with gevent.Timeout(timeout, False):
            while self.completer.pending_count():
                gevent.sleep(0.02)
        if self.completer.pending_count():
            logger.error("exekutor worker %s: %d job outcome(s) could not be written before shutdown; those "
                         "jobs will run again", self.id, self.completer.pending_count())

    def _shutdown_components(self):
        """Everything but the liveness thread, whose heartbeat keeps the row fresh until _delete_row."""
        for component in self.components():
            component.kill(block=True, timeout=5)
        self.executor.stop()
        if self.healthcheck is not None:
            self.healthcheck.stop()

    def _delete_row(self, timeout=SHUTDOWN_WRITE_TIMEOUT):
        """Deleting the row releases any job of ours still executing (killed ones) back to pending."""
        self.liveness.stop()
        self.heartbeat.close()
        self.watchdog.uninstall()
        self.ownership.stop()
        if not self._registered:  # it never got a row (it could not start)
            return
        with gevent.Timeout(timeout, False):
            delay = 0.1
            while True:
                try:
                    with self.db() as conn, conn.cursor() as cursor:
                        cursor.execute(DELETE_WORKER, (self.id,))
                        # Jobs it released may have held concurrency slots: the jobs their limits hold back go next.
                        cursor.execute(UNBLOCK, (None,))
                    return
                except Exception as error:  # noqa: BLE001
                    logger.warning("exekutor worker %s: could not delete its row (%s); retrying", self.id, error)
                    gevent.sleep(delay)
                    delay = min(delay * 2, 5)
        logger.error("exekutor worker %s: its row could not be deleted; another worker will release its jobs "
                     "after worker_timeout", self.id)

    def _close(self):
        if self.pool is not None:
            self.pool.close()

    # --- status -----------------------------------------------------------------------------------------

    def thread_stats(self):
        maximum = self.executor.max_threads
        busy = self.executor.busy()
        return {"minimum": self.executor.min_threads, "maximum": maximum, "available": maximum - busy,
                "usage_percent": round(100.0 * busy / maximum, 1)}

    def __repr__(self):
        return f"<exekutor.Worker {self.id} {self.state}>"


class _StartInterrupted(Exception):
    """stop() or kill() came while the worker was starting."""


def _patch_psycopg():
    """psycopg2 must wait cooperatively inside the worker; harmless to repeat."""
    from exekutor.db.green import patch_psycopg

    patch_psycopg()
