"""Integrations with other libraries, each behind an optional extra: `exekutor.contrib.sqlalchemy` (extra
`sqlalchemy`) and `exekutor.contrib.flask` (extra `flask`); and for web processes under gevent,
`exekutor.contrib.gevent.patch()` and the gunicorn config module `exekutor.contrib.gunicorn`. Nothing here is
imported by exekutor itself."""
