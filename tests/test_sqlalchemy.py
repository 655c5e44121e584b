"""exekutor.contrib.sqlalchemy: enqueueing in a Session's or Connection's transaction, and models as job arguments
and asynchronous receivers, reloaded by real workers."""
import os

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.orm import sessionmaker

import exekutor
from exekutor.serialization import dump_arguments, load_arguments
from tests.conftest import query, scalar, wait_for
from tests.jobs_app import noop
from tests.sqlalchemy_app import Account, Base, Entry, Session, SessionFactory, audit, engine
from tests.test_asynchronous import error_of, insert_payload, wait_finished

PREFIX = "tests.sqlalchemy_app:"


@pytest.fixture
def tables(db):
    Base.metadata.create_all(engine)
    yield
    Session.remove()
    engine.dispose()
    Base.metadata.drop_all(engine)
    engine.dispose()


def job_count(db):
    return scalar(db, "SELECT count(*) FROM exekutor_jobs")


def create_account(owner, balance=0):
    with SessionFactory() as session:
        account = Account(owner=owner, balance=balance)
        session.add(account)
        session.commit()
        return account.id


def receiver(model, *primary_key):
    return {"__exekutor__": "tests.sqlalchemy_app", "v": {"model": PREFIX + model, "pk": list(primary_key)}}


# --- transactional enqueue ------------------------------------------------------------------------------------

def test_a_rolled_back_session_leaves_no_job_and_a_committed_one_leaves_one(db, tables):
    with SessionFactory() as session:
        account = Account(owner="ann")
        session.add(account)
        session.flush()
        account.deposit.set(connection=session)(5)
        noop.set(connection=session).perform_later("in the same transaction")
        assert job_count(db) == 0  # not visible before the commit
        session.rollback()
    assert job_count(db) == 0
    assert scalar(db, "SELECT count(*) FROM test_sa_accounts") == 0

    with SessionFactory() as session:
        account = Account(owner="bob")
        session.add(account)
        session.flush()
        request = account.deposit.set(connection=session)(5, note="welcome")
        assert job_count(db) == 0
        session.commit()
        account_id = account.id
    assert query(db, "SELECT payload, queue FROM exekutor_jobs") == [
        ({"job": PREFIX + "Account.deposit", "args": [receiver("Account", account_id), 5],
          "kwargs": {"note": "welcome"}}, "accounts")]
    assert request.fetch()["status"] == "pending"


def test_a_scoped_session_enqueues_in_its_current_session(db, tables):
    account = Account(owner="cat")
    Session.add(account)
    noop.set(connection=Session).perform_later(1)
    Session.rollback()
    assert job_count(db) == 0
    noop.set(connection=Session).perform_later(2)
    Session.commit()
    assert job_count(db) == 1


def test_a_connection_enqueues_in_its_transaction(db, tables):
    with engine.connect() as conn:
        transaction = conn.begin()
        noop.set(connection=conn).perform_later(1)
        transaction.rollback()
    assert job_count(db) == 0
    with engine.connect() as conn:
        transaction = conn.begin()
        conn.execute(text("INSERT INTO test_sa_accounts (owner, balance, closed, note) VALUES ('dan', 0, false, '')"))
        noop.set(connection=conn).perform_later(2)
        assert job_count(db) == 0
        transaction.commit()
    with engine.begin() as conn:
        noop.set(connection=conn).perform_later(3)
    assert sorted(row[0]["args"][0] for row in query(db, "SELECT payload FROM exekutor_jobs")) == [2, 3]


@pytest.mark.skipif(not hasattr(Connection, "commit"), reason="SQLAlchemy 1.4 legacy connections do not autobegin")
def test_a_connection_outside_a_transaction_begins_one_as_its_first_statement_would(db, tables):
    with engine.connect() as conn:
        noop.set(connection=conn).perform_later(1)
        assert conn.in_transaction()
        conn.rollback()
        noop.set(connection=conn).perform_later(2)
        assert job_count(db) == 0
        conn.commit()
    assert [row[0]["args"] for row in query(db, "SELECT payload FROM exekutor_jobs")] == [[2]]


@pytest.mark.skipif(hasattr(Connection, "commit"), reason="SQLAlchemy 2 connections autobegin")
def test_a_legacy_connection_must_be_in_a_transaction(db, tables):
    with engine.connect() as conn, pytest.raises(ValueError, match="inside a transaction"):
        noop.set(connection=conn).perform_later(1)
    assert job_count(db) == 0


def test_a_session_on_another_driver_is_refused_clearly(db):
    other = create_engine("sqlite://")
    with sessionmaker(bind=other)() as session, pytest.raises(TypeError, match="psycopg2 connections, not sqlite3"):
        noop.set(connection=session).perform_later(1)
    other.dispose()
    assert job_count(db) == 0


