"""The public decorators that define jobs: `@exekutor.job` and class-style `exekutor.Job`, and the enqueue API they
share (`.set()`, `.job()`, `.perform_later()`, `.perform_now()`).

What a definition is, its options and the registry live in exekutor.definitions; enqueueing in exekutor.enqueue,
running in exekutor.execution.
"""
import functools

from exekutor.definitions import DEFINITION_OPTIONS, JobDefinition, default_name, registry, validate_options
from exekutor.enqueue import JobRequest, enqueue
from exekutor.execution import perform_inline


class Enqueueable:
    """The enqueue API shared by decorated functions, Job classes and configured (`.set()`) jobs."""

    def _definition(self):
        raise NotImplementedError

    def _enqueue_options(self):
        return {}

    def set(self, **options):
        """A copy with per-enqueue options: queue, priority, wait, wait_until, execution_timeout,
        queue_timeout, unique_key, unique_until, concurrency, concurrency_key, rate_limit, rate_key, connection."""
        merged = dict(self._enqueue_options())
        merged.update(validate_options(options))
        return ConfiguredJob(self._definition(), merged)

    def job(self, *args, **kwargs):
        """A job request to pass to `exekutor.enqueue_many`; arguments are serialized (and checked) now."""
        return JobRequest(self._definition(), args, kwargs, self._enqueue_options())

    def perform_later(self, *args, **kwargs):
        """Enqueue the job; returns its request, whose `id` is the job's id."""
        request = self.job(*args, **kwargs)
        enqueue([request], connection=self._enqueue_options().get("connection"))
        return request

    def perform_now(self, *args, **kwargs):
        """Run the job inline, with the job execution hooks."""
        return perform_inline(self._definition(), args, kwargs, self._enqueue_options())


class ConfiguredJob(Enqueueable):
    def __init__(self, definition, options):
        self.__definition = definition
        self.__options = options

    def _definition(self):
        return self.__definition

    def _enqueue_options(self):
        return self.__options

    def __repr__(self):
        return f"<job {self.__definition.name} with {self.__options}>"


class JobFunction(Enqueueable):
    """A function decorated with `@exekutor.job`: still a plain function when called."""

    def __init__(self, func, name=None, retry=None, discard_on=(), **options):
        functools.update_wrapper(self, func)
        self.definition = JobDefinition(name or default_name(func), func, options, retry, discard_on)
        registry.add(self.definition)

    def _definition(self):
        return self.definition

    def __call__(self, *args, **kwargs):
        return self.__wrapped__(*args, **kwargs)

    def __repr__(self):
        return f"<exekutor job {self.definition.name}>"


def job(func=None, *, name=None, queue=None, priority=None, execution_timeout=None, queue_timeout=None,
        retry=None, discard_on=(), unique=None, unique_until=None, concurrency=None, concurrency_key=None,
        rate_limit=None, rate_key=None):
    """Register a function as a job: `@exekutor.job` or `@exekutor.job(queue=..., priority=..., ...)`."""
    options = dict(queue=queue, priority=priority, execution_timeout=execution_timeout, queue_timeout=queue_timeout,
                   unique=unique, unique_until=unique_until, concurrency=concurrency,
                   concurrency_key=concurrency_key, rate_limit=rate_limit, rate_key=rate_key)

    def decorate(f):
        if not callable(f):
            raise TypeError(f"@exekutor.job needs a function, got {f!r}")
        return JobFunction(f, name=name, retry=retry, discard_on=discard_on, **options)

    return decorate(func) if func is not None else decorate


class _ClassEnqueue:
    """Makes `MyJob.perform_later(...)` work on the class itself."""

    def __init__(self, method):
        self.method = method

    def __get__(self, instance, owner):
        return functools.partial(getattr(Enqueueable, self.method), owner._exekutor_api)


class _JobClassAPI(Enqueueable):
    def __init__(self, definition):
        self.definition = definition

    def _definition(self):
        return self.definition


class Job:
    """Class-style jobs: subclass, set options as class attributes, implement `perform`.

    A new instance runs each job, so instance attributes are per-execution state. Set `abstract = True` on
    a base class that should not be registered.
    """

    name = None
    queue = None
    priority = None
    execution_timeout = None
    queue_timeout = None
    unique = None
    unique_until = None
    concurrency = None
    concurrency_key = None
    rate_limit = None
    rate_key = None
    retry = None
    discard_on = ()
    abstract = True

    set = _ClassEnqueue("set")
    job = _ClassEnqueue("job")
    perform_later = _ClassEnqueue("perform_later")
    perform_now = _ClassEnqueue("perform_now")

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("abstract", False):
            return
        options = {key: getattr(cls, key) for key in DEFINITION_OPTIONS}
        definition = JobDefinition(cls.__dict__.get("name") or default_name(cls), _class_runner(cls), options,
                                   cls.retry, cls.discard_on, target_id=id(cls))
        cls._exekutor_api = _JobClassAPI(definition)
        registry.add(definition)

    def perform(self, *args, **kwargs):
        raise NotImplementedError(f"{type(self).__name__} must implement perform()")


def _class_runner(cls):
    def run(*args, **kwargs):
        return cls().perform(*args, **kwargs)

    run.__name__ = run.__qualname__ = cls.__qualname__
    return run

