"""Tests of exekutor.hooks: registration styles, running order, and the error rules (no database)."""

import contextlib
import logging

import pytest

from exekutor import hooks

AROUND_POINTS = [p for p in hooks.POINTS if p.startswith("around_")]
PLAIN_POINTS = [p for p in hooks.POINTS if not p.startswith("around_")]


@pytest.fixture(autouse=True)
def clean():
    hooks.clear()
    yield
    hooks.clear()


@pytest.fixture
def reported(clean):
    """Errors passed to on_fatal_error hooks, in order."""
    errors = []

    @hooks.on_fatal_error
    def capture(error):
        errors.append(error)

    return errors


def run(point, *args, result="result"):
    """Run ``point`` with the runner of its kind; around points wrap a call returning ``result``."""
    if point.startswith("around_"):
        return hooks.run_around(point, lambda: result, *args)
    runner = {"before": hooks.run_before, "after": hooks.run_after, "on": hooks.run_on}[point.split("_")[0]]
    return runner(point, *args)


def args_for(point):
    return ("error",) if point == "on_fatal_error" else ("info", "error") if point == "on_job_failure" else ("x",)


class Boom(Exception):
    pass


class JobFailed(Exception):
    pass


# ---------------------------------------------------------------- registration


def test_there_are_twelve_points_each_with_a_decorator():
    assert len(hooks.POINTS) == 12
    assert all(callable(getattr(hooks, point)) for point in hooks.POINTS)


@pytest.mark.parametrize("point", PLAIN_POINTS)
def test_plain_function_decorator_registers_immediately(point):
    calls = []

    def handler(*args):
        calls.append(args)

    assert not hooks.has_hooks(point)
    assert getattr(hooks, point)(handler) is handler  # returned unchanged
    assert hooks.has_hooks(point)
    run(point, *args_for(point))
    assert calls == [args_for(point)]


@pytest.mark.parametrize("point", AROUND_POINTS)
def test_plain_generator_decorator_registers_around_hook(point):
    calls = []

    @getattr(hooks, point)
    def handler(jobs):
        calls.append(("in", jobs))
        yield
        calls.append(("out", jobs))

    assert hooks.has_hooks(point)
    assert run(point, "x", result=42) == 42
    assert calls == [("in", "x"), ("out", "x")]


@pytest.mark.parametrize("point", hooks.POINTS)
def test_method_in_hook_class_is_marked_and_registers_with_its_instance(point):
    decorator = getattr(hooks, point)
    calls = []

    class MyHook(hooks.Hook):
        if point.startswith("around_"):
            @decorator
            def handle(self, *args):
                calls.append((self, args))
                yield
        else:
            @decorator
            def handle(self, *args):
                calls.append((self, args))

    assert not hooks.has_hooks(point)  # defining the class registers nothing
    instance = hooks.register(MyHook())
    assert hooks.has_hooks(point)
    run(point, *args_for(point))
    assert calls == [(instance, args_for(point))]


def test_register_a_class_instantiates_it():
    calls = []

    class MyHook(hooks.Hook):
        @hooks.before_startup
        def started(self, worker):
            calls.append((type(self), worker))

    instance = hooks.register(MyHook)
    assert isinstance(instance, MyHook)
    hooks.run_before("before_startup", "w")
    assert calls == [(MyHook, "w")]


def test_one_method_can_serve_several_points():
    calls = []

    class MyHook(hooks.Hook):
        @hooks.before_startup
        @hooks.after_shutdown
        def lifecycle(self, worker):
            calls.append(worker)

    hooks.register(MyHook)
    hooks.run_before("before_startup", 1)
    hooks.run_after("after_shutdown", 2)
    assert calls == [1, 2]


def test_static_and_class_methods_can_be_marked():
    calls = []

    class MyHook(hooks.Hook):
        @hooks.before_enqueue
        @staticmethod
        def static(jobs):
            calls.append(("static", jobs))

        @hooks.after_enqueue
        @classmethod
        def klass(cls, jobs):
            calls.append((cls, jobs))

    assert not hooks.has_hooks("before_enqueue")
    hooks.register(MyHook)
    hooks.run_before("before_enqueue", [1])
    hooks.run_after("after_enqueue", [2])
    assert calls == [("static", [1]), (MyHook, [2])]


def test_bound_method_registers_immediately():
    calls = []

    class Reporter:
        def report(self, error):
            calls.append(error)

    hooks.on_fatal_error(Reporter().report)
    hooks.run_on("on_fatal_error", "e")
    assert calls == ["e"]


