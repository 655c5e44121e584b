"""Hooks of every kind, registered in a worker process with `--app tests.hooks_app`.

Each hook appends one line to the file named by EXEKUTOR_TEST_HOOK_LOG, so a test can check the order.
"""
import os

import exekutor
from exekutor import hooks


def log(event):
    with open(os.environ["EXEKUTOR_TEST_HOOK_LOG"], "a", encoding="utf-8") as f:
        f.write(event + "\n")


def _name(job):
    return job["payload"]["job"].rsplit(".", 1)[-1]


@exekutor.job(name="tests.hooks.ok")
def ok():
    log("job ok")


@exekutor.job(name="tests.hooks.boom")
def boom():
    log("job boom")
    raise ValueError("boom")


@exekutor.job(name="tests.hooks.hook_fails")
def hook_fails():
    log("job hook_fails")


class Lifecycle(hooks.Hook):
    @hooks.before_startup
    def before_startup(self, worker):
        log("before_startup")

    @hooks.after_startup
    def after_startup(self, worker):
        log(f"after_startup {worker.state}")

    @hooks.before_shutdown
    def before_shutdown(self, worker):
        log("before_shutdown")

    @hooks.after_shutdown
    def after_shutdown(self, worker):
        log(f"after_shutdown {worker.state}")


hooks.register(Lifecycle)


@hooks.before_job_execution
def before_first(job):
    log(f"before first-registered {_name(job)}")


@hooks.before_job_execution
def before_second(job):
    log(f"before second-registered {_name(job)}")
    if _name(job) == "hook_fails":
        raise RuntimeError("a before hook failed")


@hooks.around_job_execution
def around_inner(job):
    log(f"around inner in {_name(job)}")
    yield
    log(f"around inner out {_name(job)}")


@hooks.around_job_execution
def around_outer(job):
    log(f"around outer in {_name(job)}")
    try:
        yield
    finally:
        log(f"around outer out {_name(job)}")


@hooks.after_job_execution
def after_first(job):
    log(f"after first-registered {_name(job)}")


@hooks.after_job_execution
def after_second(job):
    log(f"after second-registered {_name(job)}")


@hooks.on_job_failure
def on_failure(job, error):
    log(f"on_job_failure {_name(job)} {type(error).__name__}")


@hooks.on_fatal_error
def on_fatal(error):
    log(f"on_fatal_error {type(error).__name__}: {error}")
