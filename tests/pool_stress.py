"""A monkeypatched process that hammers exekutor's connection pools with interruptions (for test_pool_interrupts).

Run as `python -m tests.pool_stress`: it reads one scenario (JSON) per line on stdin and answers one result (JSON)
per line on stdout. A scenario: many greenlets use a small pool (`default_pool()`, a pool that is not autocommit,
or a worker's own pool through `Worker.db()` with a tiny statement_timeout), running short `pg_sleep`s and now
and then a failing statement, while a killer throws exceptions of every kind into them at random moments. The
result says what the pool looks like once the storm is over: whether every slot can be taken at once (and not
one more), how many connections it counts open and idle, and any error a user met that nobody threw.
The pool of a scenario stays open until the next one starts, so the test can look at the server meanwhile.
"""
from gevent import monkey

monkey.patch_all()

import json  # noqa: E402
import random  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from contextlib import ExitStack  # noqa: E402

import gevent  # noqa: E402
import psycopg2  # noqa: E402

import exekutor  # noqa: E402
from exekutor import config  # noqa: E402
from exekutor.db import green  # noqa: E402
from exekutor.db.pool import ConnectionPool, default_pool, reset_default_pool  # noqa: E402
from exekutor.errors import DatabaseTimeout, JobCancelled  # noqa: E402
from exekutor.worker import worker as worker_module  # noqa: E402

green.patch_psycopg()


class Injected(BaseException):
    """A BaseException of nobody's: only the pool's own cleanup stands between it and a leak."""


INJECTIONS = {
    "cancelled": lambda: JobCancelled("injected cancel"),
    "timeout": gevent.Timeout,  # an instance, as a job's execution_timeout throws it
    "exit": gevent.GreenletExit,
    "keyboard": KeyboardInterrupt,
    "value": lambda: ValueError("injected"),
    "base": Injected,
}
EXPECTED = (DatabaseTimeout, psycopg2.errors.DivisionByZero)  # the worker's statement_timeout, the failing statement


def injected(kind):
    error = INJECTIONS[kind]()
    error.injected = True
    return error


class Scenario:
    def __init__(self, spec):
        self.spec = spec
        self.rng = random.Random(spec["seed"])
        self.pool, self.use = self._pool()
        self.steps = self.uses = self.throws = 0
        self.unexpected = []
        self.done = False

    def _pool(self):
        path, size = self.spec["path"], self.spec["size"]
        if path == "default":
            config.configure(enqueue_pool_size=size)
            pool = default_pool()
            return pool, pool.connection
        if path == "transactional":
            pool = ConnectionPool(size, application_name=self.spec["name"], autocommit=False)
            return pool, pool.connection
        config.configure(statement_timeout=self.spec["statement_timeout"], set_db_connection_name=True)
        worker = exekutor.Worker(identifier=self.spec["name"])
        worker.pool = ConnectionPool(worker_module.POOL_SIZE, application_name=worker.connection_name("worker"),
                                     autocommit=True)  # as Worker.start makes it
        return worker.pool, worker.db

    def run(self):
        users = [gevent.spawn(self._user, self.rng.random()) for _ in range(self.spec["greenlets"])]
        gevent.sleep(0)
        killer = gevent.spawn(self._killer, users)
        deadline = time.monotonic() + self.spec["max_seconds"]
        while self.steps < self.spec["steps"] and time.monotonic() < deadline:
            gevent.sleep(0.01)
        killer.kill()
        self.done = True
        gevent.joinall(users, timeout=20)
        return {"steps": self.steps, "uses": self.uses, "throws": self.throws, "unexpected": self.unexpected[:5],
                "unexpected_count": len(self.unexpected), "stuck": sum(1 for user in users if not user.dead),
                "died": sum(1 for user in users if user.dead and not user.successful()), **self._state()}

    def _user(self, seed):
        rng = random.Random(seed)
        while not self.done:
            try:
                self._step(rng)
            except BaseException as error:  # noqa: BLE001 - the storm's own exceptions are the point
                if not (getattr(error, "injected", False) or isinstance(error, EXPECTED)):
                    self.unexpected.append(traceback.format_exc())

    def _step(self, rng):
        self.steps += 1
        # Sometimes under a timer of the job's own, as a job's execution_timeout would be.
        timer = gevent.Timeout(rng.uniform(0.001, 0.02)) if rng.random() < 0.2 else None
        if timer is not None:
            timer.injected = True
            timer.start()
        try:
            if rng.random() < 0.1:
                self._interrupt_soon(rng)  # in the wait for a slot, or in the connect
            with self.use() as conn, conn.cursor() as cursor:
                cursor.execute("SELECT pg_sleep(%s)", (rng.uniform(0, self.spec["max_sleep_ms"]) / 1000,))
                if rng.random() < self.spec["error_rate"]:
                    self._fail(cursor, rng)
                if not conn.autocommit:
                    conn.commit()
            self.uses += 1
        finally:
            if timer is not None:
                timer.close()

    def _fail(self, cursor, rng):
        """A statement that fails, so the pool rolls the connection back; often interrupted right there."""
        try:
            cursor.execute("SELECT 1/0")
        except psycopg2.errors.DivisionByZero:
            if rng.random() < 0.5:
                self._interrupt_soon(rng)
            raise

    def _interrupt_soon(self, rng):
        """An interruption of this greenlet at its next switch or a little later, wherever the pool is then: the
        killer's random moments seldom hit the pool's short switches (a rollback, a connect) on their own."""
        error = injected(rng.choice(self.spec["kinds"]))
        delay = 0 if rng.random() < 0.5 else rng.uniform(0, 0.002)
        gevent.spawn_later(delay, gevent.getcurrent().kill, error, block=False)
        self.throws += 1

    def _killer(self, users):
        kinds = self.spec["kinds"]
        while True:
            gevent.sleep(self.rng.uniform(0, self.spec["kill_interval_ms"]) / 1000)
            victim = self.rng.choice(users)
            victim.kill(injected(self.rng.choice(kinds)), block=False)
            self.throws += 1

    def _state(self):
        """Every slot taken at once (each connection working), one more refused; then the pool's counts."""
        permits_back = extra_permit = False
        application_name = None
        try:
            with gevent.Timeout(15), ExitStack() as stack:
                for _ in range(self.pool.size):
                    conn = stack.enter_context(self.pool.connection())
                    with conn.cursor() as cursor:
                        cursor.execute("SELECT current_setting('application_name')")
                        application_name = cursor.fetchone()[0]
                permits_back = True
                extra_permit = self.pool._slots.acquire(blocking=False)
        except gevent.Timeout:
            pass
        return {"permits_back": permits_back, "extra_permit": extra_permit, "size": self.pool.size,
                "open": self.pool.open_count(), "idle": len(self.pool._idle), "application_name": application_name}

    def close(self):
        if self.spec["path"] == "default":
            reset_default_pool()
        else:
            self.pool.close()


def main():
    scenario = None
    for line in sys.stdin:
        if scenario is not None:
            scenario.close()
        config.reset()
        scenario = Scenario(json.loads(line))
        print(json.dumps(scenario.run()), flush=True)


if __name__ == "__main__":
    main()
