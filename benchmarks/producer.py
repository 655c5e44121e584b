"""The latency scenario's producer: a separate plain (not monkeypatched) process, like a web app.

`python -m benchmarks.producer COUNT INTERVAL OUT` enqueues COUNT no-op jobs one at a time with
`perform_later` (autocommit), one every INTERVAL seconds (start to start), and writes to OUT a JSON list of
[job id, wall time just before the call, wall time after it returned]. Three warm-up jobs first (not
recorded) open the pooled connection, so the first measured job pays no connect.
"""
import json
import sys
import time


def main(argv):
    count, interval, out = int(argv[0]), float(argv[1]), argv[2]
    from benchmarks import jobs

    for _ in range(3):
        jobs.noop.perform_later("warm-up")
    records = []
    next_at = time.monotonic()
    for i in range(count):
        delay = next_at - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        before = time.time()
        request = jobs.noop.perform_later(i)
        after = time.time()
        records.append([request.id, before, after])
        next_at += interval
    with open(out, "w", encoding="utf-8") as handle:
        json.dump(records, handle)


if __name__ == "__main__":
    main(sys.argv[1:])
