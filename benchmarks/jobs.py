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
