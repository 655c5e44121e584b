"""Flow control as a property (issue 26, "Checked by"): generated limits, jobs, failures, cancels and pauses, run by
three real worker processes (1, 4 and 10 greenlets); whatever happens, the database's own record of every admission
and end of a run (flow_app's flow_slots trigger) never shows a limit exceeded, and every job ends exactly once.

- concurrency (per key, per queue): at no moment more runs holding the limit than it allows, counting each run from
  its admission to its end as the database timed them inside the writing statements (so each interval contains
  the real one);
- rate (per key, per queue): in no window of the period more starts than the limit, on `started_at` (the clock the
  rate limit itself keeps);
- pause: no job of a paused queue is admitted from 1 s after the pause until the resume;
- every job ends once: completed, failed or discarded as its failures and cancel say, none left pending or
  executing, one admission per attempt, no run of a job overlapping another run of the same job, nothing lost.

CI runs 10 derandomized examples with the workers started once for the whole test (the tables are emptied between
examples); a long search with fresh randomness (about 5-10 s per example; docs/reliability.md):

    HYPOTHESIS_PROFILE=long python -m pytest tests/test_flow_properties.py -k property -s
"""
import os
import time

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import exekutor
from exekutor.queue_control import publish_queue_limits
from tests import flow_app
from tests.conftest import query, scalar, wait_for
from tests.test_flow_control import most_at_once, most_starts_in_window

pytestmark = pytest.mark.slow

QUEUES = ("default", "flowq")
FINAL = ("c", "f", "d")
CANCELLED = "exekutor.errors.JobCancelled"
CONNECTION_ERRORS = ("psycopg2.OperationalError", "psycopg2.InterfaceError")
PAUSE_GRACE = 1.0  # DESIGN §13: a pause is applied by every worker within a second
# The default profile runs a handful of examples (each one drains its jobs through real workers); any other profile
# (HYPOTHESIS_PROFILE=long) runs its own number.
EXAMPLES = 10 if os.environ.get("HYPOTHESIS_PROFILE", "ci") == "ci" else settings.default.max_examples


@pytest.fixture
def slots(db):
    with db.cursor() as cursor:
        cursor.execute(flow_app.RUNS_DDL)
    yield db
    with db.cursor() as cursor:
        cursor.execute(flow_app.RUNS_TEARDOWN)


def _empty(db):
    """Between examples (no job pending or executing): every table the example wrote, but not the workers."""
    with db.cursor() as cursor:
        cursor.execute("TRUNCATE exekutor_jobs, exekutor_job_errors, exekutor_queues, exekutor_limits, flow_slots, "
                       "flow_runs CASCADE")


@st.composite
def scenarios(draw):
    concurrency = draw(st.dictionaries(st.sampled_from("abc"), st.integers(1, 3), min_size=1, max_size=3))
    rates = draw(st.dictionaries(st.sampled_from("xy"), st.integers(2, 6), max_size=2))  # starts per second
    queue_limits = {"concurrency": draw(st.none() | st.integers(1, 3)),
                    "rate_limit": draw(st.none() | st.integers(3, 8).map(lambda n: f"{n}/s"))}
    job = st.fixed_dictionaries({
        "queue": st.sampled_from(QUEUES),
        "ckey": st.none() | st.sampled_from(sorted(concurrency)) if concurrency else st.none(),
        "rkey": st.none() | st.sampled_from(sorted(rates)) if rates else st.none(),
        "seconds": st.sampled_from([0.0, 0.0, 0.02, 0.1, 0.3, 0.6]),
        "failures": st.sampled_from([0, 0, 0, 1, 2, 3]),
    }, optional={"wait": st.sampled_from([0.1, 0.4])})  # scheduled a little later
    jobs = draw(st.lists(job, min_size=6, max_size=16))
    action = st.one_of(
        st.tuples(st.just("enqueue"), st.integers(1, 5)),
        st.tuples(st.just("cancel"), st.integers(0, 15)),
        st.tuples(st.sampled_from(["pause", "resume"]), st.sampled_from(QUEUES)),
        st.tuples(st.just("sleep"), st.sampled_from([0.05, 0.2, 0.5])))
    actions = draw(st.lists(action, min_size=2, max_size=10))
    return {"concurrency": concurrency, "rates": rates, "queue": queue_limits, "jobs": jobs, "actions": actions}


def _job(queue, ckey=None, rkey=None, seconds=0.1, failures=0):
    return {"queue": queue, "ckey": ckey, "rkey": rkey, "seconds": seconds, "failures": failures}


