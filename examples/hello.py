"""The quick-start example: one job, enqueued by running this module, run by a worker.

    exekutor-gevent migrate
    python -m examples.hello              # enqueue a few jobs
    exekutor-gevent start --app examples.hello
"""
import logging

import exekutor

logger = logging.getLogger("examples.hello")


@exekutor.job(queue="default", retry=exekutor.Retry(attempts=3, backoff="exponential", wait=1))
def greet(name, times=1):
    for _ in range(times):
        logger.warning("Hello, %s! (job run by an exekutor worker)", name)


if __name__ == "__main__":
    for name in ("world", "exekutor", "gevent"):
        handle = greet.perform_later(name)
        print(f"enqueued greet({name!r}) as job {handle.id}")
    greet.set(wait=5).perform_later("future", times=2)
    print("enqueued one more to run in 5 seconds; now start a worker: exekutor-gevent start --app examples.hello")
