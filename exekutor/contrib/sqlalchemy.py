"""SQLAlchemy integration (extra `sqlalchemy`, SQLAlchemy 1.4 and 2.x with the psycopg2 driver).

Importing this module lets `.set(connection=...)` take a `Session`, a `scoped_session` or a `Connection`: the job is
inserted in that transaction, so it exists if and only if the transaction commits::

    import exekutor.contrib.sqlalchemy

    with Session() as session:
        session.add(user)
        session.flush()
        send_welcome.set(connection=session).perform_later(user.id)
        session.commit()

`register_models(Base, Session)` makes instances of `Base`'s mapped classes job arguments (and receivers of
asynchronous methods): stored as class and primary key, reloaded in the worker with `Session.get()`. A record
deleted in the meantime discards the job with `RecordNotFoundError`. In the worker each job gets its own session
from `Session` (greenlet-local), removed when the job ends; job code commits its own changes.
"""
import psycopg2.extensions
from sqlalchemy import inspect as _inspect
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session, scoped_session

from exekutor import hooks
from exekutor.definitions import default_name
from exekutor.enqueue import register_connection_adapter
from exekutor.errors import DiscardJob, SerializationError
from exekutor.serialization import serializers

__all__ = ["ModelSerializer", "RecordNotFoundError", "connection_of", "register_models"]


class RecordNotFoundError(DiscardJob, SerializationError):
    """A model instance given to a job was deleted before the job ran: the job is discarded."""


# --- transactional enqueue -----------------------------------------------------------------------------------

@register_connection_adapter
def connection_of(obj):
    """The psycopg2 connection behind a Session, scoped_session or Connection, in its transaction; else None."""
    if isinstance(obj, scoped_session):
        obj = obj()
    if isinstance(obj, Session):
        obj = obj.connection()  # begins the session's transaction if it has not begun
    if not isinstance(obj, Connection):
        return None
    if not obj.in_transaction():
        if not hasattr(obj, "commit"):  # a SQLAlchemy 1.4 "legacy" connection: no autobegin
            raise ValueError("enqueue through a SQLAlchemy Connection inside a transaction "
                             "(with engine.begin() as connection: ...)")
        obj.begin()  # what the connection does on its first statement; its commit() or rollback() ends it
    proxied = obj.connection
    raw = getattr(proxied, "dbapi_connection", None) or proxied.connection  # SQLAlchemy 2.x or 1.4
    if not isinstance(raw, psycopg2.extensions.connection):
        raise TypeError(f"exekutor enqueues on psycopg2 connections, not {type(raw).__module__} ones: use the "
                        "postgresql+psycopg2:// driver (SQLAlchemy 2.1 makes postgresql:// psycopg 3)")
    return raw


# --- mapped instances as job arguments -----------------------------------------------------------------------

class ModelSerializer:
    """Serializes instances of the mapped subclasses of `base` as {"model": "module:Class", "pk": [...]}."""

    def __init__(self, base, session, remove_after_job=True):
        self.base = base
        # Under the worker's monkeypatching, a scoped_session is greenlet-local: one session per running job.
        self.session = session if isinstance(session, scoped_session) else scoped_session(session)
        self.remove_after_job = remove_after_job
        self._models = {}

    def dump(self, obj):
        state = _inspect(obj)
        if state.key is None:  # never flushed: no row, no primary key (flushing here would hide flush errors)
            raise SerializationError(f"{type(obj).__qualname__} instance has no primary key yet: add it to the "
                                     "session and flush (session.flush()) before enqueueing")
        return {"model": default_name(type(obj)), "pk": list(state.identity)}

    def load(self, data):
        model = self._model(data["model"])
        primary_key = tuple(data["pk"])
        obj = self.session.get(model, primary_key)
        if obj is None:
            raise RecordNotFoundError(f"{data['model']} with primary key {primary_key!r} no longer exists: "
                                      "the job is discarded")
        return obj

    def _model(self, path):
        """The mapped class named `path` under `base` (never imported: mapped classes only)."""
        if path not in self._models:
            self._models = {default_name(mapper.class_): mapper.class_ for mapper in self.base.registry.mappers}
        try:
            return self._models[path]
        except KeyError:
            raise SerializationError(f"{path!r} is not a class mapped under {default_name(self.base)} in this "
                                     "process") from None

    def remove_session(self, info):
        """around_job_execution hook: a job run by a worker gets a fresh session, removed when it ends.
        `perform_now` (no job id) runs in the caller's session, which is left alone."""
        try:
            yield
        finally:
            if info.get("id") is not None:
                self.session.remove()


_registered = {}


def register_models(base, session, name="sqlalchemy", remove_after_job=True):
    """Make instances of `base`'s mapped classes job arguments, reloaded in the worker with `session`.

    base: the declarative base (`DeclarativeBase` subclass, `declarative_base()`, Flask-SQLAlchemy's `db.Model`).
    session: a `sessionmaker` or a `scoped_session` (use the same scoped session in job code, or
    `sqlalchemy.orm.object_session(instance)`). name: the serializer's tag in payloads, "sqlalchemy" by default;
    a second base in the same application needs a name of its own. remove_after_job: remove the worker's session
    after each job (False when something else scopes it, such as Flask-SQLAlchemy's application context).
    Registering `base` again replaces its serializer.
    """
    serializer = ModelSerializer(base, session, remove_after_job)
    try:
        serializers.register(base, serializer.dump, serializer.load, name=name, subclasses=True)  # models: by class
    except ValueError as error:
        raise ValueError(f"{error}: register_models(..., name=...) gives each declarative base a name of its own")
    previous = _registered.pop(base, None)
    if previous is not None:
        hooks.unregister(previous.remove_session)
    if remove_after_job:
        hooks.around_job_execution(serializer.remove_session)
    _registered[base] = serializer
    return serializer
