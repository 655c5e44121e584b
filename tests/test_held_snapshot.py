"""Under a snapshot held from the start (a report, pg_dump, a session idle in transaction), VACUUM can remove nothing:
the pending index keeps an entry for every job reserved since, and a reservation walking it from its start visits
all of them. The reservation floors (exekutor/worker/floors.py) must keep each walk's index work bounded whatever
the number of jobs run meanwhile: 200,000 no-op jobs through one real worker, enqueued in rounds while it runs, and
the blocks each scan of the pending index reads, measured per round from PostgreSQL's statistics, must stay a few.

The statistics count every use of the index, so each round's window holds only the worker's reservations: it
starts after the round's INSERTs (their index insertions count too) were flushed to the statistics (their backend
exits), and ends before the next round's. The worker polls every 10 minutes, so its check below the floors (a walk
over every dead entry, once per poll) runs only at its start, when the floors are at -inf and it reads nothing.
Besides the blocks, the entries the scans return (pg_stat_user_indexes.idx_tup_read): each is a table visit, and
B-tree deduplication packs equal keys into few blocks, so blocks alone would hide a walk over many equal keys.
"""
import time

import psycopg2
import pytest

from tests.conftest import query, scalar, wait_for

pytestmark = pytest.mark.slow

BACKLOG = 2_000  # jobs left pending when a round's window closes: the walks are full ones until then
INDEX = "exekutor_jobs_pending_idx"
PAYLOAD = '{"job": "tests.noop", "args": [], "kwargs": {}}'


def index_use(conn):
    """(scans, blocks read or hit, entries returned) of the pending index so far, from a fresh statistics
    snapshot. The entries are those the scans returned to be checked in the table, dead ones included."""
    query(conn, "SELECT pg_stat_clear_snapshot()")
    return tuple(query(conn, "SELECT s.idx_scan, io.idx_blks_hit + io.idx_blks_read, s.idx_tup_read "
                             "FROM pg_stat_user_indexes s "
                             "JOIN pg_statio_user_indexes io USING (indexrelid) WHERE s.indexrelname = %s",
                       (INDEX,))[0])


def inserted(conn):
    query(conn, "SELECT pg_stat_clear_snapshot()")
    return scalar(conn, "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 'exekutor_jobs'")


def completed(conn):
    return scalar(conn, "SELECT count(*) FROM exekutor_jobs WHERE status = 'c'")


