"""ReservationFloors alone (no database), against a brute-force model: one floor per priority in a small range.

The danger of the floors is a ready job stranded below one, so the model is the specification written as plainly as
possible (exekutor/worker/floors.py's docstring), and the real structure, which keeps ranges of priorities and merges
the ones it forgets, is checked against it after every move: it may be LOWER than the model (a merge takes the lower
floor: a longer walk, never a lost job), never higher. On top of that, each promise the docstring makes is checked on
its own: a lowering holds until a reservation that began after it ends (also when it arrived between begin() and
end()), a reset or an abort brings every floor to -inf, a walk that fell short of its limit raises every floor it was
not lowered meanwhile to its now() less SLACK, and floors that are not enabled never rise above -inf.
"""
import contextlib
import datetime as dt
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exekutor.worker import floors as floors_module
from exekutor.worker.floors import NEG_INF, SLACK, ReservationFloors
from exekutor.worker.listener import parse_notification

LOWEST, HIGHEST = 1, 12  # the worker's priorities in most examples: small, so that the model is a dict
# Examples per model test: more than the CI profile's 20 (a merge that took the higher floor needs about a hundred
# to show), still about a second each; the long profile's count when it is higher.
EXAMPLES = max(250, settings.default.max_examples)


@contextlib.contextmanager
def max_known(value):
    """Run with floors.MAX_KNOWN = value (small values make the structure forget and merge within 12 priorities)."""
    saved = floors_module.MAX_KNOWN
    floors_module.MAX_KNOWN = value
    try:
        yield
    finally:
        floors_module.MAX_KNOWN = saved


class Model:
    """The specification: a floor per priority, and the lowerings to apply again after the reservation in flight."""

    def __init__(self, lowest, highest):
        self.lowest, self.highest = lowest, highest
        self.floor = {p: NEG_INF for p in range(lowest, highest + 1)}
        self.lowered = None

    def lower(self, low, high, at):
        for p in range(max(low, self.lowest), min(high, self.highest) + 1):
            self.floor[p] = min(self.floor[p], at - SLACK)
        if self.lowered is not None:
            self.lowered.append((low, high, at - SLACK))

    def reset(self):
        self.floor = dict.fromkeys(self.floor, NEG_INF)
        if self.lowered is not None:
            self.lowered.append((self.lowest, self.highest, NEG_INF))

    def begin(self):
        self.lowered = []

    def end(self, enabled, now, candidates, limit, last_priority, last_scheduled, exact=False):
        """`exact`: the walk's last key is known to the microsecond (settle(): its enqueued time too), and the
        floor of its priority is that key, not its scheduled time less SLACK."""
        lowered, self.lowered = self.lowered or [], None
        if enabled:
            for p in self.floor:
                if candidates < limit or p < last_priority:
                    self.floor[p] = now - SLACK
                elif p == last_priority:
                    self.floor[p] = last_scheduled - (0 if exact else SLACK)
        for low, high, at in lowered:
            for p in range(max(low, self.lowest), min(high, self.highest) + 1):
                self.floor[p] = min(self.floor[p], at)

    def abort(self):
        self.lowered = None
        self.reset()


def per_priority(floors):
    """The real structure's floor of every priority, from ranges()."""
    return {p: at for low, high, at in floors.ranges() for p in range(low, high + 1)}


def parse_array(literal, convert):
    """A one-dimensional PostgreSQL array literal of unquoted numbers, as PostgreSQL reads it."""
    assert literal.startswith("{") and literal.endswith("}"), literal
    body = literal[1:-1]
    return [convert(item) for item in body.split(",")] if body else []


def pg_float8(text):
    """float8in's reading of an element (the literals use Python's repr, and -Infinity for minus infinity)."""
    assert text == "-Infinity" or (text.lower() not in ("inf", "-inf", "nan", "infinity") and " " not in text), text
    return NEG_INF if text == "-Infinity" else float(text)