def test_subclass_inherits_marked_methods_and_unmarked_override_removes_one():
    calls = []

    class Base(hooks.Hook):
        @hooks.before_startup
        def a(self, worker):
            calls.append("a")

        @hooks.before_startup
        def b(self, worker):
            calls.append("b")

    class Child(Base):
        def b(self, worker):  # not decorated: no longer a hook
            calls.append("child b")

    hooks.register(Child)
    hooks.run_before("before_startup", None)
    assert calls == ["a"]


def test_register_without_marked_methods_is_a_type_error():
    class NotAHook:
        def before_startup(self, worker):
            pass

    with pytest.raises(TypeError, match="no methods marked"):
        hooks.register(NotAHook())


def test_decorating_a_non_callable_is_a_type_error():
    with pytest.raises(TypeError):
        hooks.before_enqueue(42)


def test_registering_the_same_callable_twice_runs_it_once():
    calls = []

    def handler(jobs):
        calls.append(jobs)

    hooks.before_enqueue(handler)
    hooks.before_enqueue(handler)
    hooks.run_before("before_enqueue", "j")
    assert calls == ["j"]


def test_two_instances_of_a_hook_class_both_run():
    calls = []

    class MyHook(hooks.Hook):
        @hooks.after_startup
        def started(self, worker):
            calls.append(self)

    first, second = hooks.register(MyHook), hooks.register(MyHook)
    hooks.run_after("after_startup", None)
    assert calls == [first, second]


# ---------------------------------------------------------------- unregister, clear, has_hooks


def test_unregister_a_function():
    @hooks.before_enqueue
    def handler(jobs):
        raise AssertionError("unregistered hook ran")

    assert hooks.unregister(handler) == 1
    assert not hooks.has_hooks("before_enqueue")
    hooks.run_before("before_enqueue", [])


def test_unregister_an_instance_removes_all_its_points_only():
    class MyHook(hooks.Hook):
        @hooks.before_startup
        def a(self, worker):
            pass

        @hooks.after_shutdown
        def b(self, worker):
            pass

    @hooks.before_startup
    def other(worker):
        pass

    instance = hooks.register(MyHook)
    assert hooks.unregister(instance) == 2
    assert not hooks.has_hooks("after_shutdown")
    assert hooks.has_hooks("before_startup")  # the plain function stays


def test_unregister_a_class_removes_its_instances():
    class MyHook(hooks.Hook):
        @hooks.before_startup
        def a(self, worker):
            pass

    hooks.register(MyHook)
    hooks.register(MyHook)
    assert hooks.unregister(MyHook) == 2
    assert not hooks.has_hooks("before_startup")


def test_unregister_a_bound_method():
    class Reporter:
        def report(self, error):
            pass

    reporter = Reporter()
    hooks.on_fatal_error(reporter.report)
    assert hooks.unregister(reporter.report) == 1  # a fresh but equal bound method
    assert not hooks.has_hooks("on_fatal_error")


def test_unregister_unknown_removes_nothing():
    hooks.before_enqueue(lambda jobs: None)
    assert hooks.unregister(object()) == 0
    assert hooks.has_hooks("before_enqueue")


def test_clear_removes_everything():
    for point in hooks.POINTS:
        getattr(hooks, point)(lambda *args: None)
    assert all(hooks.has_hooks(point) for point in hooks.POINTS)
    hooks.clear()
    assert not any(hooks.has_hooks(point) for point in hooks.POINTS)


@pytest.mark.parametrize("runner, point", [
    (hooks.run_before, "after_enqueue"),
    (hooks.run_after, "before_enqueue"),
    (hooks.run_on, "before_startup"),
    (hooks.run_before, "before_nothing"),
])
def test_running_a_point_of_the_wrong_kind_is_a_value_error(runner, point):
    with pytest.raises(ValueError):
        runner(point)


def test_run_around_with_a_wrong_point_is_a_value_error():
    with pytest.raises(ValueError):
        hooks.run_around("before_enqueue", lambda: None)


def test_run_around_without_hooks_calls_once():
    calls = []
    assert hooks.run_around("around_enqueue", lambda: calls.append(1) or "r", []) == "r"
    assert calls == [1]


def test_registering_during_a_run_does_not_change_that_run():
    calls = []

    def late(jobs):
        calls.append("late")

    @hooks.after_enqueue
    def early(jobs):
        calls.append("early")
        hooks.after_enqueue(late)

    hooks.run_after("after_enqueue", [])
    assert calls == ["early"]
    hooks.run_after("after_enqueue", [])
    assert calls == ["early", "early", "late"]


# ---------------------------------------------------------------- order


