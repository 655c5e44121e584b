"""Error records are storable whatever the error, and only a lost connection to our database counts as lost.

Records are checked by storing them in a real PostgreSQL (a UTF-8 and a LATIN1 database); database errors are
real ones from a real server, raised under the worker's cooperative wait callback.
"""
import gevent
import psycopg2
import psycopg2.errors
import psycopg2.extensions
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exekutor.db.green import is_connection_lost, server_of, wait_callback
from exekutor.error_records import (
    MAX_MESSAGE_CHARS,
    MAX_TRACEBACK_CHARS,
    codec_for,
    error_record,
    fit_record,
    minimal_record,
)
from exekutor.serialization import json_backend
from tests.conftest import query

ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=200)
HOSTILE_TEXT = st.lists(st.one_of(ANY_TEXT, st.sampled_from(["\x00", "\udcff", "\ud800", "日本", "€", "\\", '"'])),
                        max_size=6).map("".join)


class BrokenStr(Exception):
    def __str__(self):
        raise RuntimeError("no")


class NotAString(Exception):
    def __str__(self):
        return 42


def raised(error):
    try:
        raise error
    except BaseException as caught:  # noqa: BLE001
        return caught


def store(conn, record):
    """Insert the record as jsonb the way the completer does (JSON text, array literal element); returns it back."""
    codec = codec_for(conn.info.parameter_status("server_encoding"))
    text = json_backend("json").dumps(fit_record(record, codec))
    return query(conn, "SELECT %s::jsonb", (text,))[0][0]


@pytest.fixture
def utf8(db):
    return db


@pytest.fixture
def latin1(latin1_url):
    conn = psycopg2.connect(latin1_url)
    conn.autocommit = True
    yield conn
    conn.close()


@given(text=HOSTILE_TEXT)
def test_property_any_message_is_stored_and_kept_when_it_needs_no_escaping(utf8, text):
    stored = store(utf8, error_record(raised(ValueError(text))))
    if "\x00" not in text and "\\" not in text and text.encode("utf-8", "surrogatepass").decode("utf-8", "replace") \
            == text:
        assert stored["message"] == text
    assert "\x00" not in stored["message"] and "\x00" not in stored["traceback"]


@given(text=HOSTILE_TEXT)
def test_property_any_message_is_stored_in_a_latin1_database(latin1, text):
    stored = store(latin1, error_record(raised(RuntimeError(text))))
    assert stored["type"] == "RuntimeError"


def test_huge_messages_and_tracebacks_are_cut_with_a_note(utf8):
    record = error_record(raised(ValueError("m" * 50_000 + "END")))
    assert record["message"].startswith("m" * MAX_MESSAGE_CHARS)
    assert record["message"].endswith("... [40003 more characters cut]")
    assert len(record["traceback"]) <= MAX_TRACEBACK_CHARS + 100
    assert store(utf8, record) == record
    cause = raised(KeyError("x" * 300_000))
    error = ValueError("bottom")
    error.__cause__ = cause
    record = error_record(raised(error))
    assert record["traceback"].startswith("Traceback (most recent call last)")
    assert "characters cut" in record["traceback"]
    assert record["traceback"].rstrip().endswith("ValueError: bottom")  # the end, where it was raised, is kept


@pytest.mark.parametrize("error, kind, message", [
    (BrokenStr("x"), "tests.test_error_records.BrokenStr", "<exception str() failed: RuntimeError>"),
    (NotAString(), "tests.test_error_records.NotAString", "<exception str() failed: TypeError>"),
    (KeyboardInterrupt(), "KeyboardInterrupt", ""),
    (gevent.Timeout(0.5), "gevent.timeout.Timeout", "0.5 seconds"),
])
def test_exceptions_that_cannot_be_printed_are_recorded_under_their_own_type(utf8, error, kind, message):
    record = error_record(raised(error))
    assert record["type"] == kind
    assert record["message"] == message
    store(utf8, record)


def test_a_minimal_record_is_ascii_and_says_why(latin1):
    record = minimal_record({"type": "日本.Error\x00"}, "DataError 22P05: character \udcff")
    assert record["type"] == "\\u65e5\\u672c.Error\\x00"
    assert record["message"].startswith("the full error record could not be stored: DataError 22P05")
    assert store(latin1, record) == record


