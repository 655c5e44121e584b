"""@exekutor.asynchronous: argument checking at call time, enqueueing, and real workers running (only) the declared
methods."""
import json
import uuid

import pytest

import exekutor
from exekutor import hooks
from exekutor.asynchronous import NotAsynchronousError
from tests import async_app
from tests.async_app import COUNTERS_DDL, Counter, SpecialCounter, count, count_urgent
from tests.conftest import query, scalar, wait_for

PREFIX = "tests.async_app:"


@pytest.fixture
def counters(db):
    query(db, COUNTERS_DDL)
    return lambda: dict(query(db, "SELECT key, value FROM test_counters"))


def jobs(db):
    return query(db, "SELECT payload, queue, priority, options FROM exekutor_jobs ORDER BY enqueued_at")


def job_count(db):
    return scalar(db, "SELECT count(*) FROM exekutor_jobs")


def insert_payload(db, payload):
    """A job row as another process (or an attacker with INSERT rights) could write it."""
    job_id = str(uuid.uuid4())
    query(db, "INSERT INTO exekutor_jobs (id, payload) VALUES (%s, %s)", (job_id, json.dumps(payload)))
    return job_id


def wait_finished(db, job_id, timeout=30):
    def finished():
        status = scalar(db, "SELECT status FROM exekutor_jobs WHERE id = %s", (job_id,))
        return status if status in ("c", "f", "d") else None

    return wait_for(finished, timeout, message=f"job {job_id} to finish")


def error_of(db, job_id):
    return scalar(db, "SELECT error FROM exekutor_job_errors WHERE job_id = %s ORDER BY created_at DESC LIMIT 1",
                  (job_id,))


# --- at call time ---------------------------------------------------------------------------------------------

def test_calling_enqueues_a_job_with_the_definition_options(db):
    request = count("a", 2, times=3)
    special = count_urgent("b")
    assert [row[:3] for row in jobs(db)] == [
        ({"job": PREFIX + "count", "args": ["a", 2], "kwargs": {"times": 3}}, "default", 16383),
        ({"job": PREFIX + "count_urgent", "args": ["b"], "kwargs": {}}, "async", 7),
    ]
    assert jobs(db)[1][3] == {"execution_timeout": 30.0}
    assert request.fetch()["status"] == special.fetch()["status"] == "pending"


def test_set_gives_per_call_options_and_keeps_the_receiver(db):
    Counter("k").increment.set(queue="counters", priority=3)(by=4)
    count.set(queue="other").perform_later("x")
    (first, *_), (second, *_) = jobs(db)
    assert first == {"job": PREFIX + "Counter.increment", "args": [{"__exekutor__": PREFIX + "Counter", "v": "k"}],
                     "kwargs": {"by": 4}}
    assert second["job"] == PREFIX + "count"
    assert [row[1:3] for row in jobs(db)] == [("counters", 3), ("other", 16383)]
    with pytest.raises(ValueError, match="unknown job option 'queu'"):
        count.set(queu="x")
    assert job_count(db) == 2


def test_classmethods_enqueue_the_class_they_are_called_on(db):
    Counter.create("c", 1)
    SpecialCounter.create("s", 2)
    SpecialCounter("i").create("t", 3)
    assert [row[0]["args"] for row in jobs(db)] == [[PREFIX + "Counter", "c", 1], [PREFIX + "SpecialCounter", "s", 2],
                                                   [PREFIX + "SpecialCounter", "t", 3]]
    assert {row[1] for row in jobs(db)} == {"async"}


def python_error(func, *args, **kwargs):
    try:
        func(*args, **kwargs)
    except TypeError as error:
        return str(error)
    raise AssertionError(f"{func} accepted {args} {kwargs}")


# (asynchronous callable, the plain callable Python would call, args, kwargs)
BAD_CALLS = [
    (count, count.__wrapped__, (), {}),
    (count, count.__wrapped__, ("k", 1, 2), {}),
    (count, count.__wrapped__, ("k",), {"bye": 1}),
    (count, count.__wrapped__, ("k",), {"key": "again"}),
    (count, count.__wrapped__, ("k", 1, 3), {"times": 3}),
    (count_urgent, count_urgent.__wrapped__, (), {"key": "positional-only"}),
    (Counter("k").increment, Counter("k").increment.__wrapped__, (1, 2), {}),
    (Counter("k").increment, Counter("k").increment.__wrapped__, (), {"amount": 2}),
    (Counter.create, Counter.create.__wrapped__, ("k",), {}),
    (SpecialCounter.create, SpecialCounter.create.__wrapped__, ("k", 1, 2), {}),
    (Counter.ping, Counter.ping.__wrapped__, (), {}),
    (Counter.increment, async_app.Counter.__dict__["increment"].__wrapped__, (), {}),
]


