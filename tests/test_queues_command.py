"""`exekutor-gevent queues list|pause|resume`, `info` and `jobs list|show` on flow control, run for real: the CLI as
a subprocess, a real worker holding jobs back (DESIGN §13)."""
import json

import pytest

import exekutor
from tests import flow_app
from tests.conftest import query, scalar, wait_for
from tests.test_cli import (
    PASSWORD,
    empty_database,  # noqa: F401 - a fixture
    run_cli,
)

pytestmark = pytest.mark.timeout(120)
ODD = 'we"ird %s q ü'  # a quote, a %, spaces and a non-ASCII letter: one queue name


def queues_json(*args):
    result = run_cli("queues", "list", "--json", *args)
    assert result.returncode == 0, result.stderr
    return {queue["queue"]: queue for queue in json.loads(result.stdout)["queues"]}


def status_of(db, job_id):
    return scalar(db, "SELECT status FROM exekutor_jobs WHERE id = %s", (str(job_id),))


def blocked(db, key):
    return scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'p' AND blocked_on = %s", (key,))


def test_pause_list_and_resume_a_queue_with_an_odd_name(db):
    paused = run_cli("queues", "pause", ODD)
    assert (paused.returncode, paused.stdout) == (0, f"paused queue {ODD}\n"), paused.stderr
    again = run_cli("queues", "pause", ODD)
    assert again.returncode == 0 and f"queue {ODD} was already paused (since " in again.stdout
    exekutor.pause_queue("100%")
    listed = run_cli("queues", "list")
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert lines[0].split() == ["QUEUE", "STATE", "CONCURRENCY", "RATE", "LIMIT", "PENDING", "HELD", "BACK",
                                "EXECUTING"]
    assert [line.split()[0] for line in lines[1:]] == ["100%", "we\"ird"]
    assert all("paused since" in line for line in lines[1:])
    queue = queues_json()[ODD]
    assert queue["paused"] is True and queue["paused_at"] and queue["held_back_total"] == 0
    resumed = run_cli("queues", "resume", ODD, "--json")
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout) | {"database": None} == {"database": None, "queue": ODD, "paused": False,
                                                                 "paused_at": None, "changed": True}
    assert run_cli("queues", "resume", ODD).stdout == f"queue {ODD} was not paused\n"
    assert queues_json()[ODD]["paused"] is False  # the row stays: shown as active
    assert exekutor.queue_states() == [state for state in exekutor.queue_states() if state["name"] == "100%"]


def test_bad_names_are_one_line_usage_errors_and_change_nothing(db):
    for name in ("", "x" * 64, "bad\udcff"):
        for action in ("pause", "resume"):
            result = run_cli("queues", action, name)
            assert result.returncode == 2, (name, result.stderr)
            assert result.stderr.startswith("exekutor-gevent: error: invalid queue name")
            assert result.stderr.count("\n") == 1
    assert scalar(db, "SELECT count(*) FROM exekutor_queues") == 0


@pytest.mark.parametrize("args", [["list"], ["pause", "mail"], ["resume", "mail"]], ids=" ".join)
def test_a_database_without_the_tables_says_to_migrate(args, empty_database):  # noqa: F811
    result = run_cli("queues", *args, "--database-url", empty_database)
    assert result.returncode == 1
    assert "exekutor's tables are missing" in result.stderr and "run 'exekutor-gevent migrate'" in result.stderr
    assert len(result.stderr.splitlines()) == 1 and PASSWORD not in result.stderr


def test_an_unreachable_database_is_a_one_line_error(db):
    result = run_cli("queues", "list", "--database-url", f"postgresql://root:{PASSWORD}@127.0.0.1:1/nothing")
    assert result.returncode == 1 and result.stderr.startswith("exekutor-gevent: error: database error")
    assert len(result.stderr.splitlines()) == 1 and PASSWORD not in result.stderr


def test_no_queues_is_said_and_exit_zero(db):
    result = run_cli("queues", "list")
    assert (result.returncode, result.stdout) == (0, "")
    assert "no queues" in result.stderr


@pytest.fixture
def runs(db):
    query(db, flow_app.RUNS_DDL)
    yield db
    query(db, flow_app.RUNS_TEARDOWN)


