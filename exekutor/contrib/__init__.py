"""Integrations with other libraries, each behind an optional extra: `exekutor.contrib.sqlalchemy` (extra
`sqlalchemy`) and `exekutor.contrib.flask` (extra `flask`). Nothing here is imported by exekutor itself."""
