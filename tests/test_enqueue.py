import datetime as dt
import json
import logging
import select
import sys
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


# --- enqueue-time validation: a bad value fails in Python, names itself, inserts nothing, aborts nothing -------------

from exekutor.definitions import MAX_TIMEOUT, MAX_WAIT  # noqa: E402
from exekutor.serialization import MAX_INT_DIGITS, MAX_NESTING, load_arguments, serializers  # noqa: E402
from tests.test_serialization import Point, Point3, assert_same  # noqa: E402


def count_jobs(db):
    return scalar(db, "SELECT count(*) FROM exekutor_jobs")


class Transaction:
    """The caller's own connection, with a row of its own written before the bad enqueue."""

    def __init__(self, database_url):
        self.conn = psycopg2.connect(database_url)
        self.good = send_welcome.set(connection=self.conn).perform_later("before")

    def assert_usable(self, db, jobs=1):
        """Not aborted on the server: a later statement works, the commit keeps what came before."""
        assert scalar(self.conn, "SELECT 41 + 1") == 42
        self.conn.commit()
        assert job_row(db, self.good.id) is not None
        assert count_jobs(db) == jobs

    def close(self):
        self.conn.close()


@pytest.fixture
def transaction(database_url):
    tx = Transaction(database_url)
    yield tx
    tx.close()


BAD_OPTIONS = [
    ({"wait": float("inf")}, "invalid wait inf"),
    ({"wait": 1e300}, "invalid wait 1e+300"),
    ({"wait": dt.timedelta.max}, "invalid wait datetime.timedelta(days=999999999"),
    ({"wait": MAX_WAIT + 1}, "invalid wait 3153600001.0"),
    ({"wait": 10**400}, "invalid wait 1000000"),
    ({"wait": 10**5000}, "invalid wait <int of 16610 bits>"),
    ({"wait_until": dt.datetime(9999, 12, 31, tzinfo=dt.timezone.utc)}, "more than 100 years from now"),
    ({"wait_until": dt.datetime(9999, 12, 31, 23, tzinfo=dt.timezone(-dt.timedelta(hours=5)))},
     "invalid wait_until"),
    ({"execution_timeout": float("inf")}, "invalid execution_timeout inf"),
    ({"execution_timeout": 10**400}, "invalid execution_timeout 1000000"),
    ({"execution_timeout": dt.timedelta.max}, "invalid execution_timeout datetime.timedelta(days=999999999"),
    ({"queue_timeout": float("inf")}, "invalid queue_timeout inf"),
    ({"queue_timeout": MAX_TIMEOUT * 2}, "invalid queue_timeout 6307200000.0"),
    ({"queue": "nul\x00queue"}, "invalid queue name 'nul\\x00queue': contains a NUL"),
    ({"queue": "lone \ud800"}, "invalid queue name 'lone \\ud800': contains a lone surrogate"),
]


_OPTION_IDS = [f"{i}-{message[:40]}" for i, (_, message) in enumerate(BAD_OPTIONS)]


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=_OPTION_IDS)
def test_out_of_range_options_are_a_value_error_naming_the_option(db, options, message):
    with pytest.raises(ValueError) as error:
        send_welcome.set(**options).perform_later(1)
    assert message in str(error.value)
    with pytest.raises(ValueError, match="invalid"):
        exekutor.enqueue_many([send_welcome.job(0), send_welcome.set(**options).job(1)])
    assert count_jobs(db) == 0


@pytest.mark.parametrize("options, message", BAD_OPTIONS, ids=_OPTION_IDS)
def test_out_of_range_options_leave_the_callers_transaction_usable(db, transaction, options, message):
    with pytest.raises(ValueError) as error:
        send_welcome.set(connection=transaction.conn, **options).perform_later(1)
    assert message in str(error.value)
    transaction.assert_usable(db)


