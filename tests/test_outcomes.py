"""Every job ends: whatever a job raises, says or asks for, its outcome is written and the worker goes on.

Real worker processes (`--app tests.hostile_jobs`) against a real PostgreSQL; each test also checks that a job
enqueued afterwards still completes, since the old failure mode was a worker that looked alive but stalled.
"""
import datetime
import os
import signal
import socket
import threading
import time

import psycopg2
import psycopg2.extensions
import pytest
from hypothesis import given
from hypothesis import strategies as st

import exekutor
from exekutor.definitions import MAX_RETRY_DELAY
from exekutor.error_records import MAX_MESSAGE_CHARS
from tests import hostile_jobs
from tests.conftest import query, scalar, wait_for
from tests.hostile_jobs import PickyJson, encode_text

APPS = ("tests.hostile_jobs",)
WORKER_ARGS = ("--threads", "10", "--poll-interval", "0.5")
EXPECTED_TYPES = {
    "value_error": "ValueError", "hostile_error": "tests.hostile_jobs.HostileError",
    "hostile_base": "tests.hostile_jobs.HostileBase", "operational_error": "psycopg2.OperationalError",
    "broken_str": "tests.hostile_jobs.BrokenStr", "gevent_timeout": "gevent.timeout.Timeout",
    "greenlet_exit": "greenlet.GreenletExit", "system_exit": "SystemExit", "keyboard_interrupt": "KeyboardInterrupt",
}
FINAL = ("c", "f", "d")


def job_row(db, job_id):
    rows = query(db, "SELECT status, attempts, scheduled_at, now() FROM exekutor_jobs WHERE id = %s", (job_id,))
    return rows[0] if rows else None


def errors_of(db, job_id):
    return [row[0] for row in query(db, "SELECT error FROM exekutor_job_errors WHERE job_id = %s ORDER BY attempt",
                                    (job_id,))]


def wait_final(db, handle, timeout=30):
    wait_for(lambda: job_row(db, handle.id)[0] in FINAL, timeout, message=f"job {handle.id} to end "
             f"(now {job_row(db, handle.id)})")
    return job_row(db, handle.id)


def assert_still_working(db, worker, tag="canary"):
    """The worker is alive and still reserves: a job enqueued now completes."""
    assert worker.proc.poll() is None, f"the worker exited with {worker.proc.returncode}:\n{worker.output()[-3000:]}"
    handle = hostile_jobs.canary.perform_later(tag)
    wait_for(lambda: job_row(db, handle.id)[0] == "c", 30,
             message=f"a canary job to complete (worker stalled?)\n{worker.output()[-3000:]}")


def spec(kind="value_error", text="", **more):
    return {"tag": more.pop("tag", kind), "kind": kind, "text": encode_text(text), **more}


# --- writable error records ---------------------------------------------------------------------------------

@pytest.mark.timeout(90)
@pytest.mark.parametrize("text", ["bad\x00byte", "file-\udcff.txt", "\ud800 lone high", "x" * 3_000_000],
                         ids=["nul", "surrogate", "high-surrogate", "3MB"])
def test_an_unwritable_message_ends_failed_and_holds_back_no_other_outcome(start_worker, executions, text):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    # One batch: the poison and ordinary jobs finishing together.
    handles = exekutor.enqueue_many([hostile_jobs.fail_once.job(spec(text=text))] +
                                    [hostile_jobs.canary.job(f"ok-{i}") for i in range(20)])
    assert wait_final(executions, handles[0])[:2] == ("f", 1)
    (error,) = errors_of(executions, handles[0].id)
    assert error["type"] == "ValueError"
    assert "\x00" not in error["message"]
    assert len(error["message"]) <= MAX_MESSAGE_CHARS + 100
    if "\x00" in text:
        assert error["message"] == "bad\\x00byte" and "bad\\x00byte" in error["traceback"]
    if "\udcff" in text:
        assert error["message"] == "file-\\udcff.txt"
    for handle in handles[1:]:
        assert wait_final(executions, handle)[0] == "c"
    assert_still_working(executions, worker)