def check_structure(floors, lowest, highest, extra):
    ranges = floors.ranges()
    assert ranges[0][0] == lowest and ranges[-1][1] == highest, ranges
    for (_, high, _), (next_low, _, _) in zip(ranges, ranges[1:]):
        assert next_low == high + 1, ranges  # sorted, disjoint, no gap
    assert all(low <= high for low, high, _ in ranges), ranges
    assert all(not math.isnan(at) and at != math.inf for _, _, at in ranges), ranges
    # A range per priority it knows and one for the gap after each, plus the first; a lowering applied again after
    # a reservation that forgot its priorities splits the ranges again (two more each) until the next forget.
    assert len(ranges) <= 2 * floors_module.MAX_KNOWN + 1 + extra, (len(ranges), extra, ranges)
    params = floors.params()
    assert parse_array(params["floor_from"], int) == [low for low, _, _ in ranges]
    assert parse_array(params["floor_to"], int) == [high for _, high, _ in ranges]
    assert parse_array(params["floor_at"], pg_float8) == [at for _, _, at in ranges]


# --- the moves, as data ----------------------------------------------------------------------------------------

times = st.integers(0, 60).map(float)  # whole seconds: the model's arithmetic is then exactly the structure's


def strategies(lowest, highest):
    """Moves over a worker of priorities lowest..highest: lower, reset, toggle (the provider sets `enabled` before
    each end from whether its listener is connected) and reservations."""
    # Notifications may name priorities outside the worker's range.
    priorities = st.integers(lowest - 3, highest + 3)
    lowering = st.tuples(st.just("lower"), priorities, priorities, times).map(
        lambda m: (m[0], min(m[1], m[2]), max(m[1], m[2]), m[3]))
    resetting = st.just(("reset",))

    @st.composite
    def reservations(draw):
        """begin(), the moves while it is in flight, then end() (directly or through settle()) or abort()."""
        moves = draw(st.lists(st.one_of(lowering, lowering, resetting), max_size=4))
        if draw(st.integers(0, 5)) == 0:
            return ("reserve", moves, "abort", None)
        limit = draw(st.integers(1, 4))
        candidates = draw(st.integers(0, limit))
        reserved = draw(st.lists(st.integers(lowest, highest), max_size=candidates))
        last = (draw(st.integers(lowest, highest)), draw(times)) if candidates else None
        via = draw(st.sampled_from(["end", "settle"]))
        return ("reserve", moves, via, (draw(times), candidates, limit, last, reserved))

    return lowering, resetting, reservations()


def moves_over(lowest, highest, max_size=25, toggles=True):
    lowering, resetting, reserving = strategies(lowest, highest)
    kinds = [lowering, lowering, resetting, reserving] + ([st.just(("toggle",))] if toggles else [])
    return st.lists(st.one_of(*kinds), max_size=max_size)


def account_rows(now, candidates, last, reserved):
    """A reservation's rows as RESERVE_JOBS returns them for a walk of `candidates` rows, all reserved, the last at
    `last` (priority, scheduled), other priorities from `reserved` (at most the last's): then the row with now()."""
    rows = []
    if candidates:
        last_priority, last_scheduled = last
        others = [min(p, last_priority) for p in reserved][:candidates - 1]
        others += [last_priority] * (candidates - 1 - len(others))
        for i, p in enumerate(others):
            rows.append(job_row(f"id-{i}", p, last_scheduled - 1.0 if p == last_priority else last_scheduled))
        rows.append(job_row("id-last", last_priority, last_scheduled))
    rows.append((None, None, None, None, None, None, None, None, None, now, None))
    return rows


def job_row(job_id, priority, scheduled):
    at = dt.datetime.fromtimestamp(scheduled, dt.timezone.utc)
    return (job_id, "default", priority, "{}", None, at, at, 1, 0, 0.0, None)


