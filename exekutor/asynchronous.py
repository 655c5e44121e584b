"""Asynchronous methods: `@exekutor.asynchronous` makes calling a function or method enqueue it as a job.

::

    class Account(Base):
        @exekutor.asynchronous(queue="billing")
        def recompute(self, month): ...

        @exekutor.asynchronous                  # above @classmethod / @staticmethod
        @classmethod
        def rebuild_all(cls, since): ...

    account.recompute(3)                        # arguments checked now, then enqueued; returns the JobRequest
    account.recompute.set(priority=1)(3)        # per-call options, as for any job (.set(connection=...) too)
    account.recompute.perform_now(3)            # runs inline, with the execution hooks
    account.recompute.__wrapped__(3)            # the plain method

Calling checks the arguments against the signature first: a bad call raises the `TypeError` Python would raise
(same message), and nothing is enqueued.

Each decorated function is one registered job, named `module:Qualname` unless given `name=`, whose callable takes
the receiver as its first argument: an instance method's receiver is the instance, stored with the registered
serializers (SQLAlchemy models: `exekutor.contrib.sqlalchemy`; other classes: `exekutor.serializers.register`); a
classmethod's is the name of the class, resolved in the worker among the defining class and its subclasses (never
imported). A worker runs only registered jobs, so only declared methods run from a payload: a payload naming
another method of a class (or function of a module) that declares asynchronous methods is discarded with
`NotAsynchronousError` and never called.
"""
import functools
import inspect

from exekutor.definitions import (  # noqa: F401 - reject_undeclared_method: importable from here, as before
    JobDefinition,
    NotAsynchronousError,
    declare_asynchronous,
    default_name,
    registry,
    reject_undeclared_method,
)
from exekutor.errors import SerializationError
from exekutor.jobs import Enqueueable
from exekutor.serialization import dump_arguments

__all__ = ["asynchronous", "AsynchronousMethod", "NotAsynchronousError", "reject_undeclared_method"]

_NO_RECEIVER = object()


class _Placeholder:
    """Stands for a default value in generated source."""

    def __repr__(self):
        return "None"


def _argument_checker(func):
    """A function with `func`'s parameters and an empty body: calling it raises exactly the TypeError (message
    included) that calling `func` with the same arguments would, and nothing else."""
    signature = inspect.signature(func)
    parameters = list(signature.parameters.values())
    # Defaults are written as placeholders and set afterwards, so any default value works.
    source = signature.replace(parameters=[p.replace(annotation=p.empty, default=p.default if p.default is p.empty
                                                     else _Placeholder()) for p in parameters],
                               return_annotation=signature.empty)
    namespace = {}
    exec(f"def check{source}: pass", namespace)  # the source holds parameter names only, no values
    check = namespace["check"]
    names = {"co_name": func.__name__}
    if hasattr(check.__code__, "co_qualname"):  # Python 3.11+ takes the message's name from the code object
        names["co_qualname"] = func.__qualname__
    check.__code__ = check.__code__.replace(**names)
    check.__name__, check.__qualname__ = func.__name__, func.__qualname__
    check.__defaults__ = tuple(p.default for p in parameters if p.default is not p.empty
                               and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)) or None
    check.__kwdefaults__ = {p.name: p.default for p in parameters
                            if p.default is not p.empty and p.kind is p.KEYWORD_ONLY} or None
    return check


class AsynchronousCall(Enqueueable):
    """The enqueue API of an asynchronous method, bound to a receiver (or not) and to per-call options.

    Calling it (or `perform_later`) enqueues; `job()` makes a request for `exekutor.enqueue_many`; `perform_now`
    runs inline; `set(**options)` gives a copy with options; `__wrapped__` is the plain (bound) callable.
    """

    def __init__(self, method, receiver, options, plain):
        self._method = method
        self._receiver = receiver
        self._options = options
        self.__wrapped__ = plain

    def _definition(self):
        return self._method.definition

    def _enqueue_options(self):
        return self._options

    def _arguments(self, args, kwargs):
        """The job's arguments (receiver first), checked against the signature as Python would check them."""
        if self._receiver is not _NO_RECEIVER:
            args = (self._receiver, *args)
        self._method.check_arguments(args, kwargs)
        return args

    def set(self, **options):
        return AsynchronousCall(self._method, self._receiver, super().set(**options)._enqueue_options(),
                                self.__wrapped__)

    def job(self, *args, **kwargs):
        args = self._arguments(args, kwargs)
        try:
            return super().job(*args, **kwargs)
        except SerializationError as error:
            self._method.explain_receiver_error(args, error)
            raise

    def perform_now(self, *args, **kwargs):
        return super().perform_now(*self._arguments(args, kwargs), **kwargs)

    def __call__(self, *args, **kwargs):
        return self.perform_later(*args, **kwargs)

    def __repr__(self):
        bound = "" if self._receiver is _NO_RECEIVER else f" of {self._receiver!r}"
        return f"<asynchronous {self._method.definition.name}{bound}>"


