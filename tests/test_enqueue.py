import datetime as dt
import json
import logging
import select
import time

import psycopg2
import psycopg2.extras
import pytest

import exekutor
from exekutor import hooks
from tests.conftest import query, scalar


@exekutor.job(name="tests.enqueue.send_welcome", queue="mail", priority=100, execution_timeout=30)
def send_welcome(user_id, template="welcome"):
    return f"{template}:{user_id}"


class Report(exekutor.Job):
    name = "tests.enqueue.Report"
    queue = "reports"
    queue_timeout = 600

    def perform(self, report_id):
        return report_id * 2


def job_row(db, job_id):
    rows = query(db, "SELECT queue, priority, payload, options, status, scheduled_at, enqueued_at "
                     "FROM exekutor_jobs WHERE id = %s", (job_id,))
    return rows[0] if rows else None


def test_perform_later_inserts_a_pending_job_with_its_options(db):
    handle = send_welcome.perform_later(42, template="hi")
    queue, priority, payload, options, status, scheduled_at, enqueued_at = job_row(db, handle.id)
    assert (queue, priority, status) == ("mail", 100, "p")
    assert payload == {"job": "tests.enqueue.send_welcome", "args": [42], "kwargs": {"template": "hi"}}
    assert options == {"execution_timeout": 30.0}
    assert abs((scheduled_at - enqueued_at).total_seconds()) < 1
    assert handle.fetch()["status"] == "pending"


def test_plain_call_and_perform_now_still_run_the_function(db):
    assert send_welcome(1) == "welcome:1"
    assert send_welcome.perform_now(2, template="x") == "x:2"
    assert Report.perform_now(4) == 8
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs") == 0


def test_set_overrides_queue_priority_and_schedule(db):
    handle = send_welcome.set(queue="urgent", priority=1, wait=30).perform_later(42)
    queue, priority, _, _, _, scheduled_at, enqueued_at = job_row(db, handle.id)
    assert (queue, priority) == ("urgent", 1)
    assert 29 <= (scheduled_at - enqueued_at).total_seconds() <= 31
    when = dt.datetime(2031, 5, 4, 3, 2, 1, tzinfo=dt.timezone.utc)
    handle = send_welcome.set(wait_until=when, execution_timeout=5).perform_later(7)
    _, _, _, options, _, scheduled_at, _ = job_row(db, handle.id)
    assert scheduled_at == when
    assert options == {"execution_timeout": 5.0}


def test_class_style_job_uses_its_class_options(db):
    handle = Report.perform_later(7)
    queue, priority, payload, options, *_ = job_row(db, handle.id)
    assert queue == "reports"
    assert priority == exekutor.config.default_queue_priority == 16383
    assert payload["job"] == "tests.enqueue.Report"
    assert options == {"queue_timeout": 600.0}


def test_default_priority_comes_from_config(db):
    exekutor.configure(default_queue_priority=500)
    handle = Report.perform_later(1)
    assert job_row(db, handle.id)[1] == 500


@pytest.mark.parametrize("options, message", [
    ({"priority": 0}, "invalid priority 0"),
    ({"priority": 32768}, "invalid priority 32768"),
    ({"priority": 1.5}, "invalid priority 1.5"),
    ({"priority": True}, "invalid priority True"),
    ({"queue": ""}, "invalid queue name ''"),
    ({"queue": "q" * 64}, "longer than 63 characters"),
    ({"queue": 5}, "invalid queue name 5"),
    ({"execution_timeout": 0}, "invalid execution_timeout 0"),
    ({"queue_timeout": -1}, "invalid queue_timeout -1"),
    ({"wait": -5}, "invalid wait -5"),
    ({"wait_until": "tomorrow"}, "invalid wait_until 'tomorrow'"),
    ({"priorty": 5}, "unknown job option 'priorty' (did you mean 'priority'?)"),
])
def test_invalid_enqueue_options_raise_value_error_and_insert_nothing(db, options, message):
    with pytest.raises(ValueError) as error:
        send_welcome.set(**options).perform_later(1)
    assert message in str(error.value)
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs") == 0


def test_invalid_definition_options_raise_at_definition():
    with pytest.raises(ValueError, match="invalid priority 0"):
        exekutor.job(name="tests.bad1", priority=0)(lambda: None)
    with pytest.raises(ValueError, match="invalid execution_timeout -3"):
        exekutor.job(name="tests.bad2", execution_timeout=-3)(lambda: None)
    with pytest.raises(ValueError, match="invalid queue name"):
        class BadJob(exekutor.Job):
            queue = ""


def test_unserializable_argument_fails_at_enqueue(db):
    class Opaque:
        pass

    with pytest.raises(exekutor.SerializationError, match="Opaque"):
        send_welcome.perform_later(Opaque())
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs") == 0


def test_transactional_enqueue_commits_and_rolls_back_with_the_caller(database_url, db):
    conn = psycopg2.connect(database_url)
    try:
        rolled_back = send_welcome.set(connection=conn).perform_later(1)
        assert job_row(db, rolled_back.id) is None  # not visible before commit
        conn.rollback()
        committed = send_welcome.set(connection=conn).perform_later(2)
        conn.commit()
        with conn:
            in_block = send_welcome.set(connection=conn).perform_later(3)
    finally:
        conn.close()
    assert job_row(db, rolled_back.id) is None
    assert job_row(db, committed.id) is not None
    assert job_row(db, in_block.id) is not None
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs") == 2


class _StatementLog(logging.Handler):
    def __init__(self):
        super().__init__()
        self.statements = []

    def emit(self, record):
        self.statements.append(record.getMessage())


