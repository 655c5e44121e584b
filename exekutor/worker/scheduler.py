"""The scheduler: enqueues the jobs of recurring schedules, each tick exactly once across all workers.

Every worker runs one (unless `enable_scheduler: false`). At start it writes its schedules' definitions to
exekutor_schedules and reads their last ticks; then it sleeps until the earliest next tick and claims what is due
with CLAIM_TICKS, which compares-and-sets last_tick and inserts the jobs in one statement: a worker that loses the
race (another one claimed the tick first) inserts nothing and just reads the new last_tick. Ticks are instants on
the database's clock: this worker estimates the offset of its own clock at each statement, and the statement
itself refuses a tick that has not come yet in the database's time.

A worker that dies mid-claim loses nothing: the statement either committed (tick and jobs) or did not (another
worker claims the tick a moment later).
"""
import datetime as dt
import logging
import time

import gevent

from exekutor import config, hooks
from exekutor.db.queries import CLAIM_TICKS, READ_SCHEDULES, UPSERT_SCHEDULES
from exekutor.definitions import registry
from exekutor.enqueue import JobRequest
from exekutor.schedules import UTC, active_schedules
from exekutor.serialization import json_backend
from exekutor.worker.component import Component

logger = logging.getLogger("exekutor")

MAX_SLEEP = 30.0  # look at the table at least this often (another worker's claims, a changed clock)
WAKE_MARGIN = 0.002  # wake this much after a tick, so that the database's now() has passed it
RETRY_DELAY = 0.05  # a schedule another worker is claiming right now: look again after this
BATCH = 500  # schedules per claim statement


class _State:
    __slots__ = ("schedule", "last_tick", "next_tick", "retry_at")

    def __init__(self, schedule):
        self.schedule = schedule
        self.last_tick = self.next_tick = None
        self.retry_at = 0.0  # time.monotonic() before which not to claim again

    def seen(self, last_tick, now):
        """The table says `last_tick` (None: never claimed, start from now)."""
        self.last_tick = last_tick
        self.next_tick = self._computed(self.schedule.next_after, last_tick or now)

    def due_ticks(self, now):
        """(ticks, truncated) as Schedule.due_ticks; None when they cannot be computed (then skipped)."""
        return self._computed(self.schedule.due_ticks, self.last_tick, now)

    def _computed(self, compute, *args):
        # One schedule that cannot be computed (a last_tick edited by hand to the year 9999) is skipped (next_tick
        # None: never due again) and logged once: it must not stop the scheduler loop and the other schedules.
        try:
            return compute(*args)
        except Exception as error:  # noqa: BLE001 - whatever the arithmetic or cronsim raise
            self.next_tick = None
            logger.error("exekutor scheduler: schedule %r cannot be computed (last tick %s): %s: %s; skipped",
                         self.schedule.name, self.last_tick, type(error).__name__, error)
            return None


