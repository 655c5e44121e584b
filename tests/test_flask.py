"""exekutor.contrib.flask end to end: Flask's test client enqueues in the request's transaction, real worker
processes (`exekutor start --app ...:create_app` and `flask exekutor start`) run the jobs in the app context."""
import os
import signal
import subprocess
import sys
import tempfile

import psycopg2.extensions
import pytest
from sqlalchemy.engine import URL

import exekutor
from exekutor import config
from tests.conftest import ROOT, discard_process, query, scalar, wait_for
from tests.flask_test_app import create_app
from tests.flask_test_app import db as sqla
from tests.test_asynchronous import error_of, wait_finished

APP = "tests.flask_test_app:create_app"


@pytest.fixture
def app(db):
    app = create_app()
    with app.app_context():
        sqla.create_all()
    yield app
    with app.app_context():
        sqla.session.remove()
        sqla.drop_all()
        sqla.engine.dispose()


def jobs(db):
    return query(db, "SELECT id::text, payload, queue, priority FROM exekutor_jobs ORDER BY enqueued_at")


def idle_in_transaction(db):
    return scalar(db, "SELECT count(*) FROM pg_stat_activity WHERE pid <> pg_backend_pid() AND "
                        "datname = current_database() AND state LIKE 'idle in transaction%%'")


def test_a_request_enqueues_in_its_transaction_and_a_worker_runs_the_job_in_the_app_context(
        app, db, start_worker):
    response = app.test_client().post("/signup", data={"email": "ann@example.com"})
    assert response.status_code == 201
    member_id = response.get_json()["id"]
    [(job_id, payload, queue, priority)] = jobs(db)
    assert payload == {"job": "tests.flask_test_app:Member.welcome",
                       "args": [{"__exekutor__": "tests.flask",
                                 "v": {"model": "tests.flask_test_app:Member", "pk": [member_id]}}, "Welcome"],
                       "kwargs": {}}
    assert (queue, priority) == ("mail", 100)  # priority from app.config["EXEKUTOR_DEFAULT_QUEUE_PRIORITY"]

    start_worker("--app", APP)
    assert wait_finished(db, job_id) == "c", error_of(db, job_id)
    assert query(db, "SELECT email, welcomed FROM test_flask_members") == [
        ("ann@example.com", "Welcome from the test site")]


@pytest.mark.timeout(60)
def test_a_worker_given_the_module_instead_of_the_factory_points_at_the_factory(start_worker):
    hint = "Flask is imported but no Flask app was set up for exekutor"
    module_only, with_factory = start_worker(apps=("tests.flask_test_app",)), start_worker(apps=(APP,))
    for worker in (module_only, with_factory):  # the hint comes right after this line, if at all
        wait_for(lambda w=worker: " job(s) registered: " in w.output(), 10, message="the registered jobs' line")
    warning, = [line for line in module_only.output().splitlines() if hint in line]
    assert " WARNING " in warning and "--app myapp:create_app" in warning
    assert hint not in with_factory.output()


def test_an_aborted_request_enqueues_nothing(app, db):
    response = app.test_client().post("/signup", data={"email": "bob@example.com", "fail": "1"})
    assert response.status_code == 500
    assert scalar(db, "SELECT count(*) FROM test_flask_members") == 0
    assert jobs(db) == []
    assert app.test_client().post("/signup", data={"email": "bob@example.com"}).status_code == 201
    assert len(jobs(db)) == 1


def test_each_job_gets_an_app_context_and_its_session_is_removed_after_it(app, db, start_worker):
    client = app.test_client()
    client.post("/signup", data={"email": "cat@example.com"})
    for _ in range(3):
        assert client.post("/visit").status_code == 204
    start_worker("--app", APP, "--threads", "1")
    for job_id, *_ in jobs(db):
        assert wait_finished(db, job_id) == "c", error_of(db, job_id)
    assert query(db, "SELECT members, site FROM test_flask_visits") == [(1, "the test site")] * 3
    wait_for(lambda: idle_in_transaction(db) == 0, 10, message="the worker's job sessions to be removed")


