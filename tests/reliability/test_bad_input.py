"""Scenario 6, bad input: payloads that are not valid for their job, unknown and dangerous job names,
arguments that do not deserialize, a 10 MB payload, hostile queue names and hooks that raise.

Each ends in a clear recorded outcome (a final status and an exekutor_job_errors row naming the problem) or a
clear error at enqueue time with nothing inserted, and the worker goes on taking jobs.
"""
import json
import os
import tempfile
import time

import psycopg2
import psycopg2.errors
import pytest

import exekutor
from exekutor.enqueue import enqueue_many
from tests.reliability import jobs
from tests.reliability.support import log, query, reconcile, scalar, wait_drained

pytestmark = pytest.mark.slow

ENV = {"EXEKUTOR_POLLING_INTERVAL": "120"}  # jobs start through LISTEN; a poll would hide a lost notification
SERIALIZATION = "exekutor.errors.SerializationError"
UNKNOWN = "exekutor.errors.UnknownJobError"
MARKER = os.path.join(tempfile.gettempdir(), f"exekutor-reliability-pwned-{os.getpid()}")

class Raw(str):
    """A payload given as JSON text (too deeply nested for Python's json module to build here)."""


# (case, payload as JSON text, options as JSON text or None, expected status, expected error type)
ROWS = [
    ("no args", {"job": "rel.strict"}, None, "f", SERIALIZATION),
    ("args not a list", {"job": "rel.strict", "args": "oops"}, None, "f", SERIALIZATION),
    ("kwargs not a dict", {"job": "rel.strict", "args": ["kw", 1], "kwargs": [1]}, None, "f", SERIALIZATION),
    ("missing argument", {"job": "rel.strict", "args": ["missing"]}, None, "f", "TypeError"),
    ("wrong types", {"job": "rel.strict", "args": ["types", "seven", ["a"]]}, None, "f", "TypeError"),
    ("unexpected keyword", {"job": "rel.strict", "args": ["kwarg", 1], "kwargs": {"colour": "red"}}, None, "f",
     "TypeError"),
    ("payload is a string", "just a string", None, "f", UNKNOWN),
    ("payload is null", None, None, "f", UNKNOWN),
    ("payload is a list", [1, 2, 3], None, "f", UNKNOWN),
    ("job name not a string", {"job": 42, "args": []}, None, "f", UNKNOWN),
    ("unknown job", {"job": "rel.nope", "args": ["x"]}, None, "f", UNKNOWN),
    ("os:system", {"job": "os:system", "args": [f"touch {MARKER}"]}, None, "f", UNKNOWN),
    ("builtins:eval", {"job": "builtins:eval", "args": [f"open({MARKER!r}, 'w')"]}, None, "f", UNKNOWN),
    ("subprocess:call", {"job": "subprocess:call", "args": [["touch", MARKER]]}, None, "f", UNKNOWN),
    ("bad datetime", {"job": "rel.typed", "args": ["date", {"__exekutor__": "datetime", "v": "not a date"}]},
     None, "f", SERIALIZATION),
    ("unknown tag", {"job": "rel.typed", "args": ["tag", {"__exekutor__": "nope", "v": 1}]}, None, "f",
     SERIALIZATION),
    ("registered type, bad data", {"job": "rel.typed", "args": ["money", {"__exekutor__": "rel.Money",
                                                                         "v": ["ten", "EUR"]}]}, None, "f",
     SERIALIZATION),
    ("enum of a module not imported", {"job": "rel.typed", "args": ["enum", {"__exekutor__": "enum",
                                                                            "v": ["smtplib:Nope", "X"]}]},
     None, "f", SERIALIZATION),
    ("deeply nested arguments", Raw('{"job": "rel.typed", "args": ["nested", ' + "[" * 5000 + "]" * 5000 + "]}"),
     None, "f", UNKNOWN),
    ("options not an object", {"job": "rel.strict", "args": ["opt-str", 1]}, "soon", "f", SERIALIZATION),
    ("options a list", {"job": "rel.strict", "args": ["opt-list", 1]}, [1], "f", SERIALIZATION),
    ("execution_timeout not a number", {"job": "rel.strict", "args": ["opt-exec", 1]},
     {"execution_timeout": "soon"}, "f", SERIALIZATION),
    ("queue_timeout not a number", {"job": "rel.strict", "args": ["opt-queue", 1]}, {"queue_timeout": "x"},
     "f", SERIALIZATION),
    ("control: valid registered type", {"job": "rel.typed", "args": ["good-money", {"__exekutor__": "rel.Money",
                                                                                   "v": [1000, "EUR"]}]},
     None, "c", None),
]