class Scheduler(Component):
    name = "scheduler"

    def __init__(self, worker, schedules=None):
        super().__init__(worker)
        self._configured = schedules  # None: the decorators' and the config file's, read at start
        self._states = {}
        self._reported = set()  # schedules whose unknown job was logged already
        self.clock_offset = 0.0  # the database's clock minus ours, in seconds
        self.statements = 0  # for the benchmark
        self._dumps = json_backend(config.get("json_serializer")).dumps

    # --- the loop -----------------------------------------------------------------------------------------

    def run(self):
        self.clock_offset = self.worker.provider.clock_offset
        self._start_schedules()
        while not self.worker.stopping:
            if self.claim_due():
                self.succeeded()
                continue
            gevent.sleep(self._seconds_to_sleep(self._database_now()))

    def claim_due(self):
        """Claim every schedule that is due now (one statement per BATCH of them); how many were due."""
        now = self._database_now()
        due = [state for state in self._states.values() if self._is_due(state, now)]
        for start in range(0, len(due), BATCH):
            self._claim(due[start:start + BATCH], now)
        return len(due)

    def _database_now(self):
        return dt.datetime.fromtimestamp(time.time() + self.clock_offset, UTC)

    @staticmethod
    def _is_due(state, now):
        return state.next_tick is not None and state.next_tick <= now and state.retry_at <= time.monotonic()

    def _seconds_to_sleep(self, now):
        """Until the earliest next tick (or retry), at most MAX_SLEEP; never 0, so the loop cannot spin."""
        wake = MAX_SLEEP
        for state in self._states.values():
            if state.next_tick is not None:
                wait = (state.next_tick - now).total_seconds() + WAKE_MARGIN
                wake = min(wake, max(wait, state.retry_at - time.monotonic()))
        return max(wake, WAKE_MARGIN)

    def _timed(self, cursor, sql, params):
        sent = time.time()
        cursor.execute(sql, params)
        row = cursor.fetchone() if cursor.description else None
        self.statements += 1
        return row, sent, time.time()

    def _observe_clock(self, database_epoch, sent, received):
        self.clock_offset = database_epoch - (sent + received) / 2

    # --- start --------------------------------------------------------------------------------------------

    def _runnable(self):
        """The schedules whose job this worker has registered; the others are logged once and skipped."""
        schedules = self._configured if self._configured is not None else active_schedules(config.get("schedules"))
        runnable = {}
        for name, schedule in sorted(schedules.items()):
            if schedule.job in registry:
                runnable[name] = schedule
            elif name not in self._reported:
                self._reported.add(name)
                logger.error("exekutor scheduler: schedule %r names job %r, which this worker has not registered "
                             "(see --app); skipped", name, schedule.job)
        return runnable

    def _start_schedules(self):
        """Write this worker's definitions, then read where each schedule stands."""
        from psycopg2.extras import Json

        schedules = self._runnable()
        self._states = {name: _State(schedule) for name, schedule in schedules.items()}
        if not schedules:
            return
        names = sorted(schedules)
        with self.worker.db() as conn, conn.cursor() as cursor:
            self._timed(cursor, UPSERT_SCHEDULES, {"names": names,
                                                   "definitions": [Json(self._stored(schedules[n])) for n in names]})
            self._read(cursor, names)
        logger.info("exekutor scheduler: %d schedule(s): %s", len(names), ", ".join(names[:10]) +
                    (", ..." if len(names) > 10 else ""))

    def _stored(self, schedule):
        """What the table keeps of a schedule: its definition, and how its jobs are enqueued (queue, priority,
        options: the job's own), so that the dashboard's "run now", which may not import the application,
        enqueues the job a tick would (exekutor.schedule_control.run_now)."""
        job = self._job(schedule, dt.datetime.now(UTC))
        return {**schedule.definition(),
                "enqueue": {"queue": job.queue, "priority": job.priority, "options": job.options or None}}

    def _read(self, cursor, names):
        sent = time.time()
        cursor.execute(READ_SCHEDULES, {"names": names})
        rows = cursor.fetchall()
        self.statements += 1
        if rows:
            self._observe_clock(rows[0][2], sent, time.time())
        now = self._database_now()
        for name, last_tick, _ in rows:
            self._states[name].seen(last_tick, now)

    # --- claiming -----------------------------------------------------------------------------------------

    def _claim(self, states, now):
        """One statement for these due schedules: claim their ticks and insert their jobs."""
        plan = [(state, *due) for state in states if (due := state.due_ticks(now)) is not None]
        jobs, params = self._claim_params(plan)
        with self.worker.db() as conn, conn.cursor() as cursor:
            row, sent, received = self._timed(cursor, CLAIM_TICKS, params)
        claimed, inserted, other_names, other_ticks, database_epoch, paused = row
        self._observe_clock(database_epoch, sent, received)
        self._record(plan, set(claimed), dict(zip(other_names, other_ticks)))
        enqueued = [job for name, job in jobs if name in set(claimed) - set(paused)]
        if paused:
            logger.info("exekutor scheduler: paused, no job enqueued for their ticks: %s", ", ".join(paused))
        if enqueued:
            logger.debug("exekutor scheduler: enqueued %d job(s) for %s", inserted, ", ".join(claimed))
            hooks.run_after("after_enqueue", enqueued)

    def _claim_params(self, plan):
        jobs = []
        params = {"names": [], "previous": [], "ticks": [], "job_schedules": [], "ids": [], "queues": [],
                  "priorities": [], "scheduled": [], "payloads": [], "options": []}
        for state, ticks, truncated in plan:
            if not ticks:
                continue
            schedule = state.schedule
            if truncated:
                logger.warning("exekutor scheduler: schedule %r missed more than %d ticks since %s; catch_up "
                               "enqueues the latest %d, the older ones are skipped", schedule.name, len(ticks),
                               state.last_tick, len(ticks))
            params["names"].append(schedule.name)
            params["previous"].append(state.last_tick)
            params["ticks"].append(ticks[-1])
            for tick in ticks:
                job = self._job(schedule, tick)
                jobs.append((schedule.name, job))
                params["job_schedules"].append(schedule.name)
                params["ids"].append(job.id)
                params["queues"].append(job.queue)
                params["priorities"].append(job.priority)
                params["scheduled"].append(tick)
                params["payloads"].append(self._dumps(job.payload))
                params["options"].append(self._dumps(job.options) if job.options else None)
        return jobs, params

    @staticmethod
    def _job(schedule, tick):
        """The job of one tick, with the job's own queue, priority and options (as perform_later would make it).
        Its scheduled_at is the tick; its payload names the schedule and the tick."""
        kwargs = {**schedule.kwargs, "tick": tick} if schedule.pass_tick else schedule.kwargs
        job = JobRequest(registry.get(schedule.job), schedule.args, kwargs)
        job.payload["schedule"] = {"name": schedule.name, "tick": tick.isoformat()}
        return job

    def _record(self, plan, claimed, others):
        """Move each schedule on: to the tick it claimed, or to what the statement saw another worker claim."""
        now = self._database_now()
        for state, ticks, _ in plan:
            name = state.schedule.name
            if name in claimed:
                state.seen(ticks[-1], now)
            elif not ticks:  # nothing due after all (the tick was at or before last_tick)
                state.seen(state.last_tick, now)
            elif name in others and others[name] != state.last_tick:
                state.seen(others[name], now)
            elif name not in others:  # the row is gone (deleted by hand): write it again
                self._start_schedules()
                return
            else:  # locked by a worker claiming it right now, or not due yet in the database's time
                state.retry_at = time.monotonic() + RETRY_DELAY