def test_flask_exekutor_start_runs_a_worker_for_the_app(app, db, database_url):
    log = tempfile.NamedTemporaryFile(prefix="exekutor-flask-worker-", suffix=".log", delete=False)
    environ = dict(os.environ, EXEKUTOR_DATABASE_URL=database_url, PYTHONUNBUFFERED="1")
    environ.pop("FLASK_APP", None)
    proc = subprocess.Popen([sys.executable, "-m", "flask", "--app", APP, "exekutor", "start", "--threads", "2"],
                            cwd=ROOT, env=environ, stdout=log, stderr=subprocess.STDOUT)
    try:
        def registered():
            if proc.poll() is not None:
                raise AssertionError(f"flask exekutor start exited with {proc.returncode}:\n{open(log.name).read()}")
            return scalar(db, "SELECT count(*) FROM exekutor_workers WHERE pid = %s AND status = 'r'", (proc.pid,))

        wait_for(registered, 30, message="the worker started by flask exekutor start")  # exec: the same pid
        assert app.test_client().post("/signup", data={"email": "dan@example.com"}).status_code == 201
        [(job_id, *_)] = jobs(db)
        assert wait_finished(db, job_id) == "c", error_of(db, job_id)
        assert scalar(db, "SELECT welcomed FROM test_flask_members") == "Welcome from the test site"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        discard_process(proc, log)


def test_flask_exekutor_runs_the_other_commands_in_process(app):
    runner = app.test_cli_runner()
    listing = runner.invoke(args=["exekutor", "--help"])
    assert listing.exit_code == 0
    assert "start" in listing.output and "migrate" in listing.output
    result = runner.invoke(args=["exekutor", "migrate", "--sql"])
    assert result.exit_code == 0, result.output
    assert "CREATE TABLE exekutor_jobs" in result.output
    usage = runner.invoke(args=["exekutor", "migrate", "--no-such-flag"])
    assert usage.exit_code == 2
    assert "--no-such-flag" in usage.output and "flask exekutor migrate" in usage.output


def test_exekutor_keys_of_app_config_set_the_options(database_url):
    create_app(EXEKUTOR_POLLING_INTERVAL="2m", EXEKUTOR_QUEUES=["mail", "reports"])
    assert config.get("polling_interval") == 120
    assert config.get("queues") == ["mail", "reports"]
    assert config.source_of("polling_interval") == "code"
    with pytest.raises(exekutor.ConfigError, match=r"unknown option 'poling_interval' in Flask app.config "
                                                   r"\(did you mean 'polling_interval'\?\)"):
        create_app(EXEKUTOR_POLING_INTERVAL=5)
    with pytest.raises(exekutor.ConfigError, match="invalid value for default_queue_priority in Flask app.config"):
        create_app(EXEKUTOR_DEFAULT_QUEUE_PRIORITY=0)


def sqlalchemy_url(dsn):
    """A SQLAlchemy URL for a libpq connection string (the example app reads one from DATABASE_URL)."""
    parts = psycopg2.extensions.parse_dsn(dsn)
    host, port = parts.get("host"), parts.get("port")
    if host and host.startswith("/"):  # a Unix socket directory (the embedded server) goes in the query string
        query, host, port = {"host": host, "port": port or "5432"}, None, None
    else:
        query = {}
    return URL.create("postgresql+psycopg2", username=parts.get("user"), password=parts.get("password"),
                      host=host, port=port, database=parts.get("dbname"),
                      query=query).render_as_string(hide_password=False)


def test_the_example_app_signs_up_and_a_worker_welcomes(db, database_url, start_worker, monkeypatch):
    url = sqlalchemy_url(database_url)
    monkeypatch.setenv("DATABASE_URL", url)
    from examples.flask_app.app import create_app as create_example
    from examples.flask_app.app import db as example_db

    app = create_example()
    with app.app_context():
        example_db.create_all()
    try:
        client = app.test_client()
        assert client.post("/signup", data={"name": "Ann", "email": "ann@example.com"}).status_code == 302
        again = client.post("/signup", data={"name": "Ann", "email": "ANN@example.com"})
        assert again.status_code == 409 and "ann@example.com has already signed up" in again.get_data(as_text=True)
        [(job_id, payload, queue, priority)] = jobs(db)
        assert (payload["job"], queue, priority) == ("examples.flask_app.app:User.send_welcome", "mail", 100)
        start_worker("--app", "examples.flask_app.app:create_app", "--queue", "mail", env={"DATABASE_URL": url})
        assert wait_finished(db, job_id) == "c", error_of(db, job_id)
        assert scalar(db, "SELECT welcomed_at IS NOT NULL FROM users WHERE email = 'ann@example.com'") is True
        assert "welcomed at" in client.get("/").get_data(as_text=True)
    finally:
        with app.app_context():
            example_db.session.remove()
            example_db.drop_all()
            example_db.engine.dispose()