def enqueue_round(url, db, count, statement):
    """`count` pending no-op jobs in INSERTs of `statement` rows, on a connection closed afterwards; returns once
    its statistics (index insertions included) are flushed: its backend flushes them when it exits."""
    before = inserted(db)
    conn = psycopg2.connect(url, application_name="held-snapshot inserts")
    try:
        conn.autocommit = True
        pid = scalar(conn, "SELECT pg_backend_pid()")
        for _ in range(count // statement):
            query(conn, "INSERT INTO exekutor_jobs (queue, payload) SELECT 'default', %s::jsonb "
                        "FROM generate_series(1, %s)", (PAYLOAD, statement))
    finally:
        conn.close()
    wait_for(lambda: not query(db, "SELECT 1 FROM pg_stat_activity WHERE pid = %s", (pid,)), 30,
             message="the inserting backend to exit")
    wait_for(lambda: inserted(db) >= before + count, 30, message="the inserts' statistics")


class Measure:
    """A run's pending-index use: per round (scans, blocks, entries), and per scan over the first and the second
    half of the rounds (the first round left out: the worker's start)."""

    def __init__(self, total, windows, elapsed, dead):
        self.total, self.windows, self.elapsed, self.dead = total, windows, elapsed, dead
        half = max(1, len(windows) // 2)
        # A backend flushes its statistics at most once a second, and an idle one may wait 10 s: a short window may
        # show none of the worker's work, the next one more (work flushed in the gap around an insert is lost to the
        # measure, never mixed into it). Halves of a run hold several flushes each.
        self.first = self._per_scan(windows[1:half] or windows[:1])
        self.last = self._per_scan(windows[half:])

    @staticmethod
    def _per_scan(windows):
        scans, blocks, entries = map(sum, zip(*windows))
        assert scans > 0, windows
        return {"scans": scans, "blocks": blocks / scans, "entries": entries / scans}

    def __str__(self):
        return (f"{self.total} jobs in {self.elapsed:.0f}s, {self.dead} dead rows; pending index per scan: first "
                f"half {self.first['blocks']:.2f} blocks, {self.first['entries']:.0f} entries "
                f"({self.first['scans']} scans); second half {self.last['blocks']:.2f} blocks, "
                f"{self.last['entries']:.0f} entries ({self.last['scans']} scans); (scans, blocks, entries) by round: "
                f"{self.windows}")

    __repr__ = __str__  # in an assertion's message


def run_under_held_snapshot(start_worker, db, url, total, rounds, statement):
    """`total` no-op jobs through one worker in `rounds`, each enqueued in INSERTs of `statement` rows, under a
    snapshot held from before the first; every job completed exactly once. Returns the Measure."""
    held = psycopg2.connect(url, application_name="held snapshot")
    try:
        held.set_session(isolation_level="REPEATABLE READ")
        assert scalar(held, "SELECT count(*) FROM exekutor_jobs") == 0  # the snapshot is taken: held from now on
        start_worker("--threads", "100", "--poll-interval", "600", "--identifier", "held-snapshot")
        wait_for(lambda: query(db, "SELECT 1 FROM pg_stat_activity WHERE application_name = "
                                   "'exekutor held-snapshot listener' AND query LIKE 'LISTEN%%'"), 20,
                 message="the listener")
        started = time.monotonic()
        per_round = total // rounds
        windows = []
        for number in range(rounds):
            enqueue_round(url, db, per_round, statement)
            before = index_use(db)
            target = (number + 1) * per_round - BACKLOG
            wait_for(lambda target=target: completed(db) >= target, 120, message=f"round {number} to be run",
                     interval=0.2)
            windows.append(tuple(after - before for after, before in zip(index_use(db), before)))
        wait_for(lambda: completed(db) == total, 120, message="every job to complete", interval=0.2)
        elapsed = time.monotonic() - started
        dead = scalar(db, "SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = 'exekutor_jobs'")
        # The snapshot was held throughout: it still sees the empty table.
        assert scalar(held, "SELECT count(*) FROM exekutor_jobs") == 0
    finally:
        held.rollback()
        held.close()
    assert dict(query(db, "SELECT status, count(*) FROM exekutor_jobs GROUP BY status")) == {"c": total}
    assert scalar(db, "SELECT max(attempts) FROM exekutor_jobs") == 1  # each reserved once
    measure = Measure(total, windows, elapsed, dead)
    print(f"\nheld snapshot: {measure}")
    return measure


@pytest.mark.timeout(300)
def test_reservations_walk_a_bounded_part_of_the_pending_index_under_a_held_snapshot(start_worker, db, database_url):
    """200,000 jobs in 20 rounds of 10 INSERTs of 1,000. With the floors: 2-3 blocks and about 50 entries a scan (the
    jobs the previous walk reserved), in both halves of the run. Without them (a walk from the index's start) they grow
    with the jobs run: 14-16 blocks early in the run, 86-87 at its end (entries 12,000-15,000 -> 85,000)."""
    measure = run_under_held_snapshot(start_worker, db, database_url, total=200_000, rounds=20, statement=1_000)
    first, last = measure.first, measure.last
    assert last["blocks"] <= 10, measure
    assert last["blocks"] <= 1.5 * first["blocks"] + 2, measure  # not growing with the jobs reserved meanwhile
    # A walk re-reads the entries of the jobs the previous walk reserved, and nothing before them.
    assert last["entries"] <= 1_000, measure
    assert last["entries"] <= 1.5 * first["entries"] + 100, measure


@pytest.mark.timeout(300)
def test_jobs_of_one_big_insert_are_not_walked_again_under_a_held_snapshot(start_worker, db, database_url):
    """The rows of one INSERT get their times from clock_timestamp() (schema 0012), so they have keys of their own and
    the floor (the last candidate's key) passes those reserved. With the transaction's now() as before, every walk
    re-read the reserved jobs of its statement: 12,000 entries a scan with statements of 50,000 jobs."""
    measure = run_under_held_snapshot(start_worker, db, database_url, total=100_000, rounds=2, statement=50_000)
    assert measure.last["entries"] <= 1_000, measure
