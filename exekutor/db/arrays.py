"""PostgreSQL array literals ('{a,b,NULL}') built on this side.

A batch goes to the server as one literal per column: psycopg2 would send a Python list as ARRAY[...] with one
constant per element, which costs the planner more than the statement's own work, and a JSON document costs the
server more to take apart than an array literal.
"""


def array(items):
    """An array literal of elements that are already literal-safe (numbers, UUIDs, NULL, quoted text)."""
    return "{" + ",".join(items) + "}"


def number(value):
    return "NULL" if value is None else repr(float(value))


def quoted(text):
    """An element of an array literal: in double quotes, with backslashes and quotes escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def text_or_null(text):
    return "NULL" if text is None else quoted(text)
