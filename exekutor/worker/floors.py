"""Where each reservation starts its walk of the pending index: past the entries of the jobs already reserved.

A reservation walks the pending index `(priority, scheduled_at, enqueued_at)` in order. The entry of every job
reserved since the last VACUUM is still there, dead, and PostgreSQL can neither remove it nor mark it skippable
while any session holds a snapshot older than the reservation that ended it: a walk from the index's start then
visits every job reserved during the whole held period (a soak: 9 ms -> 200 ms pickup p99 after 15 minutes, and
behind the load after 18). So each walk starts at a *floor* per priority, below which this worker knows no ready job
of its own can be, and those entries are never visited again.

The invariant: **a ready job (pending, not held back, due) of this worker's queues and priorities whose key is below
its priority's floor has been announced to this worker by a notification that has not yet been applied, or by
nothing at all only in the cases that reset the floors.** Floors move as follows, all on the database's clock:

- **Raised only by this worker's own reservation, from what its walk proved.** A walk that returned fewer rows than
  its limit reserved every ready job it could see: every floor becomes the statement's now(). One that filled its
  limit stopped at the last job it reserved: priorities below it rise to now(), that priority to the job's key
  (priority, scheduled_at, enqueued_at), the ones above keep theirs. Rows other workers held locked (SKIP LOCKED)
  were passed over: they are being reserved by them, and come back only if that reservation rolls back (below). A
  walk that handed candidates to flow control's admission and had some held back or skipped raises nothing: a
  candidate skipped (a limit appeared meanwhile) is still ready, and where is not known.
- **Lowered by every notification** of jobs that became ready (inserted, retried, released, rescued, promoted by
  a limit, resumed): exekutor sends one from each such statement, delivered when its transaction commits, with the
  lowest scheduled time per queue and the range of priorities. A job whose transaction commits after a walk's
  snapshot is lowered for when its notification arrives; one that arrives while a reservation is in flight is
  applied again after that reservation has raised the floors.
- **Reset** (to minus infinity: walk from the start once) when notifications may have been missed: at every
  (re)connection of the listener, and after a reservation of this worker failed (its reply, and what it proved, are
  unknown). A worker without a listener never raises its floors.
- **Checked** at every poll by a query below the floors (off the reservation path, on its own connection, as far
  back as a passed-over lock can reach, and from the start every ten minutes): a reservation of another worker
  that rolled back after this one passed over its locked rows, or any path that made a job ready without a
  notification, is found there and lowers the floor, also when a reservation is in flight.

Lowering is always safe (a longer walk, never a lost job): so notifications, which any role may send, are trusted
only to lower. A raise is never above what the walk proved: the last reserved job's key, which comes from the
database's own timestamps and converts back to them exactly, or a time less SLACK (times travel as epoch floats).

Priorities are kept as ranges `[low, high]` with one floor each. A priority this worker has seen (a job it
reserved, a notification naming it) gets a range of its own, so its walk starts with an index seek at (priority,
floor); between known priorities, a range's walk filters the other entries in the index without visiting the table.
"""
import bisect
import collections

from exekutor.db.arrays import array

NEG_INF = float("-inf")
BOTTOM = (NEG_INF, NEG_INF)  # a floor below every key
SLACK = 0.00001  # seconds a raised floor stays below what the walk proved (epoch floats round microseconds)
MAX_KNOWN = 64  # priorities with a range of their own; past that, the least recently seen go back into the gaps


