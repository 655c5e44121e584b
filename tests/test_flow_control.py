"""Flow control across real worker processes: concurrency limits, rate limits and paused queues (DESIGN §13)."""
import time

import pytest

import exekutor
from tests import flow_app
from tests.conftest import scalar, wait_for

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def runs(db):
    with db.cursor() as cursor:
        cursor.execute(flow_app.RUNS_DDL)
    yield db
    with db.cursor() as cursor:
        cursor.execute(flow_app.RUNS_TEARDOWN)


def most_at_once(conn, column, key):
    """The most runs holding the limit `key` (by `column` of flow_slots) at one moment: from the database's
    admission to the database's end of the run."""
    return scalar(conn, f"""
        SELECT coalesce(max(n), 0) FROM (
            SELECT sum(d) OVER (ORDER BY t, d) AS n FROM (
                SELECT admitted_at AS t, 1 AS d FROM flow_slots WHERE {column} = %(k)s
                UNION ALL SELECT coalesce(ended_at, 'infinity'), -1 FROM flow_slots WHERE {column} = %(k)s) AS e) AS s
    """, {"k": key})


def most_starts_in_window(conn, column, key, seconds):
    """The most admissions of `key` in any window of `seconds`, on the rate limit's clock."""
    return scalar(conn, f"""
        SELECT coalesce(max((SELECT count(*) FROM flow_slots o WHERE o.{column} = r.{column}
                             AND o.started_at >= r.started_at
                             AND o.started_at < r.started_at + %(s)s * interval '1 second')), 0)
        FROM flow_slots r WHERE r.{column} = %(k)s
    """, {"k": key, "s": seconds})


def all_done(conn):
    return scalar(conn, "SELECT count(*) FROM exekutor_jobs WHERE status IN ('p', 'e')") == 0


def test_concurrency_limit_holds_across_two_workers_without_blocking_the_queue(runs, start_worker):
    start_worker("--threads", "20", apps=("tests.flow_app",))
    start_worker("--threads", "20", apps=("tests.flow_app",))
    for i in range(12):
        flow_app.limited.perform_later(f"a{i}", "a", seconds=0.2)
    for i in range(6):
        flow_app.free.perform_later(f"f{i}", seconds=0.0)
    # The free jobs are not held back behind the limited ones (no head-of-line blocking).
    wait_for(lambda: scalar(runs, "SELECT count(*) FROM flow_runs WHERE key = 'free' AND finished_at IS NOT NULL")
             == 6, 20, "the free jobs to run")
    wait_for(lambda: all_done(runs), 60, "every job to finish")
    assert scalar(runs, "SELECT count(*) FROM flow_runs WHERE key = 'a'") == 12
    assert most_at_once(runs, "concurrency_key", "flow.limited:a") == 2


def test_rate_limit_spreads_starts(runs, start_worker):
    start_worker("--threads", "20", apps=("tests.flow_app",))
    for i in range(12):
        flow_app.rated.perform_later(f"r{i}")
    wait_for(lambda: all_done(runs), 60, "every job to finish")
    assert scalar(runs, "SELECT count(*) FROM flow_runs WHERE key = 'rate'") == 12
    assert most_starts_in_window(runs, "rate_key", "flow.rated", 1.0) == 5
    span = scalar(runs, "SELECT extract(epoch FROM max(started_at) - min(started_at)) FROM flow_slots")
    assert span >= 2.0  # 12 starts at 5 per second: at least two full windows


def test_pause_and_resume(runs, start_worker):
    start_worker("--threads", "10", apps=("tests.flow_app",))
    assert exekutor.pause_queue("default") is True
    assert exekutor.pause_queue("default") is False
    for i in range(3):
        flow_app.free.perform_later(f"p{i}")
    time.sleep(1.5)
    assert scalar(runs, "SELECT count(*) FROM flow_runs") == 0
    assert [s["name"] for s in exekutor.queue_states() if s["paused"]] == ["default"]
    assert exekutor.resume_queue("default") is True
    wait_for(lambda: scalar(runs, "SELECT count(*) FROM flow_runs") == 3, 5, "the jobs to run after the resume")


def test_a_retried_finished_job_takes_a_new_slot(runs, start_worker):
    """A finished row keeps the holds it ran with; an operator's retry must not make it look promoted (it would
    then start without counting against its limit)."""
    first = flow_app.limited.perform_later("x0", "x", seconds=0.0)
    start_worker("--threads", "10", apps=("tests.flow_app",))
    wait_for(lambda: all_done(runs), 30, "the first run")
    assert first.retry() is False  # completed: not retried; make it failed to retry it
    with runs.cursor() as cursor:
        cursor.execute("UPDATE exekutor_jobs SET status = 'f' WHERE id = %s", (first.id,))
    for i in range(2):
        flow_app.limited.perform_later(f"x{i + 1}", "x", seconds=1.0)
    wait_for(lambda: scalar(runs, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e'") == 2, 20,
             "the two long runs to take both slots")
    assert first.retry() is True
    assert scalar(runs, "SELECT holds FROM exekutor_jobs WHERE id = %s", (first.id,)) is None
    wait_for(lambda: all_done(runs), 30, "every job to finish")
    assert most_at_once(runs, "concurrency_key", "flow.limited:x") == 2