def test_an_instance_without_a_row_cannot_be_enqueued(db, tables):
    with pytest.raises(exekutor.SerializationError, match=r"Account instance has no primary key yet: add it to "
                                                          r"the session and flush \(session.flush\(\)\)"):
        Account(owner="eve").deposit(1)
    with SessionFactory() as session:
        pending = Account(owner="eve")
        session.add(pending)
        with pytest.raises(exekutor.SerializationError, match="Account instance has no primary key yet"):
            audit.set(connection=session).perform_later(pending)
        assert pending.id is None  # enqueueing never flushes: a flush error must come from the caller's flush()
    assert job_count(db) == 0


def test_instances_are_stored_as_class_and_primary_key_and_reloaded(db, tables):
    with SessionFactory() as session:
        entry = Entry(seq=3, text="x")
        account = Account(owner="fay")
        session.add_all([entry, account])
        session.commit()
        data = dump_arguments((entry, account), {})
        book = entry.book
    assert data["args"][0] == receiver("Entry", {"__exekutor__": "uuid", "v": str(book)}, 3)
    (loaded_entry, loaded_account), _ = load_arguments(data)
    assert (loaded_entry.book, loaded_entry.seq, loaded_entry.text, loaded_account.owner) == (book, 3, "x", "fay")
    assert loaded_entry in Session()  # loaded with the registered session
    Session.remove()


# --- in a real worker -----------------------------------------------------------------------------------------

def test_instance_methods_run_in_the_worker_on_a_reloaded_instance(db, tables, start_worker):
    account_id = create_account("gus", balance=10)
    with SessionFactory() as session:
        account = session.get(Account, account_id)
        request = account.deposit(5, note="salary")
        session.get(Account, account_id).balance = 20  # changed after the enqueue: the worker must see 20
        session.commit()
    with SessionFactory() as session:
        entry = Entry(seq=1, text="a")
        session.add(entry)
        session.commit()
        append = entry.append("b")
    opened = Account.open_for("hal", balance=7)
    start_worker("--app", "tests.sqlalchemy_app")
    for job in (request, append, opened):
        assert wait_finished(db, job.id) == "c", error_of(db, job.id)
    assert query(db, "SELECT balance, note FROM test_sa_accounts WHERE id = %s", (account_id,))[0][0] == 25
    note = scalar(db, "SELECT note FROM test_sa_accounts WHERE id = %s", (account_id,))
    assert note.startswith("salary pid=") and note != f"salary pid={os.getpid()}"
    assert scalar(db, "SELECT text FROM test_sa_entries") == "ab"
    assert scalar(db, "SELECT balance FROM test_sa_accounts WHERE owner = 'hal'") == 7


def test_models_as_job_arguments_and_the_job_session_is_removed_after_each_job(db, tables, start_worker):
    account_id = create_account("ida")
    with SessionFactory() as session:
        entry = Entry(seq=2, text="e")
        session.add(entry)
        session.flush()
        requests = [audit.set(connection=session).perform_later(session.get(Account, account_id), entry=entry)
                    for _ in range(3)]
        session.commit()
    worker = start_worker("--app", "tests.sqlalchemy_app", "--threads", "1")
    for request in requests:
        assert wait_finished(db, request.id) == "c", error_of(db, request.id)
    assert query(db, "SELECT owner, accounts, entry FROM test_sa_audits") == [("ida", 1, "e")] * 3
    # The job read through its session and did not commit: removed, its connection is not left in a transaction.
    in_transaction = ("SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                      "datname = current_database() AND state LIKE 'idle in transaction%%'")
    wait_for(lambda: scalar(db, in_transaction) == 0, 10, message="the worker's job sessions to be removed")
    assert worker.proc.poll() is None


def test_a_deleted_record_discards_the_job_with_a_clear_error(db, tables, start_worker):
    account_id = create_account("jim")
    with SessionFactory() as session:
        request = session.get(Account, account_id).deposit(1)
    query(db, "DELETE FROM test_sa_accounts WHERE id = %s", (account_id,))
    start_worker("--app", "tests.sqlalchemy_app")
    assert wait_finished(db, request.id) == "d"
    error = error_of(db, request.id)
    assert error["type"] == "exekutor.contrib.sqlalchemy.RecordNotFoundError"
    assert error["message"] == (f"tests.sqlalchemy_app:Account with primary key ({account_id},) no longer exists: "
                                "the job is discarded")


def test_a_payload_naming_a_model_method_not_declared_asynchronous_is_discarded_and_not_called(
        db, tables, start_worker):
    account_id = create_account("kim")
    job_id = insert_payload(db, {"job": PREFIX + "Account.close", "args": [receiver("Account", account_id)],
                                 "kwargs": {}})
    start_worker("--app", "tests.sqlalchemy_app")
    assert wait_finished(db, job_id) == "d"
    assert error_of(db, job_id)["type"] == "exekutor.asynchronous.NotAsynchronousError"
    assert scalar(db, "SELECT closed FROM test_sa_accounts WHERE id = %s", (account_id,)) is False