class ReservationFloors:
    def __init__(self, lowest, highest, enabled=True):
        self.lowest, self.highest = lowest, highest
        self.enabled = enabled
        self.resets = 0
        self._starts = [lowest]  # start of each range (sorted); a range ends where the next starts
        self._floors = [BOTTOM]  # per range: (scheduled_at, enqueued_at), epoch seconds, compared in that order
        self._known = {}  # priority -> a counter of when it was last seen (for MAX_KNOWN)
        self._seen = 0
        self._lowered = None  # while a reservation is in flight: the lowerings to apply again after it

    # --- what a reservation walks ---------------------------------------------------------------------

    def keys(self):
        """[(low, high, (scheduled, enqueued))] covering the worker's priorities in order: each range's walk starts at
        the index key (low, scheduled, enqueued), epoch seconds (or -inf)."""
        ends = self._starts[1:] + [self.highest + 1]
        return [(start, end - 1, floor) for start, end, floor in zip(self._starts, ends, self._floors)]

    def ranges(self):
        """[(low, high, floor)]: the floor's scheduled time of each range."""
        return [(low, high, floor[0]) for low, high, floor in self.keys()]

    def params(self):
        """The ranges as the array literals RESERVE_JOBS and BELOW_FLOORS take."""
        keys = self.keys()
        return {"floor_from": array(str(low) for low, _, _ in keys),
                "floor_to": array(str(high) for _, high, _ in keys),
                "floor_at": array(_literal(floor[0]) for _, _, floor in keys),
                "floor_after": array(_literal(floor[1]) for _, _, floor in keys)}

    # --- moves --------------------------------------------------------------------------------------------

    def lower(self, low, high, at, known=True):
        """Jobs of priorities low..high became ready, the earliest scheduled at `at` (epoch seconds). `known`: give
        low and high ranges of their own (a notification names them; the check below the floors finds the earliest
        ready job of a whole range, whatever its priority)."""
        low, high = max(low, self.lowest), min(high, self.highest)
        if low > high:
            return
        if known:
            self._know(low)
            self._know(high)
        self._lower(low, high, (at - SLACK, NEG_INF))
        if self._lowered is not None:
            self._lowered.append((low, high, (at - SLACK, NEG_INF)))

    def reset(self):
        self.resets += 1
        self._starts, self._floors = [self.lowest], [BOTTOM]
        self._known.clear()
        if self._lowered is not None:
            self._lowered.append((self.lowest, self.highest, BOTTOM))

    def begin(self):
        """A reservation is about to be sent: notifications from now on are applied again after it."""
        self._lowered = []

    def end(self, now, candidates, limit, last_priority, last_scheduled, priorities=(), last_enqueued=None):
        """The reservation went through at the database's `now`: it walked `candidates` rows (up to `limit`), the
        last at (`last_priority`, `last_scheduled`, `last_enqueued`); `priorities` are those of the jobs it reserved.
        Without `last_enqueued` the last priority's floor is the candidate's scheduled time less SLACK; with it, the
        candidate's exact key (times that came from the database's own timestamps convert back to them exactly), so
        the jobs of one batch reserved before are not walked again."""
        lowered, self._lowered = self._lowered or [], None
        if self.enabled:
            for priority in priorities:
                self._know(priority)
            if candidates < limit:
                self._set(self.lowest, self.highest, (now - SLACK, NEG_INF))
            elif last_priority is not None:
                self._know(last_priority)
                if last_priority > self.lowest:
                    self._set(self.lowest, last_priority - 1, (now - SLACK, NEG_INF))
                last = (last_scheduled - SLACK, NEG_INF) if last_enqueued is None else (last_scheduled, last_enqueued)
                self._set(last_priority, last_priority, last)
        for low, high, floor in lowered:
            self._lower(low, high, floor)

    def settle(self, rows, limit):
        """Take the last row (RESERVE_JOBS' now()) off a reservation's `rows` and raise the floors by what the walk
        proved; returns the other rows. The jobs reserved are the walk's candidates, unless flow control's admission
        had some (the row with a NULL id): those it held back left the index, but one it skipped (a limit that
        appeared meanwhile) is still ready, and where is not known, so that walk raises nothing."""
        now = rows.pop()[9]
        reserved = [row for row in rows if row[0] is not None]
        priorities = {row[2] for row in reserved}
        if len(reserved) < len(rows):
            self.end(now, limit, limit, None, None, priorities)
        elif len(reserved) >= limit:
            last = max(reserved, key=lambda row: (row[2], row[6], row[5]))
            self.end(now, len(reserved), limit, last[2], last[6].timestamp(), priorities,
                     last_enqueued=last[5].timestamp())
        else:
            self.end(now, len(reserved), limit, None, None, priorities)
        return rows

    def abort(self):
        """The reservation failed: what it proved is unknown, and so is what it may have passed over."""
        self._lowered = None
        self.reset()

    # --- the ranges -----------------------------------------------------------------------------------------

    def _know(self, priority):
        if not self.lowest <= priority <= self.highest:
            return
        self._seen += 1
        self._known[priority] = self._seen
        self._split(priority)
        self._split(priority + 1)
        if len(self._known) > MAX_KNOWN:
            self._forget(min(self._known, key=self._known.get))

    def _forget(self, priority):
        """Give a priority's range back to the gaps: a range that starts neither at a known priority nor just after
        one merges into the range before it, with the lower of the two floors."""
        del self._known[priority]
        starts, floors = [self._starts[0]], [self._floors[0]]
        for start, floor in zip(self._starts[1:], self._floors[1:]):
            if start in self._known or start - 1 in self._known:
                starts.append(start)
                floors.append(floor)
            else:
                floors[-1] = min(floors[-1], floor)
        self._starts, self._floors = starts, floors

    def _split(self, at):
        """Make a range start at priority `at` (same floor as the range it was in)."""
        if at > self.highest:
            return
        index = bisect.bisect_right(self._starts, at) - 1
        if self._starts[index] != at:
            self._starts.insert(index + 1, at)
            self._floors.insert(index + 1, self._floors[index])

    def _covered(self, low, high):
        self._split(low)
        self._split(high + 1)
        first = bisect.bisect_left(self._starts, low)
        last = bisect.bisect_right(self._starts, high)
        return range(first, last)

    def _lower(self, low, high, at):
        for index in self._covered(low, high):
            self._floors[index] = min(self._floors[index], at)

    def _set(self, low, high, at):
        for index in self._covered(low, high):
            self._floors[index] = at


def _literal(at):
    return "-Infinity" if at == NEG_INF else repr(at)


class FloorHistory:
    """The lowest floor a reservation started from, per second of the worker's monotonic clock, for the check
    below the floors. A job another worker's reservation held locked while this worker's walk passed over it is no
    lower than the floor that walk started from, and it becomes ready again (if that reservation rolls back) no later
    than the lock is held: the check only looks that far back, so that it does not walk every dead entry at every
    poll. Now and then the check looks at everything (a reservation without statement_timeout can hold its locks
    for any time)."""

    def __init__(self):
        self._lowest = collections.deque()  # (second, lowest floor a walk started from in that second)

    def record(self, now, floors):
        """A reservation starts from `floors` (a ReservationFloors) at monotonic time `now`."""
        lowest, second = min(at for _, _, at in floors.ranges()), int(now)
        if self._lowest and self._lowest[-1][0] == second:
            self._lowest[-1] = (second, min(self._lowest[-1][1], lowest))
        else:
            self._lowest.append((second, lowest))

    def lowest_since(self, since):
        """The lowest floor any walk started from at or after monotonic time `since`, or None if no walk did (none
        can have passed over a job since); older seconds are forgotten."""
        while self._lowest and self._lowest[0][0] < int(since):
            self._lowest.popleft()
        return min((lowest for _, lowest in self._lowest), default=None)
