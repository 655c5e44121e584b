"""The queue table under sustained load: per-job statements by primary key, housekeeping by index, table settings.

Plans, not timings: each test builds the table state in which the planner used to choose a path whose cost grows
with dead rows or with the backlog, and asserts the path the statement takes now.
"""
import json
import uuid

import psycopg2
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exekutor.db.arrays import array
from exekutor.db.queries import NEXT_SCHEDULED, RELEASE_UNHELD
from exekutor.execution import Outcome
from exekutor.worker.completer import completion
from tests.conftest import query, scalar, wait_for

pytestmark = pytest.mark.timeout(120)


def plan(conn, sql, params):
    rows = query(conn, "EXPLAIN " + sql, params)
    return "\n".join(row[0] for row in rows)


@pytest.fixture
def busy_table(db):
    """50,000 jobs that passed through a worker and 100 executing for a worker the statistics have never seen:
    the planner then expects next to nothing under that worker id in the executing index."""
    old_worker, new_worker = str(uuid.uuid4()), str(uuid.uuid4())
    query(db, "INSERT INTO exekutor_jobs (payload, status, attempts, worker_id, started_at, finished_at) "
              "SELECT '{\"job\": \"tests.noop\"}', 'c', 1, %s, now(), now() FROM generate_series(1, 50000)",
          (old_worker,))
    query(db, "ANALYZE exekutor_jobs")
    query(db, "INSERT INTO exekutor_jobs (payload, status, attempts, worker_id, started_at) "
              "SELECT '{\"job\": \"tests.noop\"}', 'e', 1, %s, now() FROM generate_series(1, 100)", (new_worker,))
    ids = [row[0] for row in query(db, "SELECT id::text FROM exekutor_jobs WHERE status = 'e'")]
    return new_worker, ids


def test_completion_finds_its_rows_by_primary_key(db, busy_table):
    worker_id, ids = busy_table
    for status in ("c", "retry"):
        outcomes = [Outcome(job_id, status, 0.001, delay=1.0, attempts=1) for job_id in ids]
        sql, params = completion(outcomes, worker_id, json.dumps)
        shown = plan(db, sql, params)
        assert "exekutor_jobs_pkey" in shown and "exekutor_jobs_executing_idx" not in shown, shown
    # And it still writes what it fences: this worker's rows at their attempt, nothing else.
    sql, params = completion([Outcome(job_id, "c", 0.001, attempts=1) for job_id in ids], worker_id, json.dumps)
    assert scalar(db, sql, params) == 100
    sql, params = completion([Outcome(ids[0], "c", 0.001, attempts=1)], str(uuid.uuid4()), json.dumps)
    assert scalar(db, sql, params) == 0


def test_releasing_unheld_jobs_finds_them_by_primary_key(db, busy_table):
    worker_id, ids = busy_table
    params = {"ids": array(ids), "attempts": array(["1"] * len(ids)), "worker_id": worker_id}
    shown = plan(db, RELEASE_UNHELD, params)
    assert "exekutor_jobs_pkey" in shown and "exekutor_jobs_executing_idx" not in shown, shown


def test_the_next_scheduled_time_is_one_index_lookup(db):
    query(db, "INSERT INTO exekutor_jobs (payload, priority, scheduled_at) SELECT '{\"job\": \"tests.noop\"}', "
              "1 + i % 100, now() - interval '1 hour' FROM generate_series(1, 30000) AS i")
    query(db, "INSERT INTO exekutor_jobs (payload, priority, scheduled_at) SELECT '{\"job\": \"tests.noop\"}', "
              "1 + i % 100, now() + i * interval '1 second' FROM generate_series(1, 10000) AS i")
    query(db, "ANALYZE exekutor_jobs")
    for queues in (None, ["default"]):
        params = {"queues": queues, "min_priority": 1, "max_priority": 32767}
        shown = plan(db, NEXT_SCHEDULED, params)
        assert "exekutor_jobs_pending_queue_idx" in shown and "Seq Scan" not in shown, shown
        conditions = [line for line in shown.splitlines() if "Index Cond:" in line]
        assert any("scheduled_at > now()" in line for line in conditions), shown
        assert "exekutor_jobs_pending_idx" not in shown, shown  # that one holds the due backlog
        seconds, _, _ = query(db, NEXT_SCHEDULED, params)[0]
        assert 0 < seconds <= 1.5


def test_migrations_give_the_tables_queue_settings(db):
    options = dict(query(db, "SELECT relname, reloptions FROM pg_class WHERE relname IN "
                             "('exekutor_jobs', 'exekutor_workers', 'exekutor_job_errors')"))
    jobs = dict(option.split("=") for option in options["exekutor_jobs"])
    assert float(jobs["autovacuum_vacuum_scale_factor"]) <= 0.01
    assert float(jobs["autovacuum_vacuum_cost_delay"]) == 0
    workers = dict(option.split("=") for option in options["exekutor_workers"])
    assert int(workers["fillfactor"]) == 50 and int(workers["autovacuum_vacuum_threshold"]) <= 100
    assert "autovacuum_vacuum_scale_factor=0.05" in options["exekutor_job_errors"]