def _record(calls, name):
    def handler(*args):
        calls.append(name)
    handler.__qualname__ = name
    return handler


@pytest.mark.parametrize("point, runner, expected", [
    ("before_job_execution", hooks.run_before, ["c", "b", "a"]),
    ("on_job_failure", hooks.run_on, ["c", "b", "a"]),
    ("after_job_execution", hooks.run_after, ["a", "b", "c"]),
])
def test_before_and_on_run_in_reverse_after_in_registration_order(point, runner, expected):
    calls = []
    for name in "abc":
        getattr(hooks, point)(_record(calls, name))
    runner(point, "info", "error")
    assert calls == expected


def test_order_mixes_functions_and_hook_classes_by_registration_time():
    calls = []

    class MyHook(hooks.Hook):
        @hooks.before_shutdown
        def handle(self, worker):
            calls.append("class")

    hooks.before_shutdown(_record(calls, "first"))
    hooks.register(MyHook)
    hooks.before_shutdown(_record(calls, "last"))
    hooks.run_before("before_shutdown", None)
    assert calls == ["last", "class", "first"]


def test_around_hooks_nest_with_the_last_registered_outermost():
    calls = []

    def make(name):
        def around(info):
            calls.append(name + ">")
            yield
            calls.append("<" + name)
        return around

    for name in "abc":
        hooks.around_job_execution(make(name))
    assert hooks.run_around("around_job_execution", lambda: calls.append("call") or 7, "info") == 7
    assert calls == ["c>", "b>", "a>", "call", "<a", "<b", "<c"]


# ---------------------------------------------------------------- errors in before/after/on hooks


@pytest.mark.parametrize("point, runner, expected", [
    ("before_enqueue", hooks.run_before, ["c", "a"]),
    ("after_enqueue", hooks.run_after, ["a", "c"]),
    ("on_job_failure", hooks.run_on, ["c", "a"]),
])
def test_raising_hook_is_reported_and_the_others_still_run(reported, point, runner, expected):
    calls = []
    error = Boom("b failed")

    def failing(*args):
        raise error

    decorator = getattr(hooks, point)
    decorator(_record(calls, "a"))
    decorator(failing)
    decorator(_record(calls, "c"))
    assert runner(point, "jobs", "error") is None  # the caller sees nothing
    assert calls == expected
    assert reported == [error]


def test_raising_hook_is_logged_to_the_exekutor_logger(caplog):
    @hooks.before_startup
    def failing(worker):
        raise Boom("startup hook")

    with caplog.at_level(logging.ERROR, logger="exekutor"):
        hooks.run_before("before_startup", None)
    assert any("failing" in r.getMessage() and r.exc_info[1].args == ("startup hook",) for r in caplog.records)


def test_raising_fatal_error_hook_is_only_logged_and_does_not_recurse(caplog):
    calls = []

    @hooks.on_fatal_error
    def good(error):
        calls.append(("good", error))

    @hooks.on_fatal_error
    def bad(error):
        calls.append(("bad", error))
        raise Boom("in fatal hook")

    @hooks.after_startup
    def failing(worker):
        raise JobFailed("startup")

    with caplog.at_level(logging.ERROR, logger="exekutor"):
        hooks.run_after("after_startup", None)
    assert [(name, type(error)) for name, error in calls] == [("bad", JobFailed), ("good", JobFailed)]
    assert any("bad" in r.getMessage() for r in caplog.records)

    calls.clear()
    hooks.run_on("on_fatal_error", JobFailed("direct"))  # the worker's own call: same rule
    assert [name for name, _ in calls] == ["bad", "good"]


def test_base_exceptions_are_not_swallowed(reported):
    class Interrupt(BaseException):
        pass

    @hooks.before_enqueue
    def interrupted(jobs):
        raise Interrupt()

    with pytest.raises(Interrupt):
        hooks.run_before("before_enqueue", [])
    assert reported == []


# ---------------------------------------------------------------- around hooks: failure modes


class Counter:
    def __init__(self, result="result", error=None):
        self.calls, self.result, self.error = 0, result, error

    def __call__(self):
        self.calls += 1
        if self.error is not None:
            raise self.error
        return self.result


def test_around_raising_before_yield_still_runs_the_call_once(reported):
    error = Boom("setup")

    @hooks.around_job_execution
    def broken(info):
        raise error
        yield  # pragma: no cover

    call = Counter()
    assert hooks.run_around("around_job_execution", call, "info") == "result"
    assert call.calls == 1
    assert reported == [error]