class AsynchronousMethod(AsynchronousCall):
    """What `@exekutor.asynchronous` returns: the unbound enqueue API, and a descriptor that binds it to a
    receiver when accessed on an instance (methods) or a class (classmethods)."""

    def __init__(self, func, kind, name=None, retry=None, discard_on=(), **options):
        super().__init__(self, _NO_RECEIVER, {}, func)
        functools.update_wrapper(self, func)
        self.kind = kind  # "function" (also instance methods), "classmethod" or "staticmethod"
        self.owner = None  # the defining class, once the class body is done (__set_name__)
        self._check = _argument_checker(func)
        path = default_name(func)
        self.definition = JobDefinition(name or path, self._run, options, retry, discard_on, target_id=id(func))
        registry.add(self.definition)
        declare_asynchronous(path)

    def __set_name__(self, owner, name):
        self.owner = owner

    def __get__(self, instance, owner=None):
        if self.kind == "classmethod":
            owner = owner if owner is not None else type(instance)
            return AsynchronousCall(self, default_name(owner), {}, self.__wrapped__.__get__(owner))
        if self.kind == "function" and instance is not None:
            return AsynchronousCall(self, instance, {}, self.__wrapped__.__get__(instance, owner))
        return self

    # --- enqueueing ---------------------------------------------------------------------------------------

    def check_arguments(self, args, kwargs):
        """TypeError, as Python would raise it, if `func(*args, **kwargs)` could not be called; TypeError too if an
        instance method's receiver is not an instance of its class (the worker would discard the job)."""
        self._check(*args, **kwargs)
        if self._foreign_receiver(args):
            hint = " (put @exekutor.asynchronous above @classmethod)" if isinstance(args[0], type) else ""
            raise TypeError(f"{self.__qualname__}() needs an instance of {self.owner.__qualname__} as its "
                            f"receiver, got {_type_name(args)}{hint}")

    def _foreign_receiver(self, args):
        """Whether this is an instance method and `args` do not start with an instance of its class."""
        return self.kind == "function" and self.owner is not None and not (args and isinstance(args[0], self.owner))

    def explain_receiver_error(self, args, error):
        """Re-raise a serialization error of an instance method's receiver with what to do about it."""
        if self.kind != "function" or self.owner is None:
            return
        try:
            dump_arguments(args[:1], {})
        except SerializationError:
            raise SerializationError(
                f"cannot enqueue {self.definition.name}: its receiver (an instance of {_type_name(args)}) cannot be "
                f"serialized ({error}). "
                "An instance method needs a receiver the worker can rebuild: a SQLAlchemy model (see "
                "exekutor.contrib.sqlalchemy.register_models) or a class with a registered serializer "
                "(exekutor.serializers.register)") from error

    # --- in the worker ------------------------------------------------------------------------------------

    def _run(self, *args, **kwargs):
        """The job's callable: the receiver (an instance, or a classmethod's class name) comes first."""
        if self.kind == "classmethod":
            return self.__wrapped__(self._receiver_class(args[0] if args else None), *args[1:], **kwargs)
        if self._foreign_receiver(args):
            raise NotAsynchronousError(f"{self.definition.name} runs on {self.owner.__qualname__} instances, the "
                                       f"payload gives {_type_name(args)}: the job is discarded, not called")
        return self.__wrapped__(*args, **kwargs)

    def _receiver_class(self, path):
        """The class named `path` among the defining class and its subclasses (nothing is imported)."""
        pending = [self.owner] if self.owner is not None else []
        while pending:
            cls = pending.pop()
            if default_name(cls) == path:
                return cls
            pending.extend(cls.__subclasses__())
        raise NotAsynchronousError(f"{self.definition.name}: {path!r} is not a loaded subclass of "
                                   f"{getattr(self.owner, '__qualname__', 'its class')}: the job is discarded, "
                                   "not called")

    def __repr__(self):
        return f"<asynchronous {self.definition.name}>"


def _type_name(args):
    return type(args[0]).__qualname__ if args else "nothing"


def asynchronous(func=None, *, name=None, queue=None, priority=None, execution_timeout=None, queue_timeout=None,
                 retry=None, discard_on=()):
    """Make calls of a function, instance method, classmethod or staticmethod enqueue it as a job.

    `@exekutor.asynchronous` or `@exekutor.asynchronous(queue=..., priority=..., execution_timeout=...,
    queue_timeout=..., retry=exekutor.Retry(...), discard_on=(...), name=...)`; on a classmethod or staticmethod
    it goes above `@classmethod` / `@staticmethod`.
    """
    options = dict(queue=queue, priority=priority, execution_timeout=execution_timeout, queue_timeout=queue_timeout)

    def decorate(target):
        kind = {classmethod: "classmethod", staticmethod: "staticmethod"}.get(type(target), "function")
        function = target.__func__ if kind != "function" else target
        if not inspect.isfunction(function):
            raise TypeError(f"@exekutor.asynchronous needs a function or method, got {target!r}")
        return AsynchronousMethod(function, kind, name=name, retry=retry, discard_on=discard_on, **options)

    return decorate(func) if func is not None else decorate
