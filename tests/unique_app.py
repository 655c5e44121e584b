"""A job for the unique-key tests that must fail at a moment the test chooses (`--app tests.unique_app`)."""
import gevent

import exekutor
from tests.jobs_app import _execute, flaky, record


@exekutor.job(name="tests.gated_flaky", retry=exekutor.Retry(attempts=3, backoff="fixed", wait=0.1))
def gated_flaky(tag):
    """Waits until the test opens its gate (a test_counters row 'gate:TAG'), fails its first run with an IOError,
    and records the second."""
    while _execute("SELECT 1 FROM test_counters WHERE key = %s", (f"gate:{tag}",)) is None:
        gevent.sleep(0.05)
    flaky(f"runs:{tag}", 1)
    record(tag)