def test_enqueue_many_is_one_statement_and_keeps_per_job_schedule_and_options(database_url, db):
    log = _StatementLog()
    logger = logging.getLogger("tests.statements")
    logger.addHandler(log)
    logger.setLevel(logging.DEBUG)
    conn = psycopg2.connect(database_url, connection_factory=psycopg2.extras.LoggingConnection)
    conn.initialize(logger)
    when = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
    jobs = []
    for i in range(10_000):
        if i % 3 == 0:
            jobs.append(send_welcome.job(i))
        elif i % 3 == 1:
            jobs.append(send_welcome.set(queue="bulk", priority=i % 100 + 1, wait_until=when).job(i))
        else:
            jobs.append(Report.set(execution_timeout=9).job(i))
    try:
        exekutor.enqueue_many(jobs, connection=conn)
        conn.commit()
    finally:
        conn.close()
    assert len(log.statements) == 1
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs") == 10_000
    rows = {r[0]: r[1:] for r in query(
        db, "SELECT id::text, queue, priority, scheduled_at, options FROM exekutor_jobs")}
    for i, job in enumerate(jobs):
        queue, priority, scheduled_at, options = rows[job.id]
        if i % 3 == 0:
            assert (queue, priority, options) == ("mail", 100, {"execution_timeout": 30.0})
        elif i % 3 == 1:
            assert (queue, priority, scheduled_at) == ("bulk", i % 100 + 1, when)
        else:
            assert (queue, options) == ("reports", {"queue_timeout": 600.0, "execution_timeout": 9.0})


def test_enqueue_many_without_connection_commits_on_its_own(db):
    jobs = exekutor.enqueue_many([send_welcome.job(i) for i in range(50)])
    assert len({j.id for j in jobs}) == 50
    # One autocommit statement: every row was written by the same transaction.
    assert scalar(db, "SELECT count(DISTINCT xmin::text) FROM exekutor_jobs") == 1


def test_enqueue_many_rejects_what_is_not_a_job_request(db):
    with pytest.raises(TypeError, match="job requests"):
        exekutor.enqueue_many([send_welcome])


def _notifications(conn, timeout=2.0):
    received = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if select.select([conn], [], [], 0.1)[0]:
            conn.poll()
            received.extend(json.loads(n.payload) for n in conn.notifies)
            conn.notifies.clear()
    return received


def test_one_notification_per_statement_per_queue(database_url, db):
    listener = psycopg2.connect(database_url)
    listener.autocommit = True
    with listener.cursor() as cursor:
        cursor.execute('LISTEN "exekutor::job_enqueued"')
    try:
        later = dt.datetime(2030, 1, 1, tzinfo=dt.timezone.utc)
        jobs = [send_welcome.set(priority=50 + i % 10).job(i) for i in range(3000)]
        jobs += [send_welcome.set(queue="we;ird:q'\"", priority=7, wait_until=later).job(i) for i in range(3000)]
        jobs += [Report.job(i) for i in range(3000)]
        exekutor.enqueue_many(jobs)
        received = _notifications(listener)
        assert sorted(n["q"] for n in received) == sorted(["mail", "we;ird:q'\"", "reports"])
        by_queue = {n["q"]: n for n in received}
        assert by_queue["mail"]["p"] == 50
        assert by_queue["we;ird:q'\""]["p"] == 7
        assert by_queue["we;ird:q'\""]["t"] == later.timestamp()
        assert abs(by_queue["reports"]["t"] - time.time()) < 60
        # Deleting a worker releases its executing jobs: one more notification per queue.
        db.cursor().execute("INSERT INTO exekutor_workers (id, hostname, pid) VALUES "
                            "('00000000-0000-0000-0000-000000000001', 'h', 1)")
        db.cursor().execute("UPDATE exekutor_jobs SET status = 'e', worker_id = '00000000-0000-0000-0000-000000000001'"
                            " WHERE queue IN ('mail', 'reports')")
        assert _notifications(listener, 0.5) == []
        db.cursor().execute("DELETE FROM exekutor_workers")
        released = _notifications(listener)
        assert sorted(n["q"] for n in released) == ["mail", "reports"]
        assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'p'") == 9000
    finally:
        listener.close()


def test_enqueue_hooks_receive_the_jobs(db):
    seen = []

    def before(jobs):
        seen.append(("before", len(jobs)))

    def around(jobs):
        seen.append(("around-in", len(jobs)))
        yield
        seen.append(("around-out", len(jobs)))

    def after(jobs):
        seen.append(("after", [j.id for j in jobs]))

    hooks.before_enqueue(before)
    hooks.around_enqueue(around)
    hooks.after_enqueue(after)
    try:
        handle = send_welcome.perform_later(5)
    finally:
        hooks.clear()
    assert seen == [("before", 1), ("around-in", 1), ("around-out", 1), ("after", [handle.id])]
    assert job_row(db, handle.id) is not None


def test_enqueue_many_keeps_queue_names_and_arguments_that_need_quoting(db):
    names = ['a\\b{c},"d"', "NULL", "  spaced  ", "ünï ☃", "x'); DROP TABLE exekutor_jobs; --"]
    arguments = ['quote " backslash \\ brace { comma ,', "NULL", "nul \x00 byte", ""]
    jobs = exekutor.enqueue_many([send_welcome.set(queue=name).job(arguments, name) for name in names])
    rows = dict(query(db, "SELECT id::text, queue FROM exekutor_jobs"))
    assert [rows[job.id] for job in jobs] == names
    from exekutor.serialization import load_arguments

    for job in jobs:
        payload = scalar(db, "SELECT payload FROM exekutor_jobs WHERE id = %s", (job.id,))
        assert load_arguments(payload) == ((arguments, job.queue), {})
