"""The provider: decides when to reserve jobs and reserves as many as there are free greenlets.

It wakes on a notification from the listener, on the jittered poll interval, at the earliest known
scheduled time of a future job, and when a greenlet frees up while more jobs may be waiting. Each
reservation is one statement (FOR UPDATE SKIP LOCKED) limited to the free greenlets.

Scheduled jobs run on the database's clock, not the worker's: the database says how many seconds remain until
the next future job (NEXT_SCHEDULED), and the offset between the two clocks, estimated at each of those queries,
converts the times notifications carry. When the timer fires, the provider asks the database for the next time
first and reserves second, so a timer that fired a little early re-arms for what remains, and a job due by then
is reserved: nothing waits for the next poll because the worker's clock is off.
"""
import random
import time

import gevent
from gevent.event import Event
from gevent.lock import Semaphore

from exekutor.db.queries import BELOW_FLOORS, NEXT_SCHEDULED, RESERVE_JOBS, UNBLOCK
from exekutor.worker.component import Component
from exekutor.worker.floors import NEG_INF, FloorHistory, ReservationFloors

BATCH_WAIT = 0.002
# Reserving ahead (see Executor.free): for the running jobs expected to end within twice the recent reservation
# statement's time plus this margin, at most AHEAD_MAX seconds ahead.
AHEAD_MARGIN = 0.002
AHEAD_MAX = 0.05
# The check below the floors looks back as far as another worker's reservation may hold rows locked (its
# statement_timeout, this long when there is none) and a poll interval, and at everything this often (seconds).
LOCK_WINDOW = 60.0
FULL_CHECK_EVERY = 600.0