def test_a_worker_warns_once_when_autovacuum_does_not_run(start_worker, db):
    server_on = scalar(db, "SHOW autovacuum") == "on"
    if server_on:  # this server vacuums: turn it off for the table, as a DBA might have
        query(db, "ALTER TABLE exekutor_jobs SET (autovacuum_enabled = false)")
    try:
        worker = start_worker("--poll-interval", "1")
        expected = "autovacuum is off for the table" if server_on else "autovacuum is off on this PostgreSQL server"
        wait_for(lambda: expected in worker.output(), 10, message="the warning")
        assert worker.output().count("autovacuum is off") == 1
    finally:
        query(db, "ALTER TABLE exekutor_jobs RESET (autovacuum_enabled)")


def test_the_autovacuum_check_names_what_is_off(db):
    from exekutor.db.maintenance import autovacuum_problem

    server_on = scalar(db, "SHOW autovacuum") == "on"
    if server_on:
        assert autovacuum_problem(db) is None
    else:
        assert "on this PostgreSQL server" in autovacuum_problem(db)
    query(db, "ALTER TABLE exekutor_jobs SET (autovacuum_enabled = false)")
    try:
        assert ("for the table exekutor_jobs" if server_on else "on this PostgreSQL server") in autovacuum_problem(db)
    finally:
        query(db, "ALTER TABLE exekutor_jobs RESET (autovacuum_enabled)")


def test_a_slow_queue_query_is_reused_by_scrapes_for_a_while_and_a_quick_one_is_not():
    import gevent

    from exekutor.eventloop import SingleFlight

    calls = []

    def query_taking(seconds):
        calls.append(seconds)
        gevent.sleep(seconds)
        return len(calls)

    slow = SingleFlight(query_taking, max_age=10.0, slow=0.05)
    assert slow(5, 0.06) == 1 and slow(5, 0.06) == 1  # the second scrape reuses the slow answer
    quick = SingleFlight(query_taking, max_age=10.0, slow=0.05)
    assert quick(5, 0.0) == 2 and quick(5, 0.0) == 3  # quick queries run every time


def fill_queues(db, due, later, queues=("default", "mail")):
    """`due` pending due jobs and `later` scheduled ones, spread over `queues`, then ANALYZE."""
    names = "ARRAY[" + ", ".join(f"'{name}'" for name in queues) + "]"
    query(db, f"INSERT INTO exekutor_jobs (queue, payload, scheduled_at) SELECT ({names})[1 + i %% {len(queues)}], "
              "'{\"job\": \"tests.noop\"}', now() - interval '1 hour' + i * interval '1 ms' "
              "FROM generate_series(1, %s) AS i", (due,))
    query(db, f"INSERT INTO exekutor_jobs (queue, payload, scheduled_at) SELECT ({names})[1 + i %% {len(queues)}], "
              "'{\"job\": \"tests.noop\"}', now() + interval '1 hour' + i * interval '1 ms' "
              "FROM generate_series(1, %s) AS i", (later,))
    query(db, "ANALYZE exekutor_jobs")


@pytest.mark.parametrize("limit", [1, 100, 1000])
def test_the_queue_figures_are_index_lookups_at_any_limit(db, limit):
    # A small LIMIT once made the planner count with a sequential scan (it expects a match every few rows and
    # stops early), which read the whole table per queue: 185 ms at 1,000,000 pending.
    from exekutor.queue_stats import PENDING_BY_QUEUE

    fill_queues(db, 40000, 10000)
    shown = plan(db, PENDING_BY_QUEUE, {"limit": limit + 1})
    assert "Seq Scan" not in shown and "exekutor_jobs_pending_idx" not in shown, shown
    assert shown.count("exekutor_jobs_pending_queue_idx") >= 5, shown  # queues, oldest, next, two counts


def test_queue_figures_are_exact_under_the_limit_and_estimated_above(db):
    from exekutor.queue_stats import pending_by_queue

    fill_queues(db, 6000, 3000, queues=("default", "mail", "later"))
    query(db, "UPDATE exekutor_jobs SET scheduled_at = now() + interval '2 hours' WHERE queue = 'later'")
    query(db, "INSERT INTO exekutor_jobs (queue, payload) VALUES ('small', '{\"job\": \"tests.noop\"}')")
    query(db, "ANALYZE exekutor_jobs")
    truth = {queue: (due, later) for queue, due, later in query(
        db, "SELECT queue, count(*) FILTER (WHERE scheduled_at <= now()), count(*) FILTER (WHERE scheduled_at > now()) "
            "FROM exekutor_jobs WHERE status = 'p' GROUP BY queue")}
    with db.cursor() as cursor:
        exact = {queue["queue"]: queue for queue in pending_by_queue(cursor, exact_up_to=10**6)}
        estimated = {queue["queue"]: queue for queue in pending_by_queue(cursor, exact_up_to=500)}
    assert sorted(exact) == sorted(estimated) == ["default", "later", "mail", "small"]
    for name, (due, later) in truth.items():
        assert (exact[name]["due"], exact[name]["scheduled"], exact[name]["estimated"]) == (due, later, False)
        assert exact[name]["pending"] == due + later
    small = estimated["small"]
    assert (small["due"], small["scheduled"], small["estimated"]) == (1, 0, False)
    # 'later' has no due job (exact) and 3,000 future ones: its estimate is the rest of the queue's total.
    assert estimated["later"]["due"] == 0 and estimated["later"]["estimated"]
    for name in ("default", "mail", "later"):
        due, later = truth[name]
        guess = estimated[name]
        assert guess["estimated"]
        for figure, real in (("due", due), ("scheduled", later)):
            if real > 500:  # an estimate: never below the limit, and near the truth with fresh statistics
                assert 501 <= guess[figure] and 0.5 * real <= guess[figure] <= 2 * real, (name, figure, guess, real)
            else:
                assert guess[figure] == real
        assert guess["oldest_due_at"] == exact[name]["oldest_due_at"]
        assert guess["next_scheduled_at"] == exact[name]["next_scheduled_at"]


