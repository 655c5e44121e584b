"""A gunicorn config module: `gunicorn -k gevent -c python:exekutor.contrib.gunicorn myapp.wsgi:app`.

Its `post_fork` hook makes psycopg2 cooperative (`exekutor.contrib.gevent.patch()`) in each gevent worker, so
that the queries of one request (enqueues on exekutor's pool, the app's own) let the worker serve the others. It
does nothing in sync, gthread or other workers, where a green wait callback has no event loop to yield to.

With a config file of your own, import the hook into it (`from exekutor.contrib.gunicorn import post_fork`), or
call `patch_worker(worker)` from your own `post_fork`. Only names that are gunicorn settings are read from a config
module, so everything else here is private.
"""

_GEVENT_WORKERS = "gunicorn.workers.ggevent"


def post_fork(server, worker):
    patch_worker(worker)


def patch_worker(worker):
    """Install exekutor's gevent wait callback if `worker` is one of gunicorn's gevent workers (or a subclass);
    returns whether it did. Called in the forked worker process: the callback is per process."""
    # Matched by module name rather than isinstance, so that a sync or gthread worker never imports gevent here.
    if not any(cls.__module__ == _GEVENT_WORKERS for cls in type(worker).__mro__):
        return False
    # Not contrib.gevent.patch(): gunicorn monkeypatches right after this hook, and that would warn it had not.
    from exekutor.db.green import patch_psycopg

    patch_psycopg()
    worker.log.info("exekutor: psycopg2 made cooperative for gevent in worker %s", worker.pid)
    return True