def test_a_pause_while_a_job_runs_lets_it_finish_and_holds_the_next_back(runs, start_worker):
    start_worker("--threads", "5", "--poll-interval", "1", apps=("tests.flow_app",))
    running = flow_app.free.set(queue=ODD).perform_later("running", seconds=2.0)
    wait_for(lambda: status_of(runs, running.id) == "e", 20, "the job to start")
    assert run_cli("queues", "pause", ODD).returncode == 0
    waiting = flow_app.free.set(queue=ODD).perform_later("waiting")
    wait_for(lambda: blocked(runs, f"paused queue {ODD}") == 1, 20, "the worker to hold the new job back")
    wait_for(lambda: status_of(runs, running.id) == "c", 20, "the running job to finish")
    assert status_of(runs, waiting.id) == "p"

    queue = queues_json()[ODD]
    assert (queue["paused"], queue["pending"], queue["executing"]) == (True, 1, 0)
    assert queue["held_back"] == {"concurrency": 0, "rate": 0, "paused": 1} and queue["held_back_total"] == 1
    assert "1 (1 paused)" in run_cli("queues", "list").stdout
    listed = json.loads(run_cli("jobs", "list", "--status", "pending", "--json").stdout)["jobs"]
    assert [(job["id"], job["waiting"]) for job in listed] == [(str(waiting.id), f"queue {ODD} is paused")]
    table = run_cli("jobs", "list", "--status", "pending").stdout.splitlines()
    assert "WAITING" in table[0] and f"queue {ODD} is paused" in table[1]
    shown = run_cli("jobs", "show", str(waiting.id)).stdout
    assert f"waiting:          queue {ODD} is paused" in shown

    info = run_cli("info").stdout
    assert "1 held back" in info and "1 queue(s) paused" in info and "paused since" in info
    data = json.loads(run_cli("info", "--json").stdout)
    assert data["totals"]["paused_queues"] == 1 and data["totals"]["held_back_total"] == 1
    assert [q["held_back"]["paused"] for q in data["queues"] if q["queue"] == ODD] == [1]

    resumed = run_cli("queues", "resume", ODD)
    assert resumed.stdout == f"resumed queue {ODD}: its held-back jobs start again\n"
    wait_for(lambda: status_of(runs, waiting.id) == "c", 20, "the held-back job to run after the resume")
    assert json.loads(run_cli("jobs", "show", str(waiting.id), "--json").stdout)["waiting"] is None


def test_concurrency_held_jobs_are_counted_by_queue_and_reason(runs, start_worker):
    start_worker("--threads", "10", "--poll-interval", "1", apps=("tests.flow_app",))
    jobs = [flow_app.limited.set(queue="imports").perform_later(f"a{i}", "a", seconds=30) for i in range(5)]
    wait_for(lambda: blocked(runs, "concurrency job flow.limited:a") == 3, 20, "3 jobs held back by the limit")
    queue = queues_json()["imports"]
    assert (queue["pending"], queue["executing"], queue["held_back"]["concurrency"]) == (3, 2, 3)
    assert not queue["paused"] and not queue["held_back_estimated"]
    waiting = {job["waiting"] for job in json.loads(run_cli("jobs", "list", "--status", "pending", "--json")
                                                    .stdout)["jobs"]}
    assert waiting == {"concurrency limit of job flow.limited:a"}
    assert run_cli("jobs", "cancel", *[str(job.id) for job in jobs]).returncode == 0


# --- the held-back figures: bounded walks of the held-back index -------------------------------------------------

def insert_held(conn, queue, key, count):
    query(conn, "INSERT INTO exekutor_jobs (id, queue, payload, status, blocked_on) "
                "SELECT gen_random_uuid(), %s, '{\"job\": \"x\"}', 'p', %s FROM generate_series(1, %s)",
          (queue, key, count))


def test_held_back_counts_are_exact_up_to_the_limit_then_estimated_and_never_by_key(db):
    from exekutor.queue_stats import held_back_by_queue

    insert_held(db, "a", "concurrency job imp:1", 3)
    insert_held(db, "a", "concurrency job imp:2", 2)
    insert_held(db, "b", "concurrency job imp:2", 1)  # one job-level limit, jobs of two queues
    insert_held(db, "a", "rate queue a", 4)
    insert_held(db, "c", "paused queue c", 30)
    with db.cursor() as cursor:
        exact = held_back_by_queue(cursor)
        assert exact == {"a": {"concurrency": 5, "rate": 4, "paused": 0, "estimated": False},
                         "b": {"concurrency": 1, "rate": 0, "paused": 0, "estimated": False},
                         "c": {"concurrency": 0, "rate": 0, "paused": 30, "estimated": False}}
        cursor.execute("ANALYZE exekutor_jobs")
        small = held_back_by_queue(cursor, exact_up_to=10)
        assert small["c"]["estimated"] and small["c"]["paused"] >= 11  # past the walk: the planner's estimate
        assert small["a"] == exact["a"] and not small["b"]["estimated"]
        few = held_back_by_queue(cursor, keys_limit=2)  # more limits than walked: every figure may miss some
        assert all(figures["estimated"] for figures in few.values())
        assert few["a"]["concurrency"] == 5 and few["a"]["rate"] == 0  # the first two limits, in key order


def test_a_second_pause_in_one_transaction_says_the_queue_was_already_paused(database_url, db):
    import psycopg2

    conn = psycopg2.connect(database_url)
    try:
        assert exekutor.pause_queue("txn", connection=conn) is True
        assert exekutor.pause_queue("txn", connection=conn) is False
    finally:
        conn.rollback()
        conn.close()