def run_moves(moves, lowest=LOWEST, highest=HIGHEST, enabled=True, toggles=True):
    """Apply `moves` to the real structure and the model, checking after each one."""
    real = ReservationFloors(lowest, highest, enabled=enabled)
    model = Model(lowest, highest)
    never_enabled = not enabled and not toggles
    obligations = []  # lowerings not superseded by a reservation that began after them: (low, high, at - SLACK)
    extra = 0  # ranges a lowering applied again after a reservation may add (see check_structure)

    def check(stage):
        floors = per_priority(real)
        for p, expected in model.floor.items():
            assert floors[p] <= expected, (stage, "above the model", p, floors[p], expected, real.ranges())
        for low, high, at in obligations:
            for p in range(max(low, lowest), min(high, highest) + 1):
                assert floors[p] <= at, (stage, "a lowering was lost", (low, high, at), p, floors[p])
        if never_enabled:
            assert all(at == NEG_INF for at in floors.values()), (stage, "floors not enabled rose", real.ranges())
        check_structure(real, lowest, highest, extra)

    def lower_or_reset(move, in_flight):
        nonlocal extra
        before = per_priority(real)
        if move[0] == "lower":
            _, low, high, at = move
            real.lower(low, high, at)
            model.lower(low, high, at)
            obligations.append((low, high, at - SLACK))
        else:
            real.reset()
            model.reset()
            assert real.ranges() == [(lowest, highest, NEG_INF)]
            if not in_flight:
                obligations.clear()
                extra = 0
        after = per_priority(real)
        assert all(after[p] <= before[p] for p in after), (move, "a lowering raised a floor")

    check("start")
    for move in moves:
        if move[0] in ("lower", "reset"):
            lower_or_reset(move, in_flight=False)
            check(move[0])
            continue
        if move[0] == "toggle":
            enabled = not enabled
            continue
        _, during, outcome, walk = move
        real.begin()
        model.begin()
        superseded = list(obligations)  # where this reservation's walk starts from
        for inner in during:
            lower_or_reset(inner, in_flight=True)
            check("in flight")
        if outcome == "abort":
            real.abort()
            model.abort()
            assert real.ranges() == [(lowest, highest, NEG_INF)]
            obligations.clear()
            extra = 0
            check("abort")
            continue
        now, candidates, limit, last, reserved = walk
        last_priority, last_scheduled = last if last else (None, None)
        before = per_priority(real)
        real.enabled = enabled
        if outcome == "settle":
            rows = account_rows(now, candidates, last, reserved)
            assert real.settle(rows, limit) == account_rows(now, candidates, last, reserved)[:-1]
        else:
            real.end(now, candidates, limit, last_priority, last_scheduled, set(reserved))
        model.end(enabled, now, candidates, limit, last_priority, last_scheduled, exact=outcome == "settle")
        # The lowerings that arrived in flight must survive the raise; those before it are superseded by its walk.
        for item in superseded:
            obligations.remove(item)
        extra = max(extra, 2 * len(during))
        after = per_priority(real)
        if not enabled:
            assert all(after[p] <= before[p] for p in after), "floors rose while not enabled"
        elif candidates < limit:
            # Every floor is the walk's now() less SLACK, unless lowered meanwhile (then the lower of the two).
            expected = dict.fromkeys(after, now - SLACK)
            for inner in during:
                low, high, at = ((lowest, highest, NEG_INF) if inner[0] == "reset"
                                 else (inner[1], inner[2], inner[3] - SLACK))
                for p in range(max(low, lowest), min(high, highest) + 1):
                    expected[p] = min(expected[p], at)
            assert after == expected, (after, expected)
        check("end")
    return real


@settings(max_examples=EXAMPLES)
@given(moves=moves_over(LOWEST, HIGHEST), known=st.sampled_from([2, 3, 5, 64]))
def test_floors_follow_the_model_and_keep_every_lowering(moves, known):
    with max_known(known):
        run_moves(moves)


@settings(max_examples=EXAMPLES)
@given(moves=moves_over(LOWEST, HIGHEST, toggles=False), known=st.sampled_from([2, 3, 64]))
def test_floors_that_are_not_enabled_never_rise(moves, known):
    with max_known(known):
        run_moves(moves, enabled=False, toggles=False)


@settings(max_examples=EXAMPLES)
@given(moves=moves_over(5, 60, max_size=40), known=st.sampled_from([2, 4]))
def test_many_priorities_and_few_known_ones_stay_a_few_ranges(moves, known):
    """Priorities 5..60 with 2 or 4 known at a time: the structure forgets and merges, and stays within its bound,
    never above the model."""
    with max_known(known):
        run_moves(moves, lowest=5, highest=60)


def test_a_lowering_in_flight_survives_the_raise_and_one_before_it_does_not():
    floors = ReservationFloors(1, 10)
    floors.begin()
    floors.end(100.0, 0, 5, None, None)
    assert floors.ranges() == [(1, 10, 100.0 - SLACK)]
    floors.lower(3, 4, 50.0)  # before the next reservation: its walk starts there, and proves what it proves
    floors.begin()
    floors.lower(7, 7, 60.0)  # in flight: its job may have committed after the walk's snapshot
    floors.end(200.0, 1, 5, 7, 150.0, {7})
    assert per_priority(floors) == {**{p: 200.0 - SLACK for p in range(1, 11)}, 7: 60.0 - SLACK}


