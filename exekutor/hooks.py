"""Lifecycle hooks: register callables that exekutor runs around enqueueing, job execution and the worker.

Hook points and what they receive::

    before_enqueue(jobs)        around_enqueue(jobs)        after_enqueue(jobs)
    before_job_execution(info)  around_job_execution(info)  after_job_execution(info)
    on_job_failure(info, error) on_fatal_error(error)
    before_startup(worker)      after_startup(worker)
    before_shutdown(worker)     after_shutdown(worker)

``jobs`` is the list of jobs being enqueued; ``info`` is a dict with id, queue, priority, options, payload,
scheduled_at and attempts.

Registration
------------
Plain functions register when decorated (or called: ``hooks.after_enqueue(fn)``)::

    @exekutor.hooks.on_job_failure
    def report(info, error): ...

Methods of a class are only *marked* by the same decorators and register when the instance is registered::

    class Timing(exekutor.hooks.Hook):
        @exekutor.hooks.around_job_execution
        def measure(self, info):
            start = time.monotonic()
            yield
            record(info["queue"], time.monotonic() - start)

    exekutor.hooks.register(Timing())        # or register(Timing): instantiated with no arguments

Design choice: every decorator returns its argument unchanged, and tells a method from a plain function by
``__qualname__``: ``"Timing.measure"`` (defined in a class body) is marked, ``"report"`` or
``"test_x.<locals>.report"`` (module or function scope) is registered at once. A bound method
(``hooks.before_startup(obj.method)``) is registered at once. This keeps methods plain functions (no descriptor to
explain) at the price of one limit: a module-level function assigned inside a class body
(``m = hooks.before_startup(f)``) registers globally. ``Hook`` is an optional base class that documents intent;
``register`` accepts any object with marked methods, collected through the MRO (a subclass override without the
decorator removes the hook). The same callable is registered at most once per point, so registering twice is
harmless.

Running order and errors
------------------------
``before``/``on`` hooks run last-registered-first, ``after`` hooks in registration order, ``around`` hooks nest with
the last registered outermost. An around hook is a generator function that yields exactly once, or a function
returning a context manager (``contextlib.contextmanager`` works); nothing else (there is no ``call_next`` style).

An ``Exception`` raised by a hook is logged to the "exekutor" logger and passed to the ``on_fatal_error`` hooks; it
never stops the other hooks or the caller. An exception inside an ``on_fatal_error`` hook is only logged. Around
hooks run the wrapped call exactly once and never change its outcome:

* raises (or returns, or returns neither a generator nor a context manager) before yielding: reported, the call runs
  as if the hook were absent;
* raises after the yield: reported, the call's result is kept;
* yields a second time: reported and closed (its ``finally`` blocks run), the result is kept;
* the call raises: the exception is thrown into the hook at its yield (so it can observe it), then re-raised to the
  caller unchanged, even if the hook swallows it or raises something else (which is reported).

``BaseException``s that are not ``Exception``s (KeyboardInterrupt, SystemExit, gevent.Timeout, GreenletExit) are
interruptions, not hook bugs: they are never caught or reported, they propagate.

Registration is expected at import time; running only reads immutable tuples, so it is safe from any thread or
greenlet while registration goes on.
"""

from __future__ import annotations

import inspect
import logging
import threading
from typing import Any, Callable, NamedTuple, TypeVar

from .errors import ExekutorError

__all__ = [
    "POINTS", "Hook", "HookError", "register", "unregister", "clear", "has_hooks",
    "run_before", "run_after", "run_on", "run_around",
    "before_enqueue", "around_enqueue", "after_enqueue",
    "before_job_execution", "around_job_execution", "after_job_execution",
    "on_job_failure", "on_fatal_error",
    "before_startup", "after_startup", "before_shutdown", "after_shutdown",
]

logger = logging.getLogger("exekutor")

POINTS = (
    "before_enqueue", "around_enqueue", "after_enqueue",
    "before_job_execution", "around_job_execution", "after_job_execution",
    "on_job_failure", "on_fatal_error",
    "before_startup", "after_startup", "before_shutdown", "after_shutdown",
)

# Attribute holding the points a method is marked for (a tuple: one method may serve several points).
_MARK = "_exekutor_hook_points"

F = TypeVar("F", bound=Callable[..., Any])


class HookError(ExekutorError, RuntimeError):
    """An around hook broke the protocol (did not yield, yielded twice, or is neither generator nor context manager)."""