# --- which errors mean "the connection to our database was lost" ------------------------------------------------

@pytest.fixture
def green():
    """psycopg2 under the worker's wait callback, in this process, for the duration of a test."""
    psycopg2.extensions.set_wait_callback(wait_callback)
    yield
    psycopg2.extensions.set_wait_callback(None)


def connect(url, **more):
    conn = psycopg2.connect(url, **more)
    conn.autocommit = True
    return conn


def error_of(conn, sql):
    with pytest.raises(psycopg2.Error) as caught:
        with conn.cursor() as cursor:
            cursor.execute(sql)
    return caught.value


def test_a_connection_terminated_under_a_job_is_lost_only_if_it_is_to_our_database(green, database_url):
    conn = connect(database_url)
    ours = server_of(conn)
    error = error_of(conn, "SELECT pg_terminate_backend(pg_backend_pid())")
    assert is_connection_lost(error, ours)
    assert not is_connection_lost(error, (ours[0], ours[1], "some_other_database"))
    assert not is_connection_lost(error, (ours[0], ours[1] + 1, ours[2]))
    # Using it again afterwards: a closed connection.
    assert is_connection_lost(error_of(conn, "SELECT 1"), ours)
    import sqlalchemy.exc

    assert is_connection_lost(sqlalchemy.exc.OperationalError("SELECT 1", {}, error), ours)


def test_a_failed_connect_is_not_a_lost_connection(green, database_url):
    dsn = psycopg2.extensions.parse_dsn(database_url)
    for url in (psycopg2.extensions.make_dsn(database_url, port=1), psycopg2.extensions.make_dsn(
            database_url, dbname="no_such_database_here")):
        with pytest.raises(psycopg2.OperationalError) as caught:
            psycopg2.connect(url)
        assert not is_connection_lost(caught.value, ("127.0.0.1", int(dsn.get("port", 5432)), dsn["dbname"]))


def test_statement_errors_are_not_lost_connections(green, database_url, db):
    conn = connect(database_url)
    ours = server_of(conn)
    query(db, "CREATE TABLE IF NOT EXISTS test_counters (key text PRIMARY KEY, value integer NOT NULL)")
    query(db, "INSERT INTO test_counters VALUES ('a', 1), ('b', 1)")
    errors = [error_of(conn, "SET statement_timeout = 50; SELECT pg_sleep(1)")]
    query(conn, "RESET statement_timeout")
    # lock_not_available
    locker = psycopg2.connect(database_url)
    query(locker, "SELECT * FROM test_counters WHERE key = 'a' FOR UPDATE")
    errors.append(error_of(conn, "SET lock_timeout = 50; SELECT * FROM test_counters WHERE key = 'a' FOR UPDATE"))
    locker.rollback()
    # serialization_failure
    reader = psycopg2.connect(database_url)
    reader.set_session(isolation_level="REPEATABLE READ")
    query(reader, "SELECT * FROM test_counters")
    query(conn, "UPDATE test_counters SET value = 2 WHERE key = 'a'")
    errors.append(error_of(reader, "UPDATE test_counters SET value = 3 WHERE key = 'a'"))
    reader.close()
    # deadlock, between two greenlets
    first, second = connect(database_url), connect(database_url)
    query(first, "BEGIN; UPDATE test_counters SET value = 4 WHERE key = 'a'")
    query(second, "BEGIN; UPDATE test_counters SET value = 4 WHERE key = 'b'")
    crossing = [gevent.spawn(error_or_none, first, "UPDATE test_counters SET value = 5 WHERE key = 'b'"),
                gevent.spawn(error_or_none, second, "UPDATE test_counters SET value = 5 WHERE key = 'a'")]
    results = gevent.joinall(crossing, timeout=30)
    errors.append(next(g.value for g in results if g.value is not None))
    codes = [error.pgcode for error in errors]
    assert codes == ["57014", "55P03", "40001", "40P01"]
    assert not any(is_connection_lost(error, ours) for error in errors)
    for c in (first, second, locker, conn):
        c.close()


def error_or_none(conn, sql):
    try:
        query(conn, sql)
    except psycopg2.Error as error:
        return error
    return None