def test_out_of_range_definition_options_are_refused_at_definition():
    with pytest.raises(ValueError, match="invalid execution_timeout inf"):
        exekutor.job(name="tests.bad_inf", execution_timeout=float("inf"))(lambda: None)
    with pytest.raises(ValueError, match="invalid queue name 'a\\\\x00b'"):
        exekutor.job(name="tests.bad_nul", queue="a\x00b")(lambda: None)
    with pytest.raises(ValueError, match="invalid job name"):
        exekutor.job(name="tests.bad\x00name")(lambda: None)


def test_the_bounds_are_inclusive_and_retry_may_still_wait_forever(db, transaction):
    for name, beyond in [("wait", MAX_WAIT + 0.5), ("execution_timeout", MAX_TIMEOUT + 0.5),
                         ("queue_timeout", dt.timedelta(seconds=MAX_TIMEOUT + 1)),
                         ("wait_until", dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=365 * 100 + 1))]:
        with pytest.raises(ValueError, match=f"invalid {name} .*100 years"):
            send_welcome.set(connection=transaction.conn, **{name: beyond})
    far = dt.datetime.now(dt.timezone.utc) + dt.timedelta(days=99 * 365)
    a = send_welcome.set(connection=transaction.conn, wait=MAX_WAIT, execution_timeout=MAX_TIMEOUT,
                         queue_timeout=dt.timedelta(seconds=MAX_TIMEOUT)).perform_later(1)
    b = send_welcome.set(connection=transaction.conn, wait_until=far).perform_later(2)
    transaction.assert_usable(db, jobs=3)
    _, _, _, options, _, scheduled_at, enqueued_at = job_row(db, a.id)
    assert options == {"execution_timeout": MAX_TIMEOUT, "queue_timeout": MAX_TIMEOUT}
    assert abs((scheduled_at - enqueued_at).total_seconds() - MAX_WAIT) < 60
    assert job_row(db, b.id)[5] == far
    # Retry delays are clamped when they are computed: an infinite max_wait stays valid.
    assert exekutor.Retry(max_wait=float("inf")).max_wait == float("inf")


def test_wait_until_with_an_offset_postgresql_cannot_read_is_stored_as_the_same_instant(db, transaction):
    odd = dt.timezone(dt.timedelta(hours=1, microseconds=7))  # Python allows it; timestamptz input does not
    when = dt.datetime(2031, 5, 4, 3, 2, 1, tzinfo=odd)
    one = send_welcome.set(connection=transaction.conn, wait_until=when).perform_later(1)
    many = exekutor.enqueue_many([send_welcome.set(wait_until=when).job(i) for i in range(2)],
                                 connection=transaction.conn)
    transaction.assert_usable(db, jobs=4)
    for job in [one, *many]:
        assert job_row(db, job.id)[5] == when


def deep(depth):
    value = 1
    for _ in range(depth):
        value = [value]
    return value


BAD_ARGUMENTS = [
    (("ok", "lone \ud800"), {}, "argument 2 of tests.enqueue.send_welcome (str 'lone \\ud800' at args[1])"),
    (({"k\udfff": 1},), {}, "argument 1 of tests.enqueue.send_welcome (dict key 'k\\udfff' at args[0])"),
    ((), {"template": ["\ud83d"]}, "argument 'template' of tests.enqueue.send_welcome (str '\\ud83d' at"),
    ((10**MAX_INT_DIGITS,), {}, "argument 1 of tests.enqueue.send_welcome (int of more than 4300 digits"),
    ((1, [-(10**5000)]), {}, "argument 2 of tests.enqueue.send_welcome (int of more than 4300 digits"),
    ((deep(MAX_NESTING + 1),), {}, "argument 1 of tests.enqueue.send_welcome (nested too deeply or cyclic"),
    ((deep(255),), {}, "argument 1 of tests.enqueue.send_welcome (nested too deeply or cyclic"),
    ((1, deep(300)), {}, "argument 2 of tests.enqueue.send_welcome (nested too deeply or cyclic"),
    ((), {"template": deep(330)}, "argument 'template' of tests.enqueue.send_welcome (nested too deeply"),
]


@pytest.mark.parametrize("args, kwargs, message", BAD_ARGUMENTS,
                         ids=[f"{i}-{m[:60]}" for i, (*_, m) in enumerate(BAD_ARGUMENTS)])