class Hook:
    """Optional base class for a group of hook methods; mark methods with the hook decorators, then ``register()``."""


class _Entry(NamedTuple):
    fn: Callable[..., Any]
    owner: Any  # what register()/the decorator was given, so unregister(owner) finds every entry


# Tuples, replaced (never mutated) under the lock: a running hook iterates a snapshot that cannot change under it.
_registry: dict = {point: () for point in POINTS}
_lock = threading.Lock()


# ---------------------------------------------------------------- registration


def _add(point: str, fn: Callable[..., Any], owner: Any) -> None:
    with _lock:
        entries = _registry[point]
        if any(entry.fn == fn for entry in entries):
            return  # re-registration (e.g. a module imported twice) must not run a hook twice
        _registry[point] = entries + (_Entry(fn, owner),)


def _in_class_body(fn: Any) -> bool:
    if inspect.ismethod(fn):
        return False  # already bound to an instance: register it like a plain function
    parts = getattr(getattr(fn, "__func__", fn), "__qualname__", "").split(".")
    return len(parts) > 1 and parts[-2] != "<locals>"


def _mark(fn: Any, point: str) -> None:
    target = getattr(fn, "__func__", fn)  # staticmethod/classmethod: the function is what scanning finds
    setattr(target, _MARK, getattr(target, _MARK, ()) + (point,))


def _decorator(point: str, signature: str) -> Callable[[F], F]:
    def decorator(fn: F) -> F:
        if not callable(fn) and not hasattr(fn, "__func__"):
            raise TypeError(f"hooks.{point} needs a callable, got {fn!r}")
        if _in_class_body(fn):
            _mark(fn, point)
        else:
            _add(point, fn, fn)
        return fn

    decorator.__name__ = decorator.__qualname__ = point
    decorator.__doc__ = f"Register (or, in a class body, mark) a hook called as {signature}."
    return decorator


before_enqueue = _decorator("before_enqueue", "fn(jobs)")
around_enqueue = _decorator("around_enqueue", "fn(jobs), a generator yielding once or returning a context manager")
after_enqueue = _decorator("after_enqueue", "fn(jobs)")
before_job_execution = _decorator("before_job_execution", "fn(job_info)")
around_job_execution = _decorator(
    "around_job_execution", "fn(job_info), a generator yielding once or returning a context manager"
)
after_job_execution = _decorator("after_job_execution", "fn(job_info)")
on_job_failure = _decorator("on_job_failure", "fn(job_info, error)")
on_fatal_error = _decorator("on_fatal_error", "fn(error)")
before_startup = _decorator("before_startup", "fn(worker)")
after_startup = _decorator("after_startup", "fn(worker)")
before_shutdown = _decorator("before_shutdown", "fn(worker)")
after_shutdown = _decorator("after_shutdown", "fn(worker)")


def _marked_methods(obj: Any) -> list:
    found: dict = {}
    for klass in reversed(type(obj).__mro__):  # base first, so a subclass definition replaces the base's
        for name, raw in vars(klass).items():
            points = getattr(getattr(raw, "__func__", raw), _MARK, ())
            found[name] = points if isinstance(points, tuple) else ()  # guard against mocks answering any getattr
    return [(getattr(obj, name), points) for name, points in found.items() if points]


def register(obj: Any) -> Any:
    """Register the marked methods of ``obj`` (a class is instantiated with no arguments); returns the instance."""
    if isinstance(obj, type):
        obj = obj()
    methods = _marked_methods(obj)
    if not methods:
        raise TypeError(
            f"{obj!r} has no methods marked with a hook decorator; register a plain function with hooks.<point>(fn)"
        )
    for method, points in methods:
        for point in points:
            _add(point, method, obj)
    return obj


def unregister(obj: Any) -> int:
    """Remove hooks registered for ``obj``: a function, a bound method, an instance, or a class (its instances).

    Returns how many registrations were removed.
    """
    def matches(entry: _Entry) -> bool:
        return entry.owner is obj or entry.fn == obj or type(entry.owner) is obj

    removed = 0
    with _lock:
        for point, entries in _registry.items():
            kept = tuple(entry for entry in entries if not matches(entry))
            removed += len(entries) - len(kept)
            _registry[point] = kept
    return removed


def clear() -> None:
    """Remove every registered hook."""
    with _lock:
        for point in POINTS:
            _registry[point] = ()


