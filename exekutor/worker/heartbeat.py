"""The heartbeat: keeps this worker's row fresh and rescues the jobs of dead workers, from the liveness thread.

It runs on the worker's liveness thread (exekutor.worker.liveness) with a connection pool of its own, so a job
that blocks the worker's event loop does not stop it: a blocked loop is not a dead worker. Every
heartbeat_interval, until the worker's row is deleted at the very end of its stop, it:

- updates last_heartbeat_at. If the row is gone, another worker presumed this one dead (the process was stopped,
  or cut off from the database, for worker_timeout) and released its jobs, which may run elsewhere: it sets `lost`
  (the ownership guard then stops every job before it runs another line), says so (log,
  `exekutor_worker_presumed_dead` metric) and has the worker's hub register again (unless it is stopping);
- deletes the rows of workers whose heartbeat is older than worker_timeout (the trigger on that delete puts their
  executing jobs back to pending), but only once its own heartbeats have gone through without a gap for
  worker_timeout: after an outage every worker reconnects at its own pace, and the first one back must not take
  the others, whose heartbeats are still in backoff, for dead. Each job taken from a dead worker gets a
  `WorkerLost` error record; a job that has made `max_job_rescues` workers look dead ends failed instead of being
  handed on again (a job that kills or freezes every worker that runs it);
- stops beating while the watchdog says the worker's loop is wedged for good (`paused`): then other workers rescue
  the jobs it can no longer run.

Only `beat` decides the worker still owns its jobs: `last_success` moves only when the row was found.
"""
import logging
import random
import time

import gevent

from exekutor import hooks
from exekutor.db.pool import ConnectionPool
from exekutor.db.queries import FAIL_OVER_RESCUED, HEARTBEAT, RESCUE_DEAD_WORKERS, RESCUE_ORPHANS, UNBLOCK
from exekutor.error_records import type_name
from exekutor.errors import WorkerLost
from exekutor.worker.component import ErrorStreak

logger = logging.getLogger("exekutor")

WORKER_LOST = type_name(WorkerLost)
FIRST_BEAT_DELAY = 0.25  # seconds after the thread starts