@pytest.mark.parametrize("asynchronous, plain, args, kwargs", BAD_CALLS)
def test_argument_errors_are_raised_at_call_time_as_python_raises_them(db, asynchronous, plain, args, kwargs):
    expected = python_error(plain, *args, **kwargs)
    for call in (asynchronous, asynchronous.perform_later, asynchronous.set(priority=5), asynchronous.job,
                 asynchronous.perform_now):
        with pytest.raises(TypeError) as raised:
            call(*args, **kwargs)
        assert str(raised.value) == expected
    assert job_count(db) == 0


def test_the_original_stays_reachable_and_perform_now_runs_inline_with_hooks(db, counters):
    seen = []

    def remember(info):
        seen.append(info["payload"]["job"])

    hooks.before_job_execution(remember)
    try:
        assert count.__wrapped__("w", 2) == 2
        assert Counter("w").increment.__wrapped__(3) == 3
        assert count.perform_now("n", 1, times=4) == 4
        assert Counter("n").increment.perform_now(5) == 5
        Counter.create.perform_now("n", 1)
        SpecialCounter.ping.perform_now("n")
    finally:
        hooks.unregister(remember)
    assert counters() == {"w": 5, "n": 11, "n:Counter": 1}
    assert seen == [PREFIX + "count", PREFIX + "Counter.increment", PREFIX + "Counter.create", PREFIX + "Counter.ping"]
    assert job_count(db) == 0


def test_an_instance_method_needs_a_serializable_receiver(db):
    with pytest.raises(exekutor.SerializationError, match=r"its receiver \(an instance of Unserializable\)"):
        async_app.Unserializable().run()
    with pytest.raises(TypeError, match=r"needs an instance of Counter as its receiver, got int"):
        Counter.increment(7, 1)
    assert job_count(db) == 0


def test_enqueue_many_takes_asynchronous_requests(db):
    exekutor.enqueue_many([Counter("m").increment.job(2), count.job("m", times=2), Counter.ping.job("p")])
    assert sorted(row[0]["job"] for row in jobs(db)) == sorted(
        [PREFIX + "Counter.increment", PREFIX + "count", PREFIX + "Counter.ping"])


def test_the_decorator_rejects_what_it_cannot_make_asynchronous():
    with pytest.raises(TypeError, match="needs a function or method"):
        exekutor.asynchronous(len)
    with pytest.raises(ValueError, match="invalid priority 0"):
        exekutor.asynchronous(priority=0)(lambda: None)


# --- in a real worker -----------------------------------------------------------------------------------------

def test_a_worker_runs_functions_instance_methods_classmethods_and_staticmethods(db, counters, start_worker):
    start_worker("--app", "tests.async_app")
    requests = [count("f", 2, times=3), count_urgent("u", by=2), Counter("m").increment(5),
                SpecialCounter.create("c", 4), Counter.ping("p")]
    for request in requests:
        assert wait_finished(db, request.id) == "c", error_of(db, request.id)
    assert counters() == {"f": 6, "u": 2, "m": 5, "c": 4, "c:SpecialCounter": 1, "p": 1}


def test_a_payload_naming_a_method_not_declared_asynchronous_is_discarded_and_not_called(db, counters, start_worker):
    start_worker("--app", "tests.async_app")
    receiver = {"__exekutor__": PREFIX + "Counter", "v": "r"}
    undeclared = insert_payload(db, {"job": PREFIX + "Counter.reset", "args": [receiver], "kwargs": {}})
    init = insert_payload(db, {"job": PREFIX + "Counter.__init__", "args": [receiver, "x"], "kwargs": {}})
    assert wait_finished(db, undeclared) == "d"
    assert wait_finished(db, init) == "d"
    error = error_of(db, undeclared)
    assert error["type"] == "exekutor.asynchronous.NotAsynchronousError"
    assert "Counter.reset is not declared asynchronous" in error["message"]
    assert counters() == {}


def test_a_declared_method_only_runs_on_the_receivers_it_was_declared_for(db, counters, start_worker):
    start_worker("--app", "tests.async_app")
    wrong_class = insert_payload(db, {"job": PREFIX + "Counter.create", "args": ["tests.jobs_app:noop", "c", 1],
                                      "kwargs": {}})
    wrong_receiver = insert_payload(db, {"job": PREFIX + "Counter.increment", "args": ["not a counter"],
                                         "kwargs": {}})
    for job_id in (wrong_class, wrong_receiver):
        assert wait_finished(db, job_id) == "d"
        assert error_of(db, job_id)["type"] == "exekutor.asynchronous.NotAsynchronousError"
    assert counters() == {}


def test_a_payload_naming_an_unregistered_callable_elsewhere_still_fails_unknown(db, start_worker):
    start_worker("--app", "tests.async_app")
    job_id = insert_payload(db, {"job": "os:system", "args": ["echo pwned"], "kwargs": {}})
    assert wait_finished(db, job_id) == "f"
    assert error_of(db, job_id)["type"] == "exekutor.errors.UnknownJobError"


def test_not_asynchronous_error_is_a_discard():
    assert issubclass(NotAsynchronousError, exekutor.DiscardJob)
    assert issubclass(NotAsynchronousError, exekutor.UnknownJobError)
