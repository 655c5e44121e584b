"""The heartbeat: keeps this worker's row fresh on its own schedule and rescues orphaned jobs.

Every heartbeat_interval it updates last_heartbeat_at (re-registering if another worker presumed us dead
and deleted our row), then deletes the rows of workers whose heartbeat is older than worker_timeout: the
trigger on that delete puts their executing jobs back to pending, so a `kill -9`ed worker's jobs run again
without anyone running a cleanup.
"""
import logging
import random
import time

import gevent

from exekutor.db.queries import HEARTBEAT, RESCUE_ORPHANS
from exekutor.worker.component import Component

logger = logging.getLogger("exekutor")


class Heartbeat(Component):
    name = "heartbeat"

    def __init__(self, worker, interval, worker_timeout):
        super().__init__(worker)
        self.interval = interval
        self.worker_timeout = worker_timeout
        self.last_beat = time.time()  # registration counts as the first beat
        self.rescued_workers = 0
        self.rescued_jobs = 0

    def run(self):
        while not self.worker.stopping:
            self.beat()
            self.rescue()
            self.succeeded()
            # Jitter keeps workers started together from beating together.
            gevent.sleep(self.interval * (0.9 + 0.2 * random.random()))

    def beat(self):
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(HEARTBEAT, (self.worker.id,))
            alive = cursor.fetchone() is not None
        if not alive:
            logger.warning("exekutor worker %s: its row was deleted (presumed dead); registering again",
                           self.worker.id)
            self.worker.register()
        self.last_beat = time.time()

    def rescue(self):
        with self.worker.db() as conn, conn.cursor() as cursor:
            cursor.execute(RESCUE_ORPHANS, {"worker_timeout": self.worker_timeout, "worker_id": self.worker.id})
            dead, ownerless, _ = cursor.fetchone()
        if dead or ownerless:
            self.rescued_workers += dead
            self.rescued_jobs += ownerless
            logger.warning("exekutor worker %s: removed %d dead worker(s) (no heartbeat for %gs) and released "
                           "%d ownerless job(s)", self.worker.id, dead, self.worker_timeout, ownerless)