# Every feature at once, whatever the generation picks: promoted jobs cancelled, a queue paused with jobs held back
# by other limits, retries through a rate limit.
RICH = {
    "concurrency": {"a": 1, "b": 2}, "rates": {"x": 3}, "queue": {"concurrency": 2, "rate_limit": "5/s"},
    "jobs": [_job("flowq", "a"), _job("default", "a", "x", failures=1), _job("flowq", "b", "x"), _job("default", "a"),
             _job("flowq", None, "x", 0.0, 3), _job("default", "b", seconds=0.3), _job("flowq", "a", seconds=0.0),
             _job("default", "b", "x", 0.02, 2), _job("flowq"), _job("default", "a", seconds=0.3)],
    "actions": [("enqueue", 4), ("pause", "flowq"), ("cancel", 1), ("sleep", 0.2), ("enqueue", 5), ("cancel", 3),
                ("resume", "flowq"), ("sleep", 0.2), ("pause", "default"), ("cancel", 6), ("sleep", 0.5),
                ("resume", "default")],
}


def _request(spec, tag, concurrency, rates):
    options = {"queue": spec["queue"]}
    if spec["ckey"] is not None:
        options.update(concurrency=concurrency[spec["ckey"]], concurrency_key=spec["ckey"])
    if spec["rkey"] is not None:
        options.update(rate_limit=f"{rates[spec['rkey']]}/s", rate_key=spec["rkey"])
    if spec.get("wait"):
        options["wait"] = spec["wait"]
    return flow_app.prop.set(**options).job(tag, seconds=spec["seconds"], failures=spec["failures"])


class Run:
    """One example as it is played: what was enqueued, cancelled, paused and when (on the database's clock)."""

    def __init__(self, db, scenario, prefix):
        self.db, self.scenario, self.prefix = db, scenario, prefix
        self.handles = []  # (JobRequest, spec, tag)
        self.cancelled = set()
        self.paused = {}  # queue -> paused_at of the pause in force
        self.pauses = []  # (queue, paused_at, resumed no earlier than)

    def enqueue(self, count):
        specs = self.scenario["jobs"][len(self.handles):len(self.handles) + count]
        if not specs:
            return
        tags = [f"{self.prefix}-{len(self.handles) + i}" for i in range(len(specs))]
        requests = [_request(spec, tag, self.scenario["concurrency"], self.scenario["rates"])
                    for spec, tag in zip(specs, tags)]
        self.handles.extend(zip(exekutor.enqueue_many(requests), specs, tags))

    def now(self):
        return scalar(self.db, "SELECT clock_timestamp()")

    def pause(self, queue):
        exekutor.pause_queue(queue)
        if queue not in self.paused:
            self.paused[queue] = scalar(self.db, "SELECT paused_at FROM exekutor_queues WHERE name = %s", (queue,))

    def resume(self, queue):
        if queue in self.paused:
            # Before the resume's statement: no admission of the queue can be earlier than its commit.
            self.pauses.append((queue, self.paused.pop(queue), self.now()))
        exekutor.resume_queue(queue)

    def play(self):
        for kind, argument in self.scenario["actions"]:
            if kind == "enqueue":
                self.enqueue(argument)
            elif kind == "cancel" and self.handles:
                handle = self.handles[argument % len(self.handles)][0]
                handle.cancel()
                self.cancelled.add(handle.id)
            elif kind == "pause":
                self.pause(argument)
            elif kind == "resume":
                self.resume(argument)
            elif kind == "sleep":
                time.sleep(argument)
        self.enqueue(len(self.scenario["jobs"]))
        for queue in sorted(self.paused):
            self.resume(queue)


def _drained(db):
    return scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status IN ('p', 'e')") == 0


def drain_bound(scenario):
    """Seconds the jobs may take at worst once played: every attempt one after the other, at the slowest rate,
    and a margin for a loaded machine; far below the workers' poll (their sweep would hide a job a limit forgot)."""
    attempts = [min(spec["failures"] + 1, 3) for spec in scenario["jobs"]]
    serial = sum(n * (spec["seconds"] + 0.1) + spec.get("wait", 0) for n, spec in zip(attempts, scenario["jobs"]))
    return 20 + serial + sum(attempts) / 2


def wait_drained(db, timeout, workers):
    try:
        wait_for(lambda: _drained(db), timeout, "every job to end")
    except AssertionError as error:
        state = {
            "unfinished (id, status, queue, blocked_on, holds, due in, attempts, cancel requested)": query(
                db, "SELECT id::text, status, queue, blocked_on, holds, scheduled_at - now(), attempts, "
                    "cancel_requested_at IS NOT NULL FROM exekutor_jobs WHERE status IN ('p', 'e')"),
            "limits": query(db, "SELECT key, max, period, starts FROM exekutor_limits ORDER BY key"),
            "queues": query(db, "SELECT name, paused_at, concurrency, rate_limit FROM exekutor_queues"),
            "now": scalar(db, "SELECT now()")}
        logs = "\n".join(worker.output()[-2000:] for worker in workers)
        raise AssertionError(f"{error}: {state}\n{logs}") from None


