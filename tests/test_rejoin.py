"""A worker presumed dead registers again even when the log handler's lock is held by another thread at that moment
(the liveness thread writing its own line): the rejoin's callback in the worker's hub must not wait for it."""
import os
import subprocess
import sys

import pytest

from tests.conftest import ROOT

SCRIPT = r"""
import logging, sys, time
from gevent import monkey; monkey.patch_all()
import gevent
import psycopg2
from exekutor.db.green import patch_psycopg; patch_psycopg()
from exekutor.worker import Worker

logging.basicConfig(level=logging.INFO, stream=sys.stderr)
handler = logging.getLogger().handlers[0]
worker = Worker(min_threads=1, max_threads=1, heartbeat_interval=0.3, worker_timeout=30)
worker.start()
admin = psycopg2.connect(sys.argv[1]); admin.autocommit = True

def registered():
    with admin.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM exekutor_workers WHERE id = %s AND status = 'r'", (worker.id,))
        return cursor.fetchone()[0] == 1

assert registered()
held, release = [], []
start_thread = monkey.get_original("_thread", "start_new_thread")
native_sleep = monkey.get_original("time", "sleep")

def hold_the_log_lock():  # as the liveness thread does while it writes a line
    handler.acquire()
    held.append(True)
    while not release:
        native_sleep(0.01)
    handler.release()

start_thread(hold_the_log_lock, ())
while not held:
    gevent.sleep(0.01)
with admin.cursor() as cursor:
    cursor.execute("DELETE FROM exekutor_workers WHERE id = %s", (worker.id,))
deadline = time.time() + 10
while worker.heartbeat.presumed_dead == 0:
    assert time.time() < deadline, "the heartbeat never found its row deleted"
    gevent.sleep(0.05)
gevent.sleep(1.0)  # the rejoin's callback has run by now, while the lock is held
release.append(True)
deadline = time.time() + 15
while not registered():
    assert time.time() < deadline, "the worker never registered again"
    gevent.sleep(0.1)
worker.stop(); worker.join(10)
print("ok")
"""


@pytest.mark.timeout(60)
def test_a_worker_presumed_dead_registers_again_while_another_thread_holds_the_log_lock(database_url, db):
    result = subprocess.run([sys.executable, "-c", SCRIPT, database_url], capture_output=True, text=True,
                            timeout=50, env=dict(os.environ, EXEKUTOR_DATABASE_URL=database_url), cwd=ROOT)
    assert result.stdout.strip().endswith("ok"), result.stdout + result.stderr[-4000:]
