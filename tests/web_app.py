"""A tiny WSGI app for tests/test_web_processes.py, served by a real gunicorn.

/work enqueues a job and then holds one of exekutor's pooled connections in `pg_sleep(0.3)`, as a request that
enqueues and waits on the database does; /callback names psycopg2's wait callback in the serving process; /ping
answers at once (readiness).
"""
import psycopg2.extensions

from exekutor.db import default_pool
from tests import jobs_app

QUERY_SECONDS = 0.3


def app(environ, start_response):
    path = environ.get("PATH_INFO", "")
    if path == "/work":
        body = _work()
    elif path == "/callback":
        callback = psycopg2.extensions.get_wait_callback()
        body = "none" if callback is None else f"{callback.__module__}.{callback.__qualname__}"
    elif path == "/ping":
        body = "pong"
    else:
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body.encode()]


def _work():
    job = jobs_app.noop.set(queue="web").perform_later()
    with default_pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", (QUERY_SECONDS,))
    return job.id