def test_queue_figures_of_hostile_queue_names(db):
    # Names that sort oddly, hold quotes, spaces, percent signs or non-ASCII text: the loose scan finds each once.
    from exekutor.queue_stats import pending_by_queue

    names = ["a", "a ", "A", "it's", "100%", "%s", "日本語", "z" * 63, "-", "a\\b"]
    for index, name in enumerate(names):
        query(db, "INSERT INTO exekutor_jobs (queue, payload, scheduled_at) SELECT %s, '{\"job\": \"tests.noop\"}', "
                  "now() + (i - 2) * interval '1 hour' FROM generate_series(1, %s) AS i", (name, index + 1))
    with db.cursor() as cursor:
        figures = {queue["queue"]: queue for queue in pending_by_queue(cursor, exact_up_to=2)}
    assert sorted(figures) == sorted(names)
    for index, name in enumerate(names):
        jobs = index + 1  # due: the first two (at -1 h and now), the rest later
        due = min(jobs, 2)
        assert figures[name]["due"] == due
        if jobs - due <= 2:
            assert figures[name]["scheduled"] == jobs - due and not figures[name]["estimated"]
        else:
            assert figures[name]["scheduled"] >= 3 and figures[name]["estimated"]


# Queue names as users write them: any text PostgreSQL can store in a varchar(63), not empty.
_QUEUE_NAMES = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1,
                       max_size=63)


@given(queues=st.dictionaries(_QUEUE_NAMES, st.tuples(st.integers(0, 6), st.integers(0, 6)), max_size=6),
       limit=st.integers(1, 5))
def test_queue_figures_match_the_rows_whatever_the_names_and_counts(database_url, queues, limit):
    """Every queue with pending jobs is listed once; counts at or under the limit are exact, counts over it are
    flagged and never below the limit; the oldest due and next scheduled times are exact."""
    from exekutor.queue_stats import pending_by_queue

    conn = psycopg2.connect(database_url)
    try:
        with conn.cursor() as cursor:  # one transaction, rolled back: nothing stays for the next example
            for name, (due, later) in queues.items():
                cursor.execute("INSERT INTO exekutor_jobs (queue, payload, scheduled_at) SELECT %s, "
                               "'{\"job\": \"tests.noop\"}', now() - i * interval '1 minute' "
                               "FROM generate_series(1, %s) AS i", (name, due))
                cursor.execute("INSERT INTO exekutor_jobs (queue, payload, scheduled_at) SELECT %s, "
                               "'{\"job\": \"tests.noop\"}', now() + i * interval '1 minute' "
                               "FROM generate_series(1, %s) AS i", (name, later))
            figures = {queue["queue"]: queue for queue in pending_by_queue(cursor, exact_up_to=limit)}
    finally:
        conn.rollback()
        conn.close()
    expected = {name: counts for name, counts in queues.items() if sum(counts)}
    assert sorted(figures) == sorted(expected)
    for name, (due, later) in expected.items():
        got = figures[name]
        assert got["estimated"] == (max(due, later) > limit)
        for figure, real in (("due", due), ("scheduled", later)):
            assert got[figure] == real if real <= limit else got[figure] > limit, (name, figure, got, real)
        assert (got["oldest_due_at"] is None) == (due == 0)
        assert (got["next_scheduled_at"] is None) == (later == 0)
        assert got["pending"] == got["due"] + got["scheduled"]


def test_the_estimate_cache_keeps_one_answer_per_question_set_for_its_age():
    from exekutor.queue_stats import EstimateCache

    asked = []

    def ask(questions):
        asked.append(list(questions))
        return [len(asked)] * len(questions)

    cache = EstimateCache(max_age=60)
    first = [("mail", "pending")]
    assert cache.get(first, ask) == [1] and cache.get(list(first), ask) == [1]  # kept
    assert cache.get([("mail", "pending"), ("mail", "due")], ask) == [2, 2]  # other questions: asked
    assert cache.get(first, ask) == [3]  # only the last set is kept
    expired = EstimateCache(max_age=0)
    assert expired.get(first, ask) == [4] and expired.get(first, ask) == [5]
