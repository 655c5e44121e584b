"""Asynchronous functions and methods for tests/test_asynchronous.py (`--app tests.async_app` in the worker).

What ran is counted in test_counters (the tests create it with COUNTERS_DDL; the `db` fixture drops it), so tests
can check it from the test process.
"""
import exekutor
from exekutor.db import default_pool

COUNTERS_DDL = "CREATE TABLE IF NOT EXISTS test_counters (key text PRIMARY KEY, value integer NOT NULL)"


def bump(key, by=1):
    with default_pool().connection() as conn, conn.cursor() as cursor:
        cursor.execute("INSERT INTO test_counters VALUES (%s, %s) ON CONFLICT (key) DO UPDATE "
                       "SET value = test_counters.value + excluded.value", (key, by))


@exekutor.asynchronous
def count(key, by=1, *, times=1):
    bump(key, by * times)
    return by * times


@exekutor.asynchronous(queue="async", priority=7, execution_timeout=30)
def count_urgent(key, /, by=1):
    bump(key, by)


@exekutor.serializers.register_class
class Counter:
    """A receiver with a registered serializer: stored as its key."""

    def __init__(self, key):
        self.key = key

    def __exekutor_dump__(self):
        return self.key

    @classmethod
    def __exekutor_load__(cls, key):
        return cls(key)

    def __repr__(self):
        return f"Counter({self.key!r})"

    @exekutor.asynchronous
    def increment(self, by=1):
        bump(self.key, by)
        return by

    def reset(self):
        """Not asynchronous: a payload naming it must never get here."""
        bump(self.key + ":reset")

    @exekutor.asynchronous(queue="async")
    @classmethod
    def create(cls, key, by):
        bump(key, by)
        bump(f"{key}:{cls.__name__}")

    @exekutor.asynchronous
    @staticmethod
    def ping(key):
        bump(key)


class SpecialCounter(Counter):
    pass


class Unserializable:
    @exekutor.asynchronous
    def run(self):
        bump("unserializable")