def test_around_raising_when_called_still_runs_the_call_once(reported):
    @hooks.around_job_execution
    def wrong_signature():
        yield  # pragma: no cover

    call = Counter()
    assert hooks.run_around("around_job_execution", call, "info") == "result"
    assert call.calls == 1
    assert [type(e) for e in reported] == [TypeError]


def test_around_returning_without_yield_still_runs_the_call_once(reported):
    @hooks.around_enqueue
    def never_yields(jobs):
        if False:
            yield

    call = Counter()
    assert hooks.run_around("around_enqueue", call, []) == "result"
    assert call.calls == 1
    assert [type(e) for e in reported] == [hooks.HookError]


def test_around_that_is_neither_generator_nor_context_manager_is_reported(reported):
    calls = []

    @hooks.around_enqueue
    def plain(jobs):
        calls.append("plain")

    call = Counter()
    assert hooks.run_around("around_enqueue", call, []) == "result"
    assert calls == ["plain"] and call.calls == 1
    assert [type(e) for e in reported] == [hooks.HookError]
    assert "generator" in str(reported[0])


def test_around_raising_after_yield_keeps_the_result(reported):
    error = Boom("teardown")

    @hooks.around_job_execution
    def broken(info):
        yield
        raise error

    call = Counter(result={"ok": True})
    assert hooks.run_around("around_job_execution", call, "info") == {"ok": True}
    assert call.calls == 1
    assert reported == [error]


def test_around_yielding_twice_is_reported_closed_and_not_resumed(reported):
    steps, generators = [], []

    def greedy_generator(info):
        try:
            yield
            steps.append("after first")
            yield
            steps.append("resumed again")
        finally:
            steps.append("closed")

    @hooks.around_job_execution
    def greedy(info):
        generators.append(greedy_generator(info))  # kept alive: only an explicit close() runs its finally
        return generators[-1]

    call = Counter()
    assert hooks.run_around("around_job_execution", call, "info") == "result"
    assert call.calls == 1
    assert steps == ["after first", "closed"]
    assert [type(e) for e in reported] == [hooks.HookError]
    assert "more than once" in str(reported[0])


def test_around_sees_the_job_error_at_the_yield_and_the_caller_gets_the_original(reported):
    seen = []
    job_error = JobFailed("job")

    @hooks.around_job_execution
    def observer(info):
        try:
            yield
        except JobFailed as error:
            seen.append(error)
            raise

    call = Counter(error=job_error)
    with pytest.raises(JobFailed) as excinfo:
        hooks.run_around("around_job_execution", call, "info")
    assert excinfo.value is job_error
    assert seen == [job_error]
    assert call.calls == 1
    assert reported == []


def test_around_swallowing_the_job_error_does_not_hide_it(reported):
    job_error = JobFailed("job")

    @hooks.around_job_execution
    def swallower(info):
        try:
            yield
        except JobFailed:
            pass

    call = Counter(error=job_error)
    with pytest.raises(JobFailed) as excinfo:
        hooks.run_around("around_job_execution", call, "info")
    assert excinfo.value is job_error
    assert call.calls == 1


def test_around_raising_another_error_at_the_job_error_is_reported_not_propagated(reported):
    job_error, hook_error = JobFailed("job"), Boom("hook")

    @hooks.around_job_execution
    def replacer(info):
        try:
            yield
        except JobFailed:
            raise hook_error

    with pytest.raises(JobFailed) as excinfo:
        hooks.run_around("around_job_execution", Counter(error=job_error), "info")
    assert excinfo.value is job_error
    assert reported == [hook_error]


def test_interruption_in_around_teardown_propagates_instead_of_being_reported(reported):
    class Interrupt(BaseException):
        pass

    @hooks.around_job_execution
    def interrupted(info):
        try:
            yield
        finally:
            raise Interrupt()

    with pytest.raises(Interrupt):
        hooks.run_around("around_job_execution", Counter(error=JobFailed("job")), "info")
    assert reported == []


def test_around_yielding_again_after_the_job_error_is_reported(reported):
    job_error = JobFailed("job")

    @hooks.around_job_execution
    def retrier(info):
        try:
            yield
        except JobFailed:
            yield  # trying to run the job again

    call = Counter(error=job_error)
    with pytest.raises(JobFailed) as excinfo:
        hooks.run_around("around_job_execution", call, "info")
    assert excinfo.value is job_error
    assert call.calls == 1
    assert [type(e) for e in reported] == [hooks.HookError]