def test_bad_arguments_fail_at_job_and_at_enqueue_naming_the_argument(db, transaction, args, kwargs, message):
    with pytest.raises(exekutor.SerializationError) as error:
        send_welcome.perform_later(*args, **kwargs)
    assert message in str(error.value)
    with pytest.raises(exekutor.SerializationError) as error:
        send_welcome.set(connection=transaction.conn).perform_later(*args, **kwargs)
    assert message in str(error.value)
    # .job() refuses it, so enqueue_many never sees a request it cannot insert
    with pytest.raises(exekutor.SerializationError) as error:
        exekutor.enqueue_many([send_welcome.job(0), send_welcome.job(*args, **kwargs)])
    assert message in str(error.value)
    transaction.assert_usable(db)


class Mood(__import__("enum").Enum):
    HAPPY = 1


def test_an_enum_of_main_and_a_subclass_of_a_registered_type_fail_at_enqueue(db, transaction, monkeypatch):
    # An enum class as a script defines it: in __main__, where this process finds it and a worker never does.
    main_mood = __import__("enum").Enum("Mood", {"HAPPY": 1}, module="__main__")
    monkeypatch.setattr(sys.modules["__main__"], "Mood", main_mood, raising=False)
    with pytest.raises(exekutor.SerializationError,
                       match=r"argument 2 of .* \(enum member .* at args\[1\]\).*__main__"):
        send_welcome.set(connection=transaction.conn).perform_later(Mood.HAPPY, main_mood.HAPPY)
    serializers.register(Point, lambda p: [p.x, p.y], lambda d: Point(*d))
    try:
        with pytest.raises(exekutor.SerializationError,
                           match=r"argument 'template' of .* \(type Point3 at kwargs.template\).*subclass of Point"):
            send_welcome.set(connection=transaction.conn).perform_later(Point(1, 2), template=Point3(1, 2))
        with pytest.raises(exekutor.SerializationError, match="subclass of Point"):
            send_welcome.job(Point3(1, 2))
    finally:
        serializers.unregister(Point)
    transaction.assert_usable(db)


# --- enqueue_many and the requests' connections --------------------------------------------------------------------

def test_enqueue_many_inserts_on_the_connection_its_requests_were_made_with(database_url, db):
    conn = psycopg2.connect(database_url)
    try:
        rolled_back = exekutor.enqueue_many([send_welcome.set(connection=conn).job(1), send_welcome.job(2)])
        assert count_jobs(db) == 0  # not committed on its own
        conn.rollback()
        committed = exekutor.enqueue_many([send_welcome.job(3), send_welcome.set(connection=conn).job(4),
                                           Report.set(connection=conn, priority=3).job(5)])
        assert count_jobs(db) == 0
        conn.commit()
        single = exekutor.enqueue_many([send_welcome.set(connection=conn).job(6)])
        conn.rollback()
    finally:
        conn.close()
    assert all(job_row(db, job.id) is None for job in rolled_back + single)
    assert all(job_row(db, job.id) is not None for job in committed)
    assert count_jobs(db) == 3


def test_enqueue_many_refuses_requests_on_different_connections_and_inserts_nothing(database_url, db):
    first, second = psycopg2.connect(database_url), psycopg2.connect(database_url)
    try:
        mixed = [send_welcome.job(0), send_welcome.set(connection=first).job(1), send_welcome.job(2),
                 send_welcome.set(connection=second).job(3)]
        with pytest.raises(ValueError, match=r"request 4 \(<JobRequest tests.enqueue.send_welcome .*another "
                                             r"connection than request 2 \(<JobRequest"):
            exekutor.enqueue_many(mixed)
        with pytest.raises(ValueError, match=r"request 2 .*another connection than the connection= argument"):
            exekutor.enqueue_many(mixed[:2], connection=second)
        same = exekutor.enqueue_many(mixed[:3], connection=first)  # the same connection twice is no conflict
        for conn in (first, second):
            assert scalar(conn, "SELECT 1") == 1
        second.commit()
        assert count_jobs(db) == 0
        first.commit()
    finally:
        first.close()
        second.close()
    assert sorted(r[0] for r in query(db, "SELECT id::text FROM exekutor_jobs")) == sorted(j.id for j in same)


