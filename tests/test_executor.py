"""The executor's greenlet pool, in this process: it grows to max_threads and shrinks back to min_threads."""
import datetime as dt
import time

import gevent
import pytest

from exekutor.worker.executor import Executor
from tests import jobs_app


class _Worker:
    """What the executor asks of its worker: to be told when a job starts, and which database is its own."""

    database_server = None
    ownership_uncertain = False

    def __init__(self):
        self.started = []

    def job_started(self, info):
        self.started.append(info["id"])


def _info(job_id, seconds):
    moment = dt.datetime.now(dt.timezone.utc)
    return {"id": job_id, "queue": "default", "priority": 1, "options": {}, "attempts": 1, "releases": 0,
            "enqueued_at": moment, "scheduled_at": moment, "waited": 0.0,
            "payload": {"job": jobs_app.sleep.definition.name, "args": [seconds], "kwargs": {}}}


@pytest.mark.timeout(30)
def test_pool_grows_to_the_maximum_and_idle_greenlets_above_the_minimum_are_reclaimed():
    outcomes = []
    executor = Executor(_Worker(), min_threads=2, max_threads=10, idletime=0.3,
                        on_outcome=lambda outcome, info: outcomes.append(outcome), on_free=lambda: None)
    executor.start()
    gevent.sleep(0)
    assert executor.size() == 2
    for i in range(10):
        executor.submit(_info(f"job-{i}", 0.2))
    assert executor.free() == 0
    gevent.sleep(0.05)
    assert executor.size() == 10 and executor.busy() == 10
    deadline = time.monotonic() + 10
    while len(outcomes) < 10:
        assert time.monotonic() < deadline
        gevent.sleep(0.02)
    assert {o.status for o in outcomes} == {"c"}
    assert executor.free() == 10
    # All eight greenlets above the minimum time out together; exactly the minimum stays.
    deadline = time.monotonic() + 10
    while executor.size() > 2:
        assert time.monotonic() < deadline, executor.size()
        gevent.sleep(0.05)
    gevent.sleep(0.5)
    assert executor.size() == 2
    executor.stop()