class Provider(Component):
    name = "provider"

    def __init__(self, worker, executor, json_loads):
        super().__init__(worker)
        self.executor = executor
        self._loads = json_loads
        self._wake = Event()
        # Whether jobs may be ready that we have not reserved: set by notifications, polls and full batches.
        self._maybe_more = True
        self._poll_due = True
        self._refresh_due = True  # ask the database when the next future job is due
        self._sweep_due = True  # let limits with room again promote the jobs they hold back (a safety net)
        self._next_due = None  # time.time() (our clock) when the earliest known future job is due
        self.clock_offset = 0.0  # the database's clock minus ours, in seconds
        # Held around each reservation (its jobs are owned in the database but not yet known here until it ends);
        # the reconciler checks that no reservation was in flight, or began, while it read what the worker owns.
        self.reservation_lock = Semaphore()
        self.reservations_begun = 0
        # While jobs are still running, wait up to BATCH_WAIT for batch_size free greenlets: one statement
        # then reserves for many of them instead of one statement per freed greenlet.
        self.batch_size = max(1, executor.max_threads // 4)
        self._batch_ready = Event()
        self._batch_waiting = False
        self.last_poll = None
        # Reservation statements that went through and the seconds they took (for /metrics): the one per-job
        # statement that walks an index past the dead entries VACUUM has not removed yet, so its mean time is
        # what shows a queue table that needs maintenance.
        self.statements = 0
        self.statement_seconds = 0.0
        self._recent_statement = 0.005  # moving average of a reservation statement's seconds
        self.reserved_ahead = 0  # jobs reserved for greenlets whose job was about to end (see Executor.free)
        self.held_back = 0  # reservations in which a limit held candidates back
        # Where reservations start their walk (see exekutor.worker.floors); raised only while notifications arrive.
        self.floors = ReservationFloors(worker.min_priority, worker.max_priority)
        self.below_floors = 0  # ready jobs the check at a poll found below the floors
        self._floor_check = None
        # A worker of every queue asks the timer's question for the queues it knows to have future jobs: None
        # (unknown: at start, and when notifications may have been missed) asks the database to find them all.
        self._future_queues = None
        self._announced = set()  # queues announced while the question was in flight
        self._floor_history = FloorHistory()
        self._full_check_at = 0.0  # monotonic time of the next check from the index's start

    # --- signals from the other components ------------------------------------------------------------

    def job_available(self, earliest, latest=None, lowest=None, highest=None, queue=None):
        """Jobs of `queue`, priorities `lowest`..`highest`, became pending, scheduled from `earliest` to `latest`
        (epoch seconds on the database's clock)."""
        self.floors.lower(self.worker.min_priority if lowest is None else lowest,
                          self.worker.max_priority if highest is None else highest, earliest)
        if queue is not None:
            self._announced.add(queue)
            if self._future_queues is not None:
                self._future_queues.add(queue)
        now = time.time() + self.clock_offset
        if earliest <= now:
            self._maybe_more = True
            if latest is not None and latest > now:
                self._refresh_due = True  # due jobs and future ones together: when is the next future one?
            self._wake.set()
        else:
            self._arm(earliest - self.clock_offset)

    def _arm(self, due):
        if self._next_due is None or due < self._next_due:
            self._next_due = due
            self._wake.set()

    def poll_now(self):
        self._poll_due = True
        self._wake.set()

    def notifications_lost(self):
        """The listener (re)connected: what was announced meanwhile is unknown, so walk from the start once."""
        self.floors.reset()
        self._future_queues = None
        self._refresh_due = True
        self.poll_now()

    def capacity_freed(self):
        if self._maybe_more:
            self._wake.set()
        if self._batch_waiting and self.executor.free() >= self.batch_size:
            self._batch_ready.set()

    def stop(self):
        self._wake.set()

    def kill(self, block=True, timeout=None):
        if self._floor_check is not None:
            self._floor_check.kill(block=block, timeout=timeout)
        super().kill(block=block, timeout=timeout)

    # --- the loop -------------------------------------------------------------------------------------

    def poll_delay(self):
        interval, jitter = self.worker.polling_interval, self.worker.polling_jitter
        return interval * (1 + jitter * (random.random() - 0.5))

    def run(self):
        next_poll = time.monotonic() + self.poll_delay()
        while not self.worker.stopping:
            if self._poll_due:
                self._maybe_more = self._refresh_due = True
                self.last_poll = time.time()
                next_poll = time.monotonic() + self.poll_delay()
                self._poll_due = False
                self._sweep_due = True
                self._check_floors()
            if self._next_due is not None and self._next_due <= time.time():
                self._next_due = None
                self._maybe_more = self._refresh_due = True
            if self._sweep_due:
                self._sweep_limits()
                self._sweep_due = False
            if self._refresh_due:
                # Before reserving: a job due by the time of this query is then reserved, one still in the
                # future gets the timer (see the module's docstring).
                self._refresh_next_scheduled()
                self._refresh_due = False
            if self._maybe_more and self.executor.free(self._ahead()) > 0:
                self._reserve()
                self.succeeded()
                continue
            self._wake.wait(self._seconds_until_wake(next_poll))
            self._wake.clear()
            if time.monotonic() >= next_poll:
                self._poll_due = True

    def _seconds_until_wake(self, next_poll):
        now = time.monotonic()
        timeout = next_poll - now
        if self._next_due is not None:
            timeout = min(timeout, self._next_due - time.time())
        if self._maybe_more:
            # More jobs may be waiting: wake when running ones come within reach of reserving ahead.
            ahead = self._ahead()
            ending = self.executor.next_expected_end(now + ahead)
            if ending is not None:
                timeout = min(timeout, ending - ahead - now)
        return max(0.0, timeout)

    def _ahead(self):
        """How far ahead (seconds) to count greenlets as free: about a reservation's round trip."""
        return min(AHEAD_MAX, AHEAD_MARGIN + 2 * self._recent_statement)

    def _reserve(self):
        self._await_batch()
        limit = self.executor.free(self._ahead())
        if limit <= 0:
            return
        free_now = self.executor.free()
        self._maybe_more = False
        with self.reservation_lock:
            self.reservations_begun += 1
            self.floors.begin()
            self._floor_history.record(time.monotonic(), self.floors)
            try:
                with self.worker.db() as conn, conn.cursor() as cursor:
                    started = time.monotonic()
                    cursor.execute(RESERVE_JOBS, dict(self.worker.reserve_params(limit), **self.floors.params()))
                    rows = cursor.fetchall()
                took = time.monotonic() - started
                self.statements += 1
                self.statement_seconds += took
                self._recent_statement += 0.2 * (took - self._recent_statement)
            except BaseException:
                # The jobs this reservation was for are still waiting: retry after the backoff, not at the next
                # poll. (If it committed all the same, the heartbeat's reconciliation releases what it reserved.)
                self._maybe_more = True
                self.floors.abort()
                raise
            self.floors.enabled = self._listening()
            self.floors.settle(rows, limit)
            if rows and rows[-1][0] is None:
                # Candidates a limit held back (they left the reservation index): the next ones may be ready.
                rows.pop()
                self._maybe_more = True
                self.held_back += 1
            if len(rows) >= limit:
                self._maybe_more = True
            self.reserved_ahead += max(0, len(rows) - free_now)
            rows.sort(key=lambda row: (row[2], row[6], row[5]))
            for row in rows:
                self.executor.submit(job_info(row, self._loads))

    def _await_batch(self):
        # Greenlets finishing in this loop iteration free up first.
        gevent.sleep(0)
        if self.executor.free(self._ahead()) >= self.batch_size or not self.executor.busy():
            return
        self._batch_waiting = True
        self._batch_ready.clear()
        try:
            self._batch_ready.wait(BATCH_WAIT)
        finally:
            self._batch_waiting = False

    def _sweep_limits(self):
        """Promote what every limit has room for. Slots come free when a job leaves executing, and whoever
        makes it leave promotes the next ones; this catches what they could not (a worker killed in between, a
        cancel, a resumed queue)."""
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(UNBLOCK, (None,))

    def _listening(self):
        """Floors rise only while notifications can lower them again."""
        listener = self.worker.listener
        return listener is not None and listener.connected

    def _check_floors(self):
        """Look below the floors for ready jobs, in a greenlet of its own: under a long-held snapshot this walks
        every dead entry the reservations skip, and must not hold them up."""
        if self._floor_check is None or self._floor_check.dead:
            self._floor_check = gevent.spawn(self._below_floors)

    def _below_floors(self):
        now = time.monotonic()
        full = now >= self._full_check_at
        if full:
            since = NEG_INF
        else:
            window = max(self.worker.statement_timeout or LOCK_WINDOW, LOCK_WINDOW) + self.worker.polling_interval
            since = self._floor_history.lowest_since(now - window - 1.0)
            if since is None:
                return  # no walk passed over anything since the last checks
        params = dict(self.worker.reserve_params(0), since=since, **self.floors.params())
        try:
            with self.worker.db() as conn, conn.cursor() as cursor:
                cursor.execute(BELOW_FLOORS, params)
                found = cursor.fetchall()
        except Exception:  # noqa: BLE001 - the next poll asks again; a failing database shows elsewhere
            return
        if full:
            self._full_check_at = now + FULL_CHECK_EVERY
        for low, high, scheduled in found:
            self.below_floors += 1
            self.floors.lower(low, high, scheduled, known=False)
            self._maybe_more = True
            self._wake.set()

    def _refresh_next_scheduled(self):
        params = self.worker.reserve_params(0)
        if self.worker.queues is None and self._future_queues is not None:
            params["queues"] = sorted(self._future_queues)
        self._announced = set()
        sent = time.time()
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(NEXT_SCHEDULED, params)
            seconds, database_now, future = cursor.fetchone()
        if self.worker.queues is None and self._listening():
            # Those without future jobs leave the set; one announced meanwhile stays (its job may be newer).
            self._future_queues = set(future) | self._announced
        received = time.time()
        self.clock_offset = float(database_now) - (sent + received) / 2
        self._next_due = received + float(seconds) if seconds is not None else None


def job_info(row, loads):
    """The job info mapping the executor runs, from a reservation row (RESERVE_JOBS' columns)."""
    (job_id, queue, priority, payload, options, enqueued_at, scheduled_at, attempts, releases, waited,
     holds) = row
    return {"id": job_id, "queue": queue, "priority": priority, "payload": _load_payload(loads, payload),
            "options": options or {}, "enqueued_at": enqueued_at, "scheduled_at": scheduled_at,
            "attempts": attempts, "releases": releases, "waited": waited, "holds": holds}


def _load_payload(loads, text):
    """A payload that does not parse becomes None: the job then fails with a clear error, not the provider."""
    try:
        return loads(text)
    except Exception:  # noqa: BLE001
        return None
