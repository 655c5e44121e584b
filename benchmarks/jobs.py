"""The jobs the benchmark workers run (`--app benchmarks.jobs`).

Kept trivial on purpose: what is measured is exekutor's own overhead, not the jobs'.
"""
import exekutor


@exekutor.job(name="bench.noop")
def noop(*args):
    """Does nothing: the no-op throughput, big-table and latency scenarios."""


@exekutor.job(name="bench.sleep")
def sleep(seconds=0.05):
    """Waits cooperatively: the IO-concurrency scenario (the worker monkeypatches time.sleep too)."""
    import gevent

    gevent.sleep(seconds)


NOOP_PAYLOAD = '{"job": "bench.noop", "args": [], "kwargs": {}}'


def sleep_payload(seconds):
    return '{"job": "bench.sleep", "args": [%r], "kwargs": {}}' % float(seconds)


@exekutor.job(name="bench.fails")
def fails():
    """Fails at once, no retry: the soak's failing share (an error record per job)."""
    raise RuntimeError("bench.fails: failing on purpose")


# Flow control (benchmarks/flow.py, DESIGN §13). Each limit key is the job's name (no key rule): one key per job.

FLOW_CONCURRENCY = 5
FLOW_RATE = 200  # per second


@exekutor.job(name="bench.flow_limited", concurrency=FLOW_CONCURRENCY)
def flow_limited(seconds=0.01):
    """A cooperative sleep at most FLOW_CONCURRENCY at a time across all workers: the limited-job figure."""
    import gevent

    gevent.sleep(seconds)


@exekutor.job(name="bench.flow_rate", rate_limit=f"{FLOW_RATE}/s")
def flow_rate(*args):
    """Does nothing, at most FLOW_RATE starts in any second: the rate-limit figure."""


@exekutor.job(name="bench.flow_hold", concurrency=1)
def flow_hold(seconds=60.0):
    """One at a time, each running long: the held-back backlog figure (one runs, the others wait)."""
    import gevent

    gevent.sleep(seconds)