@pytest.fixture
def nul_http_server():
    """A loopback HTTP server whose status line carries a NUL, as a broken upstream may answer."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                client, _ = server.accept()
            except socket.timeout:
                continue
            with client:
                client.recv(65536)
                client.sendall(b"HTTP/1.1 500 Bad\x00Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}/hook"
    stop.set()
    thread.join(5)
    server.close()


@pytest.mark.timeout(60)
def test_a_webhook_whose_http_error_carries_a_nul_is_retried_then_fails(start_worker, executions, nul_http_server):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    handle = hostile_jobs.http_get.perform_later(nul_http_server)
    assert wait_final(executions, handle)[:2] == ("f", 2)
    errors = errors_of(executions, handle.id)
    assert [e["type"] for e in errors] == ["urllib.error.HTTPError"] * 2
    assert "Bad\\x00Gateway" in errors[0]["message"]
    assert_still_working(executions, worker)


@pytest.mark.timeout(90)
def test_text_the_database_encoding_lacks_is_escaped_in_a_latin1_database(start_worker, latin1_url):
    worker = start_worker(*WORKER_ARGS, apps=APPS, url=latin1_url)
    conn = psycopg2.connect(latin1_url)
    conn.autocommit = True
    try:
        japanese = hostile_jobs.fail_once.set(connection=conn).perform_later(spec(text="日本語のエラー café"))
        traceback_only = hostile_jobs.discard.set(connection=conn).perform_later(
            spec("hostile_error", "出力 €", where="traceback"))
        assert wait_final(conn, japanese)[0] == "f"
        (error,) = errors_of(conn, japanese.id)
        assert error["message"] == "\\u65e5\\u672c\\u8a9e\\u306e\\u30a8\\u30e9\\u30fc café"
        assert wait_final(conn, traceback_only)[0] == "d"
        (error,) = errors_of(conn, traceback_only.id)
        assert "\\u51fa\\u529b \\u20ac" in error["traceback"]
        assert worker.proc.poll() is None
        canary = hostile_jobs.canary.set(connection=conn).perform_later("canary")
        wait_for(lambda: job_row(conn, canary.id)[0] == "c", 30, message="a canary job to complete")
    finally:
        conn.close()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("delay", ["1e13", "inf", "1e308"])
def test_a_retry_delay_postgresql_cannot_represent_is_clamped_to_the_documented_maximum(start_worker, executions,
                                                                                        delay):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    handle = hostile_jobs.fail.perform_later(spec(delay=delay))
    wait_for(lambda: job_row(executions, handle.id)[1] == 1 and job_row(executions, handle.id)[0] == "p", 30,
             message="the job to be pending again after its first failure")
    status, attempts, scheduled_at, now = job_row(executions, handle.id)
    assert abs((scheduled_at - now).total_seconds() - MAX_RETRY_DELAY) < 60
    assert len(errors_of(executions, handle.id)) == 1
    assert_still_working(executions, worker)


@pytest.mark.timeout(60)
def test_exponential_backoff_with_an_infinite_max_wait_after_many_attempts_is_clamped(start_worker, executions):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    exekutor.Retry(max_wait=float("inf"))  # accepted: a retry policy without a ceiling
    retry = exekutor.Retry(attempts=100, max_wait=float("inf"))
    assert retry.delay(45) == MAX_RETRY_DELAY  # 3 s × 2**44 is about 1.7 million years
    handle = hostile_jobs.fail.perform_later(spec(delay=str(3 * 2.0 ** 44)))
    wait_for(lambda: job_row(executions, handle.id)[:2] == ("p", 1), 30, message="the retry to be scheduled")
    assert_still_working(executions, worker)


@pytest.mark.timeout(90)
def test_an_outcome_the_database_refuses_is_split_off_and_written_with_a_minimal_record(start_worker, executions):
    # A serializer that refuses one record stands for anything that makes the database refuse one outcome.
    worker = start_worker(*WORKER_ARGS, apps=APPS, env={"EXEKUTOR_JSON_SERIALIZER": "tests.hostile_jobs:PickyJson"})
    handles = exekutor.enqueue_many([hostile_jobs.canary.job(f"before-{i}") for i in range(30)] +
                                    [hostile_jobs.fail_once.job(spec(text=PickyJson.MARKER))] +
                                    [hostile_jobs.fail_once.job(spec(text="an ordinary failure"))] +
                                    [hostile_jobs.canary.job(f"after-{i}") for i in range(30)])
    poison, ordinary = handles[30], handles[31]
    assert wait_final(executions, poison)[0] == "f"
    (error,) = errors_of(executions, poison.id)
    assert error["type"] == "ValueError"
    assert error["message"].startswith("the full error record could not be stored: TypeError")
    assert wait_final(executions, ordinary)[0] == "f"
    assert errors_of(executions, ordinary.id)[0]["message"] == "an ordinary failure"
    for handle in handles[:30] + handles[32:]:
        assert wait_final(executions, handle)[0] == "c"
    assert "was refused by the database" in worker.output()
    assert_still_working(executions, worker)


# --- BaseExceptions, swallowed timeouts, broken __str__ -----------------------------------------------------

@pytest.mark.timeout(90)
@pytest.mark.parametrize("kind", ["gevent_timeout", "greenlet_exit", "system_exit", "keyboard_interrupt",
                                  "hostile_base"])
def test_a_base_exception_from_a_job_is_a_recorded_failure_and_the_worker_goes_on(start_worker, executions, kind):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    once = hostile_jobs.fail_once.perform_later(spec(kind))
    retried = hostile_jobs.fail.perform_later(spec(kind, delay=0.05, tag=f"{kind}-retried"))
    discarded = hostile_jobs.discard.perform_later(spec(kind, tag=f"{kind}-discarded"))
    assert wait_final(executions, once)[:2] == ("f", 1)
    assert wait_final(executions, retried)[:2] == ("f", 3)  # its Retry(on=BaseException) covers it
    assert wait_final(executions, discarded)[:2] == ("d", 1)  # its discard_on covers it
    assert [e["type"] for e in errors_of(executions, retried.id)] == [EXPECTED_TYPES[kind]] * 3
    assert_still_working(executions, worker)
    assert scalar(executions, "SELECT count(*) FROM test_executions WHERE tag LIKE %s", (f"{kind}%",)) == 5


@pytest.mark.timeout(60)
def test_a_job_that_swallows_its_timeout_ends_timed_out_and_the_log_says_so(start_worker, executions):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    handle = hostile_jobs.swallow.perform_later("swallow")
    assert wait_final(executions, handle)[0] == "d"
    (error,) = errors_of(executions, handle.id)
    assert error["type"] == "exekutor.errors.JobTimeoutError"
    assert "swallowed the interruption" in error["message"]
    assert "swallowed the interruption" in worker.output()
    assert_still_working(executions, worker)


@pytest.mark.timeout(60)
def test_an_exception_whose_str_raises_is_recorded_under_its_own_type(start_worker, executions):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    discarded = hostile_jobs.discard.perform_later(spec("broken_str"))
    retried = hostile_jobs.fail.perform_later(spec("broken_str", delay=0.05, tag="broken-retried"))
    assert wait_final(executions, discarded)[0] == "d"
    assert wait_final(executions, retried)[:2] == ("f", 3)
    for error in errors_of(executions, discarded.id) + errors_of(executions, retried.id):
        assert error["type"] == "tests.hostile_jobs.BrokenStr"
        assert error["message"] == "<exception str() failed: RuntimeError>"
    assert_still_working(executions, worker)


# --- which database errors release a job ---------------------------------------------------------------------

@pytest.mark.timeout(90)
@pytest.mark.parametrize("statement", [
    "SET statement_timeout = 50; SELECT pg_sleep(1)",
    "SELECT 1 / 0",
], ids=["statement-timeout", "division-by-zero"])
def test_a_statement_error_goes_through_the_retry_policy(start_worker, executions, database_url, statement):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    handle = hostile_jobs.sql.perform_later("stmt", statement, url=database_url)
    assert wait_final(executions, handle, timeout=20)[:2] == ("f", 2)
    assert_still_working(executions, worker)


@pytest.mark.timeout(90)
def test_a_failed_connect_to_another_server_goes_through_the_retry_policy(start_worker, executions):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    port = closed.getsockname()[1]
    closed.close()  # nothing listens there
    handle = hostile_jobs.sql.perform_later("connect", "SELECT 1", url=f"postgresql://root@127.0.0.1:{port}/x")
    assert wait_final(executions, handle, timeout=20)[:2] == ("f", 2)
    assert [e["type"] for e in errors_of(executions, handle.id)] == ["psycopg2.OperationalError"] * 2
    assert_still_working(executions, worker)


@pytest.mark.timeout(90)
def test_a_lock_timeout_and_a_lost_connection_to_another_database_go_through_the_retry_policy(
        start_worker, executions, database_url):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    other_db = psycopg2.extensions.make_dsn(database_url, dbname="postgres")
    lost_elsewhere = hostile_jobs.sql.perform_later("other-db", "SELECT pg_terminate_backend(pg_backend_pid())",
                                                    url=other_db)
    query(executions, "CREATE TABLE IF NOT EXISTS test_locked (id int)")
    locker = psycopg2.connect(database_url)
    try:
        query(locker, "LOCK TABLE test_locked IN ACCESS EXCLUSIVE MODE")
        locked = hostile_jobs.sql.perform_later("lock", "SET lock_timeout = 100; SELECT * FROM test_locked",
                                                url=database_url)
        assert wait_final(executions, locked, timeout=20)[:2] == ("f", 2)
        assert [e["type"] for e in errors_of(executions, locked.id)] == ["psycopg2.errors.LockNotAvailable"] * 2
    finally:
        locker.close()
        query(executions, "DROP TABLE IF EXISTS test_locked")
    assert wait_final(executions, lost_elsewhere, timeout=20)[:2] == ("f", 2)
    assert_still_working(executions, worker)


@pytest.mark.timeout(60)
def test_a_job_that_lost_its_connection_to_our_database_is_released_not_failed(start_worker, executions):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    handle = hostile_jobs.sql.perform_later("lost", "SELECT pg_terminate_backend(pg_backend_pid())")
    wait_for(lambda: len(errors_of(executions, handle.id)) == 1, 20, message="the first attempt's error record")
    status, attempts, scheduled_at, now = job_row(executions, handle.id)
    assert (status, attempts) in (("p", 1), ("e", 2))  # released, to run again after the release delay
    assert scalar(executions, "SELECT count(*) FROM exekutor_jobs WHERE id = %s AND status = 'f'", (handle.id,)) == 0
    assert_still_working(executions, worker)


@pytest.mark.timeout(90)
def test_releases_do_not_spend_the_retry_policys_attempts(start_worker, executions):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    handle = hostile_jobs.lose_then_fail.perform_later("lose-twice", 2)  # Retry(attempts=3); each release waits 5 s
    status, attempts = wait_final(executions, handle, timeout=60)[:2]
    types = [error["type"] for error in errors_of(executions, handle.id)]
    assert (status, attempts) == ("f", 5), types  # two releases, then three real failures
    assert types[2:] == ["ValueError"] * 3 and "ValueError" not in types[:2], types
    assert handle.fetch()["releases"] == 2
    assert_still_working(executions, worker)


# --- a timed-out job's statement ------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_a_timed_out_jobs_statement_is_cancelled_on_the_server_and_never_commits(start_worker, executions):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    started = time.monotonic()
    handle = hostile_jobs.slow_statement.perform_later(
        "SELECT pg_sleep(4); INSERT INTO test_executions (tag, pid) VALUES ('committed late', 0)")
    assert wait_final(executions, handle)[0] == "d"
    backend = int(scalar(executions, "SELECT pid FROM test_executions WHERE tag = 'backend'"))
    # Cancelled at once: not still sleeping on the server for the rest of its 4 s.
    wait_for(lambda: not query(executions, "SELECT 1 FROM pg_stat_activity WHERE pid = %s AND state = 'active'",
                               (backend,)), 3, message="the timed-out statement to stop on the server")
    assert time.monotonic() - started < 4
    # And it never commits: past the time it would have finished, its insert is not there.
    time.sleep(max(0.0, 5 - (time.monotonic() - started)))
    assert scalar(executions, "SELECT count(*) FROM test_executions WHERE tag = 'committed late'") == 0
    assert_still_working(executions, worker)


# --- the property: whatever jobs raise, every job ends and the worker goes on --------------------------------

SPECIAL_TEXT = st.sampled_from(["\x00", "\udcff", "\ud800", "日本語", "\x1b[2J", "\r\n", "\\", '"', "\u2028",
                                "\ufeff", "%s", "{}"])
TEXT = st.lists(st.one_of(SPECIAL_TEXT, st.text(st.characters(blacklist_categories=()), max_size=20)),
                max_size=6).map("".join)
DELAYS = st.sampled_from([0.0, 0.05, -5, "nan", "inf", 1e13, 1e308, 1e7])
SPEC = st.fixed_dictionaries({
    "kind": st.sampled_from(sorted(EXPECTED_TYPES)), "text": TEXT, "where": st.sampled_from(["message", "traceback"]),
    "repeat": st.sampled_from([1, 1, 1, 1000, 10**6]), "delay": DELAYS})
JOBS = st.lists(st.tuples(st.sampled_from(["fail", "fail_once", "discard"]), SPEC), min_size=1, max_size=4)


def _settled(db, ids):
    rows = query(db, "SELECT status, scheduled_at > now() + interval '1 hour' FROM exekutor_jobs "
                     "WHERE id = ANY(%s::uuid[])", (ids,))
    return len(rows) == len(ids) and all(status in FINAL or (status == "p" and far) for status, far in rows)


@pytest.mark.timeout(600)
def test_property_every_generated_job_ends_and_the_worker_keeps_reserving(start_worker, executions):
    worker = start_worker(*WORKER_ARGS, apps=APPS)
    counter = iter(range(10**9))

    @given(jobs=JOBS)
    def check(jobs):
        requests, expected = [], []
        for name, generated in jobs:
            tag = f"p{next(counter)}"
            text = generated["text"]
            repeat = min(generated["repeat"], 1_200_000 // max(1, len(text)))
            job_spec = dict(generated, tag=tag, text=encode_text(text), repeat=repeat)
            requests.append(getattr(hostile_jobs, name).job(job_spec))
            expected.append((name, generated["kind"], tag))
        handles = exekutor.enqueue_many(requests)
        ids = [h.id for h in handles]
        wait_for(lambda: _settled(executions, ids), 60, message=f"every job to end\n{worker.output()[-3000:]}")
        for handle, (name, kind, tag) in zip(handles, expected):
            status, attempts, _, _ = job_row(executions, handle.id)
            runs = scalar(executions, "SELECT count(*) FROM test_executions WHERE tag = %s", (tag,))
            errors = errors_of(executions, handle.id)
            assert runs == attempts, (name, kind, "ran", runs, "times for", attempts, "attempts")
            assert len(errors) == attempts, (name, kind, errors)
            assert {e["type"] for e in errors} == {EXPECTED_TYPES[kind]}, errors
            if name == "discard":
                assert (status, attempts) == ("d", 1)
            elif name == "fail_once":
                assert (status, attempts) == ("f", 1)
            else:
                assert status == "f" and attempts == 3 or status == "p" and attempts < 3, (status, attempts)
        assert_still_working(executions, worker, tag=f"canary-{next(counter)}")

    check()
    worker.signal(signal.SIGTERM)
    assert worker.wait(30) == 0, worker.output()[-3000:]


def test_the_retry_clamp_is_documented():
    assert MAX_RETRY_DELAY == datetime.timedelta(days=365).total_seconds()
    readme = open(os.path.join(os.path.dirname(os.path.dirname(__file__)), "README.md"), encoding="utf-8").read()
    assert "365 days" in readme and f"{MAX_MESSAGE_CHARS:,}" in readme