def test_hook_error_in_an_inner_around_is_not_seen_as_the_job_error_by_the_outer(reported):
    outer_saw = []
    hook_error = Boom("inner teardown")

    @hooks.around_job_execution
    def inner(info):
        yield
        raise hook_error

    @hooks.around_job_execution
    def outer(info):
        try:
            yield
            outer_saw.append("success")
        except Exception as error:  # pragma: no cover - the failure this test guards against
            outer_saw.append(error)
            raise

    assert hooks.run_around("around_job_execution", Counter(), "info") == "result"
    assert outer_saw == ["success"]
    assert reported == [hook_error]


def test_nested_around_hooks_all_see_the_job_error(reported):
    seen = []
    job_error = JobFailed("job")

    def make(name):
        def around(info):
            try:
                yield
            except JobFailed as error:
                seen.append((name, error))
                raise
        return around

    hooks.around_job_execution(make("a"))
    hooks.around_job_execution(make("b"))
    with pytest.raises(JobFailed):
        hooks.run_around("around_job_execution", Counter(error=job_error), "info")
    assert seen == [("a", job_error), ("b", job_error)]
    assert reported == []


def test_around_hook_gets_the_arguments():
    seen = []

    @hooks.around_enqueue
    def check(jobs):
        seen.append(jobs)
        yield

    jobs = [object()]
    hooks.run_around("around_enqueue", lambda: None, jobs)
    assert seen[0] is jobs


# ---------------------------------------------------------------- around hooks as context managers


def test_contextmanager_around_hook_nests_with_generator_hooks():
    calls = []

    @hooks.around_enqueue
    @contextlib.contextmanager
    def managed(jobs):
        calls.append("cm>")
        yield
        calls.append("<cm")

    @hooks.around_enqueue
    def generator(jobs):
        calls.append("gen>")
        yield
        calls.append("<gen")

    assert hooks.run_around("around_enqueue", lambda: calls.append("call") or 1, []) == 1
    assert calls == ["gen>", "cm>", "call", "<cm", "<gen"]


class Managed:
    """A class-based context manager recording what __exit__ receives."""

    def __init__(self, log, enter_error=None, exit_error=None, suppress=False):
        self.log, self.enter_error, self.exit_error, self.suppress = log, enter_error, exit_error, suppress

    def __enter__(self):
        if self.enter_error:
            raise self.enter_error
        self.log.append("enter")

    def __exit__(self, kind, error, traceback):
        self.log.append(("exit", kind, error))
        if self.exit_error:
            raise self.exit_error
        return self.suppress


def test_context_manager_exit_receives_the_job_error_and_cannot_suppress_it(reported):
    log = []
    job_error = JobFailed("job")
    hooks.around_job_execution(lambda info: Managed(log, suppress=True))

    with pytest.raises(JobFailed) as excinfo:
        hooks.run_around("around_job_execution", Counter(error=job_error), "info")
    assert excinfo.value is job_error
    assert log == ["enter", ("exit", JobFailed, job_error)]
    assert reported == []


def test_context_manager_exit_on_success(reported):
    log = []
    hooks.around_job_execution(lambda info: Managed(log))
    assert hooks.run_around("around_job_execution", Counter(), "info") == "result"
    assert log == ["enter", ("exit", None, None)]
    assert reported == []


def test_context_manager_enter_raising_still_runs_the_call_once(reported):
    error = Boom("enter")
    hooks.around_job_execution(lambda info: Managed([], enter_error=error))
    call = Counter()
    assert hooks.run_around("around_job_execution", call, "info") == "result"
    assert call.calls == 1
    assert reported == [error]


def test_context_manager_exit_raising_keeps_the_result(reported):
    error = Boom("exit")
    hooks.around_job_execution(lambda info: Managed([], exit_error=error))
    call = Counter()
    assert hooks.run_around("around_job_execution", call, "info") == "result"
    assert call.calls == 1
    assert reported == [error]


def test_context_manager_exit_raising_on_job_error_keeps_the_job_error(reported):
    job_error, error = JobFailed("job"), Boom("exit")
    hooks.around_job_execution(lambda info: Managed([], exit_error=error))
    with pytest.raises(JobFailed) as excinfo:
        hooks.run_around("around_job_execution", Counter(error=job_error), "info")
    assert excinfo.value is job_error
    assert reported == [error]


def test_around_method_in_hook_class_as_context_manager():
    log = []

    class MyHook(hooks.Hook):
        @hooks.around_enqueue
        @contextlib.contextmanager
        def wrap(self, jobs):
            log.append(("in", jobs))
            yield
            log.append("out")

    hooks.register(MyHook)
    assert hooks.run_around("around_enqueue", lambda: "r", [1]) == "r"
    assert log == [("in", [1]), "out"]