def has_hooks(point: str) -> bool:
    """Whether anything is registered for ``point``; lets hot paths skip the hook machinery."""
    return bool(_registry[point])


# ---------------------------------------------------------------- running


def _entries(point: str, kind: str) -> tuple:
    if not point.startswith(kind) or point not in _registry:
        raise ValueError(f"{point!r} is not a {kind.rstrip('_')} hook point")
    return _registry[point]


def _describe(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or repr(fn)


def _report(point: str, fn: Any, error: Exception) -> None:
    logger.error("exekutor: %s hook %s raised %r", point, _describe(fn), error, exc_info=error)
    if point != "on_fatal_error":  # a failing on_fatal_error hook is only logged: reporting it would recurse
        run_on("on_fatal_error", error)


def _run_each(point: str, entries: Any, args: tuple) -> None:
    for fn, _owner in entries:
        try:
            fn(*args)
        except Exception as error:
            _report(point, fn, error)


def run_before(point: str, *args: Any) -> None:
    """Run the ``before_*`` hooks of ``point``, last registered first."""
    _run_each(point, reversed(_entries(point, "before_")), args)


def run_after(point: str, *args: Any) -> None:
    """Run the ``after_*`` hooks of ``point`` in registration order."""
    _run_each(point, _entries(point, "after_"), args)


def run_on(point: str, *args: Any) -> None:
    """Run the ``on_*`` hooks of ``point`` (``on_job_failure``, ``on_fatal_error``), last registered first."""
    _run_each(point, reversed(_entries(point, "on_")), args)


def run_around(point: str, fn: Callable[[], Any], *args: Any) -> Any:
    """Call ``fn()`` once inside every ``around_*`` hook of ``point`` (last registered outermost); return its result."""
    call = fn
    for hook, _owner in _entries(point, "around_"):  # each wrap goes outside the previous: last is outermost
        call = _wrap(point, hook, call, args)
    return call()


def _wrap(point: str, hook: Callable[..., Any], inner: Callable[[], Any], args: tuple) -> Callable[[], Any]:
    return lambda: _call_around(point, hook, inner, args)


def _as_generator(result: Any) -> Any:
    if inspect.isgenerator(result):
        return result
    if hasattr(result, "__enter__") and hasattr(result, "__exit__"):
        return _context_manager_generator(result)
    raise HookError(f"an around hook must be a generator function or return a context manager, got {result!r}")


def _context_manager_generator(cm: Any) -> Any:
    # One protocol for both forms: a context manager behaves as a generator that yields once.
    cm.__enter__()
    try:
        yield
    except BaseException as error:
        cm.__exit__(type(error), error, error.__traceback__)  # a True (suppress) return is ignored: re-raised below
        raise
    cm.__exit__(None, None, None)


def _call_around(point: str, hook: Callable[..., Any], inner: Callable[[], Any], args: tuple) -> Any:
    try:
        gen = _as_generator(hook(*args))
        next(gen)
    except StopIteration:
        _report(point, hook, HookError(f"around hook {_describe(hook)} returned without yielding"))
        return inner()
    except Exception as error:
        _report(point, hook, error)
        return inner()  # the hook never got to wrap the call: run it as if the hook were absent
    try:
        result = inner()
    except BaseException as job_error:
        _throw(point, hook, gen, job_error)
        raise  # always the call's own exception, whatever the hook did with it
    _finish(point, hook, gen)
    return result


def _throw(point: str, hook: Callable[..., Any], gen: Any, job_error: BaseException) -> None:
    try:
        gen.throw(job_error)
    except StopIteration:
        return  # the hook swallowed the error; the caller re-raises it anyway
    except BaseException as error:
        if error is job_error:
            return  # the hook let it through: the normal case
        if not isinstance(error, Exception):
            raise  # an interruption (e.g. gevent.Timeout) during the hook's teardown
        _report(point, hook, error)
        return
    _yielded_twice(point, hook, gen)


def _finish(point: str, hook: Callable[..., Any], gen: Any) -> None:
    try:
        next(gen)
    except StopIteration:
        return
    except Exception as error:
        _report(point, hook, error)
        return
    _yielded_twice(point, hook, gen)


def _yielded_twice(point: str, hook: Callable[..., Any], gen: Any) -> None:
    _report(point, hook, HookError(f"around hook {_describe(hook)} yielded more than once"))
    try:
        gen.close()  # run its finally blocks now rather than whenever it is garbage-collected
    except Exception as error:
        _report(point, hook, error)