class Heartbeat(ErrorStreak):
    name = "heartbeat"

    def __init__(self, worker, interval, worker_timeout, max_rescues):
        super().__init__(worker)
        self.interval = interval
        self.worker_timeout = worker_timeout
        self.max_rescues = max_rescues
        self.pool = None  # the liveness thread's own connections (own_pool)
        self.last_beat = time.time()  # registration counts as the first beat
        # time.monotonic() when the last heartbeat that found the row was sent, and when the current run of
        # heartbeats without a gap began.
        self.last_success = self.healthy_since = time.monotonic()
        self._ownerless_at = 0.0  # monotonic time of the next rescue that also looks for ownerless jobs
        self.gap = 2 * interval + 1.0
        self.lost = False  # the row was found deleted: the worker's jobs must stop until it registers again
        self.paused = None  # why the watchdog stopped the heartbeat (the worker's loop is wedged), or None
        self.rescued_workers = 0
        self.rescued_jobs = 0
        self.rescue_limit_failed = 0  # jobs failed because they had made max_job_rescues workers look dead
        self.presumed_dead = 0

    def own_pool(self):
        """The liveness thread's connections (heartbeat and watchdog), opened there on first use."""
        if self.pool is None:
            self.pool = ConnectionPool(2, application_name=self.worker.connection_name("heartbeat"), autocommit=True)
        return self.pool

    def close(self):
        if self.pool is not None:
            self.pool.close()

    # --- the loop (in the liveness thread) ----------------------------------------------------------------

    def run(self):
        # Registration was a beat: the first of the loop comes once the worker's start is done, not among its
        # statements (connecting this thread's pool there took the start's CPU).
        gevent.sleep(min(self.interval, FIRST_BEAT_DELAY))
        while True:
            try:
                if self.paused is None:
                    self.beat()
                    self.rescue()
                self.succeeded()
                # Jitter keeps workers started together from beating together.
                delay = self.interval * (0.9 + 0.2 * random.random())
            except Exception as error:  # noqa: BLE001 - the heartbeat never dies of an error
                delay = self.failed(error, longest=self.interval)
                # Hooks run where the application's do, in a greenlet of the worker's hub: a loop callback cannot wait
                # (for a lock this thread holds, say), and a hook may (it logs, at least).
                self.worker.in_hub(gevent.spawn, hooks.run_on, "on_fatal_error", error)
            gevent.sleep(delay)

    # --- beat -------------------------------------------------------------------------------------------

    def beat(self):
        sent = time.monotonic()
        with self.worker.db(self.own_pool()) as conn, conn.cursor() as cursor:
            cursor.execute(HEARTBEAT, (self.worker.id,))
            alive = cursor.fetchone() is not None
        if not alive:
            self._presumed_dead()
            return
        if sent - self.last_success > self.gap:
            self.healthy_since = sent
        self.last_success = sent
        self.last_beat = time.time()
        if not self.lost:
            self.worker.ownership_confirmed()

    def _presumed_dead(self):
        if self.lost:
            return  # the hub is registering again
        self.lost = True  # the ownership guard stops every job at the hub's next turn, before any of them resumes
        self.healthy_since = time.monotonic()
        self.presumed_dead += 1
        self.worker.in_hub(self._rejoin)

    def _rejoin(self):
        """In the worker's hub, as a loop callback: stop what the worker ran at once (the guard may have done it
        already); the log line and the registration in a greenlet. A callback cannot wait, and logging may: for the
        log handler's lock while this thread writes a line (it raised BlockingSwitchOutError, and the worker never
        registered again)."""
        stopped = 0
        try:
            stopped = self.worker.ownership.trip()
        finally:
            gevent.spawn(self._register_again, stopped)

    def _register_again(self, stopped):
        try:
            logger.warning("exekutor worker %s: its row was deleted: another worker presumed it dead (no heartbeat "
                           "for worker_timeout, %gs) and released its jobs; stopped %d job(s) it still ran (they run "
                           "again)%s", self.worker.id, self.worker_timeout, stopped,
                           "" if self.worker.stopping else "; registering again")
            if not self.worker.stopping:
                self.worker.register()
        except Exception as error:  # noqa: BLE001 - the next beat finds no row and tries again
            logger.error("exekutor worker %s: could not register again: %s", self.worker.id, error)
        finally:
            self.lost = False

    # --- rescue -----------------------------------------------------------------------------------------

    def rescue(self):
        if time.monotonic() - self.healthy_since < self.worker_timeout:
            return  # not yet beating steadily for worker_timeout: others may just be reconnecting, as we were
        # Ownerless jobs started more than worker_timeout ago: looking for them once per worker_timeout is enough,
        # and the question reads every entry of the executing index (see RESCUE_DEAD_WORKERS).
        now = time.monotonic()
        with_ownerless = now >= self._ownerless_at
        with self.worker.db(self.own_pool()) as conn, conn.cursor() as cursor:
            dead, ownerless, released, failed = rescue_orphans(cursor, self.worker.id, self.worker_timeout,
                                                               self.max_rescues, with_ownerless)
        if with_ownerless:
            self._ownerless_at = now + self.worker_timeout
        if dead or ownerless:
            self.rescued_workers += dead
            self.rescued_jobs += released + ownerless
            self.rescue_limit_failed += failed
            logger.warning("exekutor worker %s: removed %d dead worker(s) (no heartbeat for %gs), whose %d "
                           "executing job(s) went back to pending to run again, and released %d ownerless job(s)",
                           self.worker.id, dead, self.worker_timeout, released, ownerless)
        if failed:
            logger.error("exekutor worker %s: %d job(s) of the dead worker(s) ended failed instead: each had been "
                         "running on a worker presumed dead %d times (max_job_rescues); such a job kills, freezes or "
                         "blocks every worker that runs it", self.worker.id, failed, self.max_rescues)


def rescue_orphans(cursor, worker_id, worker_timeout, max_rescues, ownerless=True):
    """Remove the workers presumed dead and release their jobs, and (with `ownerless`) the ownerless ones (on an
    autocommit connection's cursor). Returns (dead workers, ownerless jobs released, the dead workers' jobs
    released, jobs failed at max_rescues)."""
    params = {"worker_timeout": worker_timeout, "worker_id": worker_id, "max_rescues": max_rescues,
              "lost_type": WORKER_LOST}
    # One transaction: the dead workers' rows stay locked (no late heartbeat can revive them) while their jobs are
    # recorded, and failed at the limit, before the delete releases the others.
    cursor.execute("BEGIN")
    cursor.execute(FAIL_OVER_RESCUED, params)
    dead_ids, failed = cursor.fetchone()
    cursor.execute(RESCUE_ORPHANS if ownerless else RESCUE_DEAD_WORKERS, dict(params, dead=dead_ids))
    dead, ownerless, _, released = cursor.fetchone()
    cursor.execute("COMMIT")
    if released or ownerless or failed:
        # Their concurrency slots came free with them (migration 0011): the jobs the limits hold back go next.
        cursor.execute(UNBLOCK, (None,))
    return dead, ownerless, released, failed
