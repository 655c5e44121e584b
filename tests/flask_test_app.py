"""A Flask + Flask-SQLAlchemy app for tests/test_flask.py; workers load it with
`--app tests.flask_test_app:create_app` (or through `flask --app ... exekutor start`).

The tests create and drop its tables (`db.metadata`).
"""
import os

import psycopg2
from flask import Flask, current_app, request
from flask_sqlalchemy import SQLAlchemy

import exekutor
from exekutor.contrib.flask import Exekutor
from exekutor.db import default_pool

db = SQLAlchemy()
queue = Exekutor(models_name="tests.flask")  # examples/flask_app, tested too, has "sqlalchemy"


class Member(db.Model):
    __tablename__ = "test_flask_members"

    id = db.Column(db.Integer, primary_key=True)
    email = db.Column(db.String, unique=True, nullable=False)
    welcomed = db.Column(db.String)

    @exekutor.asynchronous(queue="mail")
    def welcome(self, greeting):
        """current_app and db.session work only inside an application context."""
        self.welcomed = f"{greeting} from {current_app.config['SITE_NAME']}"
        db.session.commit()


class Visit(db.Model):
    __tablename__ = "test_flask_visits"

    id = db.Column(db.Integer, primary_key=True)
    members = db.Column(db.Integer)
    site = db.Column(db.String)


@exekutor.job(name="tests.flask.count_members")
def count_members():
    """Reads through db.session without committing; records what it saw on a connection of its own."""
    members = db.session.query(Member).count()
    with default_pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("INSERT INTO test_flask_visits (members, site) VALUES (%s, %s)",
                       (members, current_app.config["SITE_NAME"]))


def create_app(**settings):
    app = Flask(__name__)
    app.config.update(
        SQLALCHEMY_DATABASE_URI="postgresql+psycopg2://",
        SQLALCHEMY_ENGINE_OPTIONS={"creator": lambda: psycopg2.connect(os.environ["EXEKUTOR_DATABASE_URL"])},
        SITE_NAME="the test site",
        EXEKUTOR_DEFAULT_QUEUE_PRIORITY=100,
    )
    app.config.update(settings)
    db.init_app(app)
    queue.init_app(app)

    @app.post("/signup")
    def signup():
        member = Member(email=request.form["email"])
        db.session.add(member)
        db.session.flush()
        member.welcome.set(connection=db.session)("Welcome")  # in the request's transaction
        if request.form.get("fail"):
            raise RuntimeError("the request fails after enqueueing")
        db.session.commit()
        return {"id": member.id}, 201

    @app.post("/visit")
    def visit():
        count_members.set(connection=db.session).perform_later()
        db.session.commit()
        return "", 204

    return app