HOSTILE_QUEUES = ["semi;colon", "co:lon", "quo'te", 'dou"ble', "'); DROP TABLE exekutor_jobs; --",
                  "ünïcødé 队列 🚀", "back\\slash", "$1 %s {q} \\n", "q" * 63, "exekutor::job_enqueued"]


def _outcomes(rel, ids):
    rows = query(rel.db, "SELECT j.id::text, j.status, (SELECT string_agg(e.error->>'type', ',') FROM "
                         "exekutor_job_errors e WHERE e.job_id = j.id), (SELECT min(e.error->>'message') FROM "
                         "exekutor_job_errors e WHERE e.job_id = j.id) FROM exekutor_jobs j "
                         "WHERE j.id = ANY(%s::uuid[])", (ids,))
    return {row[0]: row[1:] for row in rows}


@pytest.mark.timeout(180)
def test_bad_input_ends_in_recorded_outcomes_and_the_worker_goes_on(rel):
    worker = rel.start_worker("--queue", "default", env=ENV, apps=("tests.reliability.jobs",
                                                                  "tests.reliability.hooks_app"))
    # --- hand-inserted rows --------------------------------------------------------------------------------
    ids = {}
    for case, payload, options, _, _ in ROWS:
        text = payload if isinstance(payload, Raw) else json.dumps(payload)
        ids[case] = query(rel.db, "INSERT INTO exekutor_jobs (payload, options) VALUES (%s::jsonb, %s::jsonb) "
                                  "RETURNING id::text", (text, None if options is None else json.dumps(options)))[0][0]
    # invalid JSON cannot even be stored: a clear error, nothing inserted
    before = scalar(rel.db, "SELECT count(*) FROM exekutor_jobs")
    with pytest.raises(psycopg2.errors.InvalidTextRepresentation) as invalid:
        query(rel.db, "INSERT INTO exekutor_jobs (payload) VALUES (%s::jsonb)", ('{"job": "rel.strict", "args": [',))
    assert scalar(rel.db, "SELECT count(*) FROM exekutor_jobs") == before
    log(f"invalid JSON in a hand-inserted row: {str(invalid.value).splitlines()[0]}")

    # --- enqueue-time errors: nothing inserted -------------------------------------------------------------
    conn = psycopg2.connect(rel.url)
    enqueue_errors = {}
    for case, make in [("priority 0", lambda: jobs.strict.set(priority=0).job("p", 1)),
                       ("empty queue", lambda: jobs.strict.set(queue="").job("q", 1)),
                       ("64-character queue", lambda: jobs.strict.set(queue="q" * 64).job("q", 1)),
                       ("unserializable argument", lambda: jobs.strict.job("u", object())),
                       ("unknown option", lambda: jobs.strict.set(colour="red").job("o", 1))]:
        with pytest.raises((ValueError, TypeError, exekutor.SerializationError)) as error:
            enqueue_many([make()], connection=conn)
        enqueue_errors[case] = f"{type(error.value).__name__}: {error.value}"
    conn.rollback()
    assert scalar(rel.db, "SELECT count(*) FROM exekutor_jobs") == before

    # --- a 10 MB payload and hooks that raise, through the API ---------------------------------------------
    hook_tags = ["raise-before-1", "raise-around-enter-1", "raise-around-exit-1", "raise-after-1", "plain-1"]
    requests = [jobs.sized.job("big", "x" * 10_000_000)] + [jobs.work.job(tag) for tag in hook_tags]
    enqueue_many(requests, connection=conn)
    conn.commit()
    ids["10 MB payload"] = requests[0].id

    wait_drained(rel.db, 60)
    outcomes = _outcomes(rel, list(ids.values()))
    problems = []
    log(f"{'case':34} {'status':6} error")
    for case, _, _, status, error_type in ROWS + [("10 MB payload", None, None, "c", None)]:
        got_status, got_types, message = outcomes[ids[case]]
        log(f"{case:34} {got_status:6} {got_types or '-'}: {(message or '').splitlines()[0][:110] if message else ''}")
        if got_status != status or (error_type and error_type not in (got_types or "")):
            problems.append(f"{case}: expected {status} {error_type or ''}, got {got_status} {got_types}")
        if status == "f" and not message:
            problems.append(f"{case}: failed without an error record")
    for case, text in enqueue_errors.items():
        log(f"enqueue-time {case:22} {text[:120]}")
    assert not problems, "\n".join(problems)
    assert not os.path.exists(MARKER), "a payload's job name was imported and called"
    size = scalar(rel.db, "SELECT info->>'length' FROM rel_executions WHERE tag = 'big'")
    assert size == "10000000", size

    # Every hook that raised was reported through on_fatal_error; each job ran exactly once and completed.
    fatal = query(rel.db, "SELECT message FROM rel_fatal_errors WHERE type = 'HookFailure'")
    for tag in hook_tags[:4]:
        assert any(tag in row[0] for row in fatal), f"the failing hook of {tag} was not reported: {fatal}"
    assert any("on_job_failure" in row[0] for row in fatal), fatal
    runs = dict(query(rel.db, "SELECT tag, count(*) FROM rel_executions WHERE tag = ANY(%s) GROUP BY tag",
                      (hook_tags,)))
    assert runs == {tag: 1 for tag in hook_tags}, runs
    log(f"hooks that raised: {len(fatal)} failure(s) reported through on_fatal_error; each job ran once")

    # --- hostile queue names: notifications still reach a worker listening on exactly those queues ---------
    queue_args = [arg for name in HOSTILE_QUEUES for arg in ("--queue", name)]
    picky = rel.start_worker(*queue_args, env=ENV)
    hostile = [jobs.work.set(queue=name).job(f"queue-{i}") for i, name in enumerate(HOSTILE_QUEUES)]
    enqueued_at = time.time()
    enqueue_many(hostile, connection=conn)
    conn.commit()
    wait_drained(rel.db, 10, "the jobs on hostile queue names to run (through LISTEN: polling is 120s)")
    took = time.time() - enqueued_at
    stored = dict(query(rel.db, "SELECT payload->'args'->>0, queue FROM exekutor_jobs WHERE payload->'args'->>0 "
                                "LIKE 'queue-%%'"))
    pids = {row[0] for row in query(rel.db, "SELECT pid FROM rel_executions WHERE tag LIKE 'queue-%%'")}
    log(f"{len(HOSTILE_QUEUES)} jobs on hostile queue names ran in {took:.2f}s, by pid(s) {sorted(pids)}")
    assert [stored[f"queue-{i}"] for i in range(len(HOSTILE_QUEUES))] == HOSTILE_QUEUES
    assert pids == {picky.pid}, "a job ran on a worker that does not take its queue"
    assert scalar(rel.db, "SELECT count(*) FROM exekutor_workers WHERE %s = ANY(queues)",
                  (HOSTILE_QUEUES[4],)) == 1

    # --- and the first worker is still fine ----------------------------------------------------------------
    requests = [jobs.work.job("still-alive")]
    enqueue_many(requests, connection=conn)
    conn.commit()
    conn.close()
    wait_drained(rel.db, 10)
    assert worker.proc.poll() is None and picky.proc.poll() is None
    result = reconcile(rel.db, "bad input: rel.work jobs", acknowledged=hook_tags + ["still-alive"]
                       + [f"queue-{i}" for i in range(len(HOSTILE_QUEUES))])
    result.check(failed=0, discarded=0)
    left = scalar(rel.db, "SELECT count(*) FROM exekutor_jobs WHERE status NOT IN ('c', 'f', 'd')")
    assert left == 0