def check_limits(db, scenario, pauses):
    concurrency, rates, queue_limits = scenario["concurrency"], scenario["rates"], scenario["queue"]
    for key, limit in concurrency.items():
        most = most_at_once(db, "concurrency_key", f"flow.prop:{key}")
        assert most <= limit, f"concurrency key {key}: {most} runs at once, limit {limit}"
    for key, limit in rates.items():
        most = most_starts_in_window(db, "rate_key", f"flow.prop:{key}", 1.0)
        assert most <= limit, f"rate key {key}: {most} starts in one second, limit {limit}/s"
    if queue_limits["concurrency"] is not None:
        most = most_at_once(db, "queue", "flowq")
        assert most <= queue_limits["concurrency"], f"queue flowq: {most} runs at once, limit {queue_limits}"
    if queue_limits["rate_limit"] is not None:
        most = most_starts_in_window(db, "queue", "flowq", 1.0)
        limit = int(queue_limits["rate_limit"].split("/")[0])
        assert most <= limit, f"queue flowq: {most} starts in one second, limit {queue_limits}"
    for queue, paused_at, resumed in pauses:
        early = query(db, "SELECT job_id, admitted_at - %s FROM flow_slots WHERE queue = %s AND admitted_at > %s "
                          "AND admitted_at < %s", (paused_at, queue, paused_at + _seconds(PAUSE_GRACE), resumed))
        assert not early, f"queue {queue} paused at {paused_at}: admitted after the pause {early}"


def _seconds(value):
    import datetime

    return datetime.timedelta(seconds=value)


def check_every_job_ends_once(db, run):
    jobs = {row[0]: row[1:] for row in query(
        db, "SELECT id::text, status, attempts FROM exekutor_jobs")}
    assert set(jobs) == {handle.id for handle, _, _ in run.handles}, "jobs lost or unknown"
    slots = query(db, "SELECT job_id::text, attempt, admitted_at, ended_at FROM flow_slots ORDER BY job_id, attempt")
    unended = [row for row in slots if row[3] is None]
    assert not unended, f"runs never ended: {unended}"
    by_job = {}
    for job_id, attempt, admitted, ended in slots:
        by_job.setdefault(job_id, []).append((attempt, admitted, ended))
    for handle, spec, tag in run.handles:
        status, attempts = jobs[handle.id]
        assert status in FINAL, (handle.id, status)
        runs = by_job.get(handle.id, [])
        assert [attempt for attempt, _, _ in runs] == list(range(1, attempts + 1)), \
            f"job {handle.id}: admissions {runs} for {attempts} attempts"
        for (_, _, ended), (attempt, admitted, _) in zip(runs, runs[1:]):
            assert ended <= admitted, f"job {handle.id}: run {attempt} began before the one before it ended"
        if handle.id in run.cancelled:
            if status == "d":
                types = [e["type"] for e in handle.errors()]
                assert CANCELLED in types, (handle.id, types)
            continue
        errors = handle.errors()
        expected = ("f", 3) if spec["failures"] >= 3 else ("c", spec["failures"] + 1)
        # The shared server may refuse a job's own connection ("too many clients" while other suites run): such
        # a run fails as a retry, so the job may take more attempts. Anything else is the job's own failure.
        if any(e["type"] in CONNECTION_ERRORS for e in errors):
            assert all(e["type"] in CONNECTION_ERRORS or e["message"] == "asked to fail" for e in errors), errors
            assert status in ("c", "f") and attempts <= 3, (handle.id, spec, status, attempts, errors)
            continue
        assert (status, attempts) == expected, (handle.id, spec, status, attempts, errors)
        ran = scalar(db, "SELECT count(*) FROM flow_runs WHERE tag = %s AND finished_at IS NOT NULL", (tag,))
        assert ran == attempts, (handle.id, spec, ran, attempts)


@pytest.mark.timeout(120 + 30 * EXAMPLES)  # the long profile's hundreds of examples too
def test_property_limits_hold_and_every_job_ends_once(slots, start_worker):
    # A poll far away: the sweep at each poll is a safety net that would hide a job a limit forgot to let go.
    env = {"EXEKUTOR_POLLING_INTERVAL": "600"}
    # One greenlet (a reservation of one job at a time), a few, and more than any limit (many candidates of one key
    # in one reservation).
    workers = [start_worker("--threads", threads, env=env, apps=("tests.flow_app",)) for threads in (1, 4, 10)]
    counter = iter(range(10**9))

    @settings(max_examples=EXAMPLES)
    @given(scenario=scenarios())
    @example(scenario=RICH)
    def check(scenario):
        _empty(slots)
        with slots.cursor() as cursor:
            publish_queue_limits(cursor, {"flowq": scenario["queue"]})
        run = Run(slots, scenario, f"p{next(counter)}")
        run.play()
        wait_drained(slots, drain_bound(scenario), workers)
        check_limits(slots, scenario, run.pauses)
        check_every_job_ends_once(slots, run)
        for worker in workers:
            assert worker.proc.poll() is None, worker.output()[-3000:]

    check()
