"""A small Flask + Flask-SQLAlchemy app: the signup form inserts a user and enqueues its welcome job in one
transaction, and an exekutor worker sends the welcome. See README.md next to this file.

    flask --app examples.flask_app.app run                              # the web app
    exekutor-gevent start --app examples.flask_app.app:create_app       # the worker (or: flask ... exekutor start)
"""
import logging
import os
from datetime import datetime, timezone

from flask import Flask, current_app, redirect, render_template_string, request, url_for
from flask_sqlalchemy import SQLAlchemy
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError

import exekutor
from exekutor.contrib.flask import Exekutor

db = SQLAlchemy()
jobs = Exekutor()


class User(db.Model):
    __tablename__ = "users"

    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String(255), unique=True, nullable=False)
    name = db.Column(db.String(100), nullable=False)
    created_at = db.Column(db.DateTime(timezone=True), nullable=False, default=lambda: datetime.now(timezone.utc))
    welcomed_at = db.Column(db.DateTime(timezone=True))

    @exekutor.asynchronous(queue="mail", execution_timeout=30, retry=exekutor.Retry(attempts=5, on=(OSError,)))
    def send_welcome(self):
        """Runs in the worker, inside the app context, on this user reloaded from the database (a user deleted in
        the meantime discards the job)."""
        send_mail(self.email, subject=f"Welcome to {current_app.config['SITE_NAME']}, {self.name}!")
        self.welcomed_at = datetime.now(timezone.utc)
        db.session.commit()


def send_mail(to, subject):
    """Stands in for an SMTP or HTTP mail API call: IO that gevent runs concurrently with other jobs."""
    logging.getLogger(__name__).warning("mail to %s: %s", to, subject)


PAGE = """<!doctype html>
<title>{{ config.SITE_NAME }}</title>
<h1>Sign up</h1>
{% if error %}<p style="color: red">{{ error }}</p>{% endif %}
<form method="post" action="{{ url_for('signup') }}">
  <input name="name" placeholder="Name" required>
  <input name="email" type="email" placeholder="Email" required>
  <button>Sign up</button>
</form>
<h2>Users</h2>
<ul>
{% for user in users %}
  <li>{{ user.name }} &lt;{{ user.email }}&gt;:
      {{ "welcomed at " ~ user.welcomed_at.strftime("%H:%M:%S") if user.welcomed_at else "welcome mail queued" }}</li>
{% endfor %}
</ul>
"""


def psycopg2_url(url):
    """The URL with SQLAlchemy's psycopg2 driver, the one exekutor enqueues on (SQLAlchemy 2.1's default for
    postgresql:// is psycopg 3)."""
    return make_url(url).set(drivername="postgresql+psycopg2")


def create_app():
    app = Flask(__name__)
    app.config.update(
        SITE_NAME="exekutor example",
        # The same database holds the app's tables and exekutor's (exekutor falls back to DATABASE_URL too).
        SQLALCHEMY_DATABASE_URI=psycopg2_url(os.environ.get("DATABASE_URL", "postgresql:///exekutor_example")),
        # EXEKUTOR_* keys are exekutor options, e.g. the priority of jobs enqueued without one:
        EXEKUTOR_DEFAULT_QUEUE_PRIORITY=100,
    )
    db.init_app(app)
    jobs.init_app(app)

    def page(error=None, status=200):
        users = db.session.scalars(db.select(User).order_by(User.id)).all()
        return render_template_string(PAGE, users=users, error=error), status

    @app.get("/")
    def index():
        return page()

    @app.post("/signup")
    def signup():
        user = User(name=request.form["name"].strip(), email=request.form["email"].strip().lower())
        db.session.add(user)
        try:
            db.session.flush()  # INSERT the user: it has its id now (and a duplicate email fails here)
        except IntegrityError:
            db.session.rollback()
            return page(error=f"{user.email} has already signed up", status=409)
        # The job row is inserted on the session's connection, in the same transaction as the user:
        user.send_welcome.set(connection=db.session)()
        db.session.commit()  # the user and its welcome job, or (on any error) neither
        return redirect(url_for("index"))

    @app.cli.command("init-db")
    def init_db():
        """Create the app's tables (exekutor's come from `exekutor-gevent migrate`)."""
        db.create_all()

    return app
