"""A recurring job for the scheduler tests (`--app tests.recurring_app`): every second, it records the tick it was
enqueued for (pass_tick) in recurring_ticks, so a test can check that each tick ran, and the jobs table that each
tick was enqueued once."""
import os

import exekutor
from exekutor.db import default_pool

TICKS_DDL = """
CREATE TABLE IF NOT EXISTS recurring_ticks (
    schedule text NOT NULL, tick timestamptz NOT NULL, pid integer NOT NULL,
    ran_at timestamptz NOT NULL DEFAULT clock_timestamp())
"""
EVERY_SECOND = "tests.every_second"


@exekutor.periodic(every="1s", name=EVERY_SECOND, pass_tick=True)
@exekutor.job(name="tests.recurring.record_tick", queue="recurring")
def record_tick(tick):
    with default_pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("INSERT INTO recurring_ticks (schedule, tick, pid) VALUES (%s, %s, %s)",
                       (EVERY_SECOND, tick, os.getpid()))
