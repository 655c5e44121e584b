"""SQLAlchemy models with asynchronous methods for tests/test_sqlalchemy.py (`--app tests.sqlalchemy_app`).

Plain SQLAlchemy (no Flask), in the style that works on SQLAlchemy 1.4 and 2.x. The tests create and drop the
tables (`Base.metadata`).
"""
import os
import uuid

import psycopg2
from sqlalchemy import Boolean, Column, Integer, String, create_engine
from sqlalchemy.dialects.postgresql import UUID
from sqlalchemy.orm import declarative_base, object_session, scoped_session, sessionmaker

import exekutor
from exekutor.contrib.sqlalchemy import register_models
from exekutor.db import default_pool

engine = create_engine("postgresql+psycopg2://",
                       creator=lambda: psycopg2.connect(os.environ["EXEKUTOR_DATABASE_URL"]))
Base = declarative_base()
SessionFactory = sessionmaker(bind=engine)
Session = scoped_session(SessionFactory)
register_models(Base, Session, name="tests.sqlalchemy_app")  # the Flask tests' models are "sqlalchemy"


class Account(Base):
    __tablename__ = "test_sa_accounts"

    id = Column(Integer, primary_key=True)
    owner = Column(String, nullable=False)
    balance = Column(Integer, nullable=False, default=0)
    closed = Column(Boolean, nullable=False, default=False)
    note = Column(String, nullable=False, default="")

    @exekutor.asynchronous(queue="accounts")
    def deposit(self, amount, note=""):
        """Runs on the instance the worker reloaded: `balance` is the committed value at run time."""
        self.balance += amount
        self.note = f"{note} pid={os.getpid()}"
        object_session(self).commit()

    def close(self):
        """Not asynchronous: a payload naming it must never get here."""
        self.closed = True
        object_session(self).commit()

    @exekutor.asynchronous
    @classmethod
    def open_for(cls, owner, balance=0):
        Session.add(cls(owner=owner, balance=balance))
        Session.commit()


class Entry(Base):
    """A composite primary key with a UUID part."""

    __tablename__ = "test_sa_entries"

    book = Column(UUID(as_uuid=True), primary_key=True, default=uuid.uuid4)
    seq = Column(Integer, primary_key=True)
    text = Column(String, nullable=False, default="")

    @exekutor.asynchronous
    def append(self, text):
        self.text += text
        Session.commit()  # the scoped session is the one the entry was loaded with


class Audit(Base):
    __tablename__ = "test_sa_audits"

    id = Column(Integer, primary_key=True)
    owner = Column(String)
    accounts = Column(Integer)
    entry = Column(String)


@exekutor.job(name="tests.sqlalchemy.audit")
def audit(account, entry=None):
    """Models as ordinary job arguments. It only reads through the session (and records what it saw on a connection
    of its own), so the session is left in a transaction unless exekutor removes it when the job ends."""
    accounts = Session.query(Account).count()
    with default_pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("INSERT INTO test_sa_audits (owner, accounts, entry) VALUES (%s, %s, %s)",
                       (account.owner, accounts, entry.text if entry else None))
