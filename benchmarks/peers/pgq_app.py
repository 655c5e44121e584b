"""The PgQueuer worker of the peer comparison: `pgq run benchmarks.peers.pgq_app:main` (PgQueuer's own CLI, on
uvloop when installed, as PgQueuer recommends).

One asyncpg connection (PgQueuer's documented factory shape) and two async entrypoints, as trivial as exekutor's
`benchmarks.jobs`: `noop` does nothing, `sleep` awaits asyncio.sleep(0.05) (the IO-bound workload). The
connection comes from PGDSN, which the runner sets to the peer database.
"""
import asyncio
import os
from contextlib import asynccontextmanager

import asyncpg
from pgqueuer import PgQueuer

SLEEP_SECONDS = 0.05


@asynccontextmanager
async def main():
    connection = await asyncpg.connect(os.environ["PGDSN"])
    try:
        pgq = PgQueuer.from_asyncpg_connection(connection)

        @pgq.entrypoint("noop")
        async def noop(job):
            """Does nothing: what is measured is the queue's own cost."""

        @pgq.entrypoint("sleep")
        async def sleep(job):
            """Waits cooperatively, as exekutor's bench.sleep does with gevent."""
            await asyncio.sleep(SLEEP_SECONDS)

        yield pgq
    finally:
        await connection.close()
