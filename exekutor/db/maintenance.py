"""Keeping the queue table healthy: what a worker checks at start.

A queue table churns (every job is inserted, updated at least twice, then deleted): without autovacuum its dead
rows and dead index entries pile up and every statement that walks an index slows down with them (migration 0004
explains the table settings). A worker cannot fix the server's settings, but it can say so, once, at start.
"""

# Whether autovacuum runs for exekutor_jobs: the server's switch, and the table's own (a DBA may have turned it off).
_AUTOVACUUM = """
SELECT current_setting('autovacuum') = 'on',
       coalesce((SELECT option_value::boolean FROM pg_options_to_table(c.reloptions)
                 WHERE option_name = 'autovacuum_enabled'), true)
FROM pg_class c WHERE c.oid = to_regclass('exekutor_jobs')
"""


def autovacuum_problem(conn):
    """A sentence saying why autovacuum does not run on exekutor_jobs, or None when it does."""
    with conn.cursor() as cursor:
        cursor.execute(_AUTOVACUUM)
        row = cursor.fetchone()
    if row is None:
        return None  # no table yet: the schema check says so
    server, table = row
    if not server:
        return ("autovacuum is off on this PostgreSQL server (autovacuum = off): dead rows of exekutor_jobs pile up "
                "and slow the worker down over time; turn it on, or VACUUM exekutor_jobs regularly (see "
                "docs/deployment.md, 'Keeping the table healthy')")
    if not table:
        return ("autovacuum is off for the table exekutor_jobs (autovacuum_enabled = false): dead rows pile up and "
                "slow the worker down over time; ALTER TABLE exekutor_jobs RESET (autovacuum_enabled), or VACUUM it "
                "regularly (see docs/deployment.md, 'Keeping the table healthy')")
    return None
