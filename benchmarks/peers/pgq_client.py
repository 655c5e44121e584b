"""PgQueuer's enqueueing side of the peer comparison, run in the peers' virtualenv by benchmarks/compare.py.

    python -m benchmarks.peers.pgq_client one COUNT [--transaction]   # Queries.enqueue one job at a time
    python -m benchmarks.peers.pgq_client bulk COUNT                  # one Queries.enqueue of COUNT jobs
    python -m benchmarks.peers.pgq_client produce COUNT INTERVAL OUT  # the latency producer

Each prints one JSON object on stdout (`produce` writes its records to OUT instead: [job id, wall time just before
the call, wall time after it], as benchmarks/producer.py does for exekutor). One asyncpg connection (PgQueuer's
recommended driver) from PGDSN, on uvloop when installed; three warm-up jobs first, so that nothing measured pays
for connecting or for preparing the statement. `one` without --transaction is asyncpg's autocommit, each job its
own INSERT; with it, each job in a transaction of its own (`async with connection.transaction()`), as an
application enqueues beside its own writes. Payloads are the job's number as bytes, as exekutor's carry `[i]`.
"""
import asyncio
import json
import os
import sys
import time

import asyncpg
from pgqueuer import Queries


async def _queries():
    connection = await asyncpg.connect(os.environ["PGDSN"])
    queries = Queries.from_asyncpg_connection(connection)
    for _ in range(3):
        await queries.enqueue("noop", b"warm-up")
    return connection, queries


async def one(count, transaction):
    connection, queries = await _queries()
    try:
        started = time.perf_counter()
        if transaction:
            for i in range(count):
                async with connection.transaction():
                    await queries.enqueue("noop", str(i).encode())
        else:
            for i in range(count):
                await queries.enqueue("noop", str(i).encode())
        seconds = time.perf_counter() - started
    finally:
        await connection.close()
    return {"jobs": count, "seconds": seconds, "rate": count / seconds}


async def bulk(count):
    connection, queries = await _queries()
    try:
        started = time.perf_counter()
        payloads = [str(i).encode() for i in range(count)]
        built = time.perf_counter()
        await queries.enqueue(["noop"] * count, payloads, [0] * count)
        done = time.perf_counter()
    finally:
        await connection.close()
    return {"jobs": count, "build_s": built - started, "insert_s": done - built, "seconds": done - started,
            "rate": count / (done - started), "insert_rate": count / (done - built)}


async def produce(count, interval, out):
    connection, queries = await _queries()
    records = []
    try:
        next_at = time.monotonic()
        for i in range(count):
            delay = next_at - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            before = time.time()
            ids = await queries.enqueue("noop", str(i).encode())
            after = time.time()
            records.append([int(ids[0]), before, after])
            next_at += interval
    finally:
        await connection.close()
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(records, handle)
    return {"jobs": count}


def _run(coroutine):
    try:
        import uvloop

        return uvloop.run(coroutine)
    except ImportError:
        return asyncio.run(coroutine)


def main(argv):
    command = argv[0]
    if command == "one":
        result = _run(one(int(argv[1]), "--transaction" in argv[2:]))
    elif command == "bulk":
        result = _run(bulk(int(argv[1])))
    elif command == "produce":
        result = _run(produce(int(argv[1]), float(argv[2]), argv[3]))
    else:
        raise SystemExit(f"unknown command {command!r}: one, bulk or produce")
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
