"""Hooks that raise, for the bad-input scenario (`--app tests.reliability.hooks_app`, with tests.reliability.jobs).

Which hook raises depends on the job's tag (its first argument): `raise-before-*`, `raise-around-enter-*`,
`raise-around-exit-*`, `raise-after-*`, and every `on_job_failure`. An `on_fatal_error` hook records every
error reported to it in rel_fatal_errors; a second one always raises (it must only be logged, not recurse).
"""
import os

from exekutor import hooks
from tests.reliability.jobs import pool


def _tag(job):
    args = (job.get("payload") or {}).get("args") or [""]
    return str(args[0])


class HookFailure(RuntimeError):
    pass


@hooks.before_job_execution
def raise_before(job):
    if _tag(job).startswith("raise-before"):
        raise HookFailure(f"before_job_execution hook failed for {_tag(job)}")


@hooks.around_job_execution
def raise_around(job):
    tag = _tag(job)
    if tag.startswith("raise-around-enter"):
        raise HookFailure(f"around_job_execution hook failed before the job for {tag}")
    yield
    if tag.startswith("raise-around-exit"):
        raise HookFailure(f"around_job_execution hook failed after the job for {tag}")


@hooks.after_job_execution
def raise_after(job):
    if _tag(job).startswith("raise-after"):
        raise HookFailure(f"after_job_execution hook failed for {_tag(job)}")


@hooks.on_job_failure
def raise_on_failure(job, error):
    raise HookFailure(f"on_job_failure hook failed for {_tag(job)} ({type(error).__name__})")


@hooks.on_fatal_error
def always_raises(error):
    raise HookFailure("on_fatal_error hook failed (must be logged, not reported again)")


@hooks.on_fatal_error
def remember(error):
    with pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("INSERT INTO rel_fatal_errors (pid, type, message) VALUES (%s, %s, %s)",
                       (os.getpid(), type(error).__name__, str(error)[:1000]))