def test_a_stranded_job_the_poll_check_finds_while_a_reservation_is_in_flight_survives_its_raise():
    """The check below the floors runs in a greenlet of its own: its lowering (a whole range, no priority made known)
    may land while a reservation is in flight, whose raise must not undo it."""
    floors = ReservationFloors(1, 10)
    floors.begin()
    floors.end(100.0, 0, 5, None, None)
    floors.begin()
    floors.lower(2, 9, 40.0, known=False)
    assert floors.ranges() == [(1, 1, 100.0 - SLACK), (2, 9, 40.0 - SLACK), (10, 10, 100.0 - SLACK)]
    floors.end(200.0, 0, 5, None, None)
    assert per_priority(floors) == {**{p: 200.0 - SLACK for p in range(1, 11)},
                                    **{p: 40.0 - SLACK for p in range(2, 10)}}


def test_a_full_walk_raises_the_priorities_below_its_last_to_now_and_its_last_to_its_time():
    floors = ReservationFloors(1, 10)
    floors.begin()
    floors.end(100.0, 3, 3, 4, 80.0, {2, 4})
    got = per_priority(floors)
    assert [got[p] for p in (1, 2, 3)] == [100.0 - SLACK] * 3
    assert got[4] == 80.0 - SLACK
    assert all(got[p] == NEG_INF for p in range(5, 11))


def test_a_forgotten_priority_gives_its_range_back_with_the_lower_floor():
    with max_known(2):
        floors = ReservationFloors(1, 10)
        floors.begin()
        floors.end(100.0, 0, 5, None, None)
        floors.lower(3, 3, 10.0)
        floors.lower(5, 5, 90.0)
        floors.lower(7, 7, 95.0)  # a third known priority: 3, the least recently seen, is forgotten
        got = per_priority(floors)
        assert got[3] == 10.0 - SLACK and got[5] == 90.0 - SLACK and got[7] == 95.0 - SLACK
        assert len(floors.ranges()) <= 5


def test_reset_and_abort_walk_from_the_start():
    floors = ReservationFloors(1, 10)
    floors.begin()
    floors.end(100.0, 0, 5, None, None)
    floors.reset()
    assert floors.ranges() == [(1, 10, NEG_INF)]
    floors.begin()
    floors.end(100.0, 0, 5, None, None)
    floors.begin()
    floors.abort()
    assert all(at == NEG_INF for _, _, at in floors.ranges())
    floors.begin()
    floors.reset()  # the listener reconnected while a reservation was in flight
    floors.end(300.0, 0, 5, None, None)
    assert all(at == NEG_INF for _, _, at in floors.ranges())


# The oldest time PostgreSQL's to_timestamp() takes (4714-11-24 00:00 BC, less a margin for rounding), as epoch seconds.
OLDEST_TIMESTAMP = -210866803200.0 + 1.0


@pytest.mark.parametrize("earliest", [-1e12, -3e11, -1.7976931348623157e308])
def test_a_notification_far_in_the_past_lowers_to_a_floor_postgresql_can_take(earliest):
    """What the listener accepts is what the floors take (Listener._handle -> Provider.job_available ->
    ReservationFloors.lower), and the floors must stay times RESERVE_JOBS can convert, or -inf."""
    parsed = parse_notification(json.dumps({"q": "default", "p": 1, "P": 10, "t": earliest, "T": 0}))
    floors = ReservationFloors(1, 10)
    floors.begin()
    floors.end(1.8e9, 0, 5, None, None)  # a reservation raised the floors
    if parsed is not None:
        _, lowest, highest, at, _ = parsed
        floors.lower(lowest, highest, at)
    for at in parse_array(floors.params()["floor_at"], pg_float8):
        assert at == NEG_INF or at >= OLDEST_TIMESTAMP, floors.params()


@given(earliest=st.floats(min_value=OLDEST_TIMESTAMP + 1, max_value=4e11, allow_nan=False))
def test_a_notification_at_any_time_postgresql_has_lowers_to_a_floor_it_can_take(earliest):
    parsed = parse_notification(json.dumps({"q": "default", "p": 1, "P": 10, "t": earliest, "T": 4e11}))
    floors = ReservationFloors(1, 10)
    floors.begin()
    floors.end(4e11 + 1, 0, 5, None, None)
    floors.lower(*parsed[1:3], parsed[3])
    assert set(parse_array(floors.params()["floor_at"], pg_float8)) == {earliest - SLACK}