# --- property: any argument either fails cleanly or round-trips -----------------------------------------------------

from hypothesis import example, given  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_texts = st.text() | st.text(alphabet=st.sampled_from(["a", "é", "☃", "\x00", "\ud800", "\udfff", "\ud83d", "😀"]))
_scalars = (st.none() | st.booleans() | st.floats() | st.text() | _texts
            | st.integers() | st.sampled_from([2**63, -(2**64)])
            | st.builds(lambda digits, sign: sign * 10**digits, st.integers(4298, 5000), st.sampled_from([1, -1])))
_values = st.recursive(
    _scalars,
    lambda inner: (st.lists(inner, max_size=3) | st.tuples(inner, inner)
                   | st.dictionaries(_texts, inner, max_size=3)),
    max_leaves=12,
)
_deep = st.builds(lambda depth, leaf, wrap: _wrap(depth, leaf, wrap), st.integers(1, 340), _scalars,
                  st.sampled_from(["list", "tuple", "dict"]))


def _wrap(depth, leaf, wrap):
    for _ in range(depth):
        leaf = [leaf] if wrap == "list" else (leaf,) if wrap == "tuple" else {"k": leaf}
    return leaf


_PROBLEMS = ("lone surrogate", "more than 4300 digits", "nested too deeply")


@given(args=st.lists(_values | _deep, max_size=3), kwargs=st.dictionaries(_texts, _values | _deep, max_size=2))
@example(args=["x\ud800"], kwargs={})
@example(args=[], kwargs={"k": [10**5000]})
@example(args=[_wrap(260, 1, "list")], kwargs={})
@example(args=[float("nan"), float("inf"), -0.0, "\x00", {"\x00": 2**64}], kwargs={"\x00": (1e300,)})
def test_any_argument_is_refused_cleanly_or_round_trips(database_url, db, args, kwargs):
    conn = psycopg2.connect(database_url)
    try:
        before = count_jobs(db)
        try:
            handle = send_welcome.set(connection=conn).perform_later(*args, **kwargs)
        except (ValueError, TypeError) as error:
            message = str(error)
            assert message.startswith("cannot serialize "), message
            assert "argument" in message or "kwargs" in message, message
            assert any(problem in message for problem in _PROBLEMS), message
            assert scalar(conn, "SELECT 1") == 1  # the transaction is not aborted
            conn.commit()
            assert count_jobs(db) == before
            return
        conn.commit()
    finally:
        conn.close()
    payload = scalar(db, "SELECT payload FROM exekutor_jobs WHERE id = %s", (handle.id,))
    loaded_args, loaded_kwargs = load_arguments(payload)
    assert_same(list(loaded_args), list(args))
    assert_same(loaded_kwargs, kwargs)


@pytest.fixture
def unmigrated_database(db, database_url):
    """The URL of a database without exekutor's tables."""
    name = f"{psycopg2.extensions.parse_dsn(database_url)['dbname']}_bare"
    db.cursor().execute(f'CREATE DATABASE "{name}"')
    yield psycopg2.extensions.make_dsn(database_url, dbname=name)
    db.cursor().execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.mark.timeout(60)
@pytest.mark.parametrize("on", ["pool", "connection"])
def test_perform_later_on_an_unmigrated_database_says_to_migrate(unmigrated_database, on):
    from exekutor.db.pool import reset_default_pool
    from exekutor.errors import SchemaError

    if on == "pool":
        exekutor.configure(database_url=unmigrated_database)
        reset_default_pool()
        request = send_welcome
    else:
        conn = psycopg2.connect(unmigrated_database)
        request = send_welcome.set(connection=conn)
    try:
        with pytest.raises(SchemaError, match=r'relation "exekutor_jobs" does not exist\): run `exekutor-gevent '
                                              r'migrate`'):
            request.perform_later(1)
    finally:
        if on == "pool":
            reset_default_pool()
        else:
            conn.close()
