"""How many jobs wait in each queue, and for how long: the per-queue figures of `info`, the dashboard and the
`/metrics` gauges, from one query layer.

Each figure is a bounded walk of the pending-by-queue index (migration 0007), whatever the backlog: a GROUP BY
over the pending rows took 160 ms per scrape at 1,000,000 pending jobs, paid by every scrape of every worker.

- The queues with pending jobs come from a loose scan (PENDING_QUEUES: one index descent per queue).
- A queue's oldest due job and its next scheduled one are the first entries of its due and future ranges.
- Counts are exact up to EXACT_COUNT_LIMIT per queue and figure, walking the index in its order (without the
  ORDER BY, a small limit made the planner pick a sequential scan that expects a match every few rows). Above
  it, PostgreSQL's estimate of the count (from the table's statistics, which autovacuum's ANALYZE keeps
  current) stands in, never below the limit, and the queue's `estimated` flag is set: `info` and the dashboard
  mark such counts with "~".
"""
import functools
import json
import time

from exekutor.db.queries import PENDING_QUEUES

# Entries a count walks at most (per queue and figure); a bigger count is estimated. 500 index entries take
# about 0.2 ms to count on a vacuumed table, and more where the visibility map is not set (each is then checked
# in the heap): with four queues and both figures past the limit, the figures take about 3 ms, and 5 ms with
# fresh estimates (python -m benchmarks bigtable).
EXACT_COUNT_LIMIT = 500

_DUE = "j.status = 'p' AND j.queue = q.queue AND j.scheduled_at <= now()"
_LATER = "j.status = 'p' AND j.queue = q.queue AND j.scheduled_at > now()"
_FIGURES = f"""
SELECT q.queue,
       (SELECT count(*) FROM (SELECT FROM exekutor_jobs j WHERE {_DUE} ORDER BY j.scheduled_at LIMIT %(limit)s)
        AS c)::int AS due,
       (SELECT count(*) FROM (SELECT FROM exekutor_jobs j WHERE {_LATER} ORDER BY j.scheduled_at LIMIT %(limit)s)
        AS c)::int AS scheduled,
       oldest.scheduled_at AS oldest_due_at,
       extract(epoch FROM now() - oldest.scheduled_at)::float8 AS overdue_for,
       next.scheduled_at AS next_scheduled_at,
       extract(epoch FROM next.scheduled_at - now())::float8 AS next_in
FROM pending_queues q
LEFT JOIN LATERAL (SELECT j.scheduled_at FROM exekutor_jobs j WHERE {_DUE} ORDER BY j.scheduled_at LIMIT 1)
    AS oldest ON true
LEFT JOIN LATERAL (SELECT j.scheduled_at FROM exekutor_jobs j WHERE {_LATER} ORDER BY j.scheduled_at LIMIT 1)
    AS next ON true
WHERE q.queue IS NOT NULL
ORDER BY q.queue
"""
PENDING_BY_QUEUE = f"WITH RECURSIVE {PENDING_QUEUES}{_FIGURES}"
# The same figures for named queues only (a page that shows a few of many queues): no loose scan of them all.
NAMED_QUEUES = "(SELECT DISTINCT unnest(%(queues)s::text[]) AS queue) AS q"
PENDING_OF_QUEUES = _FIGURES.replace("pending_queues q", NAMED_QUEUES)
# The names of up to %(limit)s queues with pending jobs after %(after)s, in order: the loose scan of PENDING_QUEUES,
# stopped after a page (a dashboard page of 50 of 20,000 queues walks 51 of them).
PENDING_QUEUES_AFTER = """
WITH RECURSIVE page(queue, n) AS (
    (SELECT queue::text, 1 FROM exekutor_jobs WHERE status = 'p' AND queue > %(after)s ORDER BY queue LIMIT 1)
    UNION ALL
    SELECT (SELECT j.queue::text FROM exekutor_jobs j WHERE j.status = 'p' AND j.queue > p.queue
            ORDER BY j.queue LIMIT 1), n + 1
    FROM page p WHERE p.queue IS NOT NULL AND n < %(limit)s)
SELECT queue FROM page WHERE queue IS NOT NULL
"""
# The queues of the oldest due jobs (the scheduled index, in its order: at most %(limit)s entries), with how long
# their oldest has waited: the queues that wait longest, found without visiting every queue.
LONGEST_WAITING = """
SELECT queue, max(extract(epoch FROM now() - scheduled_at))::float8 AS overdue_for
FROM (SELECT queue, scheduled_at FROM exekutor_jobs WHERE status = 'p' AND scheduled_at <= now()
      ORDER BY scheduled_at LIMIT %(limit)s) AS oldest
GROUP BY queue
"""
# Pending jobs of every queue, due and later, each a range of the scheduled index counted up to a limit (then
# estimated): the totals of a page that does not list every queue.
_TOTAL = "SELECT FROM exekutor_jobs WHERE status = 'p' AND scheduled_at {} now()"
TOTAL_EXACT_LIMIT = 10_000
# What the planner expects a count to be (EXPLAIN plans without running anything). The queue's pending total is
# the good estimate (migration 0007's statistics on queue and status); how it splits into due and later is not
# (the planner takes the time condition as independent of the queue), so a split comes from an exact figure
# where there is one, else from the estimate of the due jobs. One EXPLAIN asks for all of them: a UNION ALL
# whose branches are the queues' questions, in order (each costs its planning: about 0.2 ms).
_QUESTIONS = {figure: f"SELECT FROM exekutor_jobs WHERE status = 'p' AND queue = %s{time}" for figure, time in
              (("pending", ""), ("due", " AND scheduled_at <= now()"))}
# Executing jobs are few (at most the workers' max_threads), so this counts them. It reads the executing partial
# index, which keeps an entry for every job that passed through 'e' until VACUUM: for `info` and the dashboard,
# never on a worker's path.
EXECUTING_BY_QUEUE = "SELECT queue, count(*)::int AS executing FROM exekutor_jobs WHERE status = 'e' GROUP BY queue"


def pending_by_queue(cursor, exact_up_to=EXACT_COUNT_LIMIT, estimates=None, queues=None):
    """[{queue, due, scheduled, pending, estimated, due_estimated, scheduled_estimated, oldest_due_at,
    overdue_for, next_scheduled_at, next_in}] for every queue with pending jobs, in queue order, on `cursor` (so
    in its transaction's snapshot). `estimated`: some count of the queue is an estimate. `estimates`: an
    EstimateCache, for a caller that asks every few seconds. `queues`: only these (a row each, zeros included)."""
    if queues is None:
        cursor.execute(PENDING_BY_QUEUE, {"limit": exact_up_to + 1})
    else:
        cursor.execute(PENDING_OF_QUEUES, {"limit": exact_up_to + 1, "queues": list(queues)})
    columns = [column.name for column in cursor.description]
    queues = [dict(zip(columns, row)) for row in cursor.fetchall()]
    estimated = [queue for queue in queues if max(queue["due"], queue["scheduled"]) > exact_up_to]
    questions = [(queue["queue"], figure) for queue in estimated for figure in _figures_to_plan(queue, exact_up_to)]
    ask = functools.partial(_planned_rows, cursor)
    planned = dict(zip(questions, estimates.get(questions, ask) if estimates is not None else ask(questions)))
    for queue in estimated:
        _estimate(queue, {figure: rows for (name, figure), rows in planned.items() if name == queue["queue"]},
                  exact_up_to)
    for queue in queues:
        # An estimate is always above the limit, and an exact count never is.
        queue["due_estimated"], queue["scheduled_estimated"] = (queue[f] > exact_up_to for f in ("due", "scheduled"))
        queue["estimated"] = queue["due_estimated"] or queue["scheduled_estimated"]
        queue["pending"] = queue["due"] + queue["scheduled"]
    return queues


def _figures_to_plan(queue, exact_up_to):
    both = queue["due"] > exact_up_to and queue["scheduled"] > exact_up_to
    return ("pending", "due") if both else ("pending",)


def _estimate(queue, planned, exact_up_to):
    """Replaces the counts that reached the limit by estimates, never below the limit."""
    floor, total = exact_up_to + 1, planned["pending"]
    if queue["scheduled"] <= exact_up_to:  # the other figure is exact: the estimate is the rest of the total
        queue["due"] = max(floor, total - queue["scheduled"])
    elif queue["due"] <= exact_up_to:
        queue["scheduled"] = max(floor, total - queue["due"])
    else:  # both estimated: the due estimate, within what the total leaves for the other figure
        queue["due"] = max(floor, min(planned["due"], total - floor))
        queue["scheduled"] = max(floor, total - queue["due"])


class EstimateCache:
    """The planner's estimates for the last set of questions, for up to `max_age` seconds. They change only as
    fast as the table's statistics (ANALYZE) and size do, while asking costs about 0.2 ms of planning per
    question: /metrics, scraped every few seconds, keeps its answers for 30 s."""

    def __init__(self, max_age=30.0):
        self.max_age = max_age
        self._entry = None  # (questions, when, rows)

    def get(self, questions, ask):
        entry, now = self._entry, time.monotonic()
        if entry is not None and entry[0] == questions and now - entry[1] < self.max_age:
            return entry[2]
        rows = ask(questions)
        self._entry = (list(questions), now, rows)
        return rows


def pending_queue_names(cursor, after="", limit=50):
    """The first `limit` queues with pending jobs whose name sorts after `after`."""
    cursor.execute(PENDING_QUEUES_AFTER, {"after": after, "limit": limit})
    return [row[0] for row in cursor.fetchall()]


def longest_waiting(cursor, jobs=1000):
    """{queue: seconds its oldest due job has waited} for the queues of the `jobs` oldest due jobs."""
    cursor.execute(LONGEST_WAITING, {"limit": jobs})
    return dict(cursor.fetchall())


def pending_totals(cursor, exact_up_to=TOTAL_EXACT_LIMIT):
    """{due, scheduled, due_estimated, scheduled_estimated} over every queue: exact up to `exact_up_to` each,
    else the planner's estimate (never below the limit)."""
    totals = {}
    for figure, operator in (("due", "<="), ("scheduled", ">")):
        question = _TOTAL.format(operator)
        cursor.execute(f"SELECT count(*)::int FROM ({question} LIMIT %(limit)s) AS c", {"limit": exact_up_to + 1})
        count = cursor.fetchone()[0]
        if count > exact_up_to:
            count = max(exact_up_to + 1, int(_plan(cursor, question)["Plan Rows"]))
        totals[figure], totals[f"{figure}_estimated"] = count, count > exact_up_to
    return totals


def no_pending(name):
    """The figures of a queue without pending jobs, shaped as pending_by_queue's rows."""
    return {"queue": name, "due": 0, "scheduled": 0, "pending": 0, "estimated": False, "due_estimated": False,
            "scheduled_estimated": False, "oldest_due_at": None, "overdue_for": None, "next_scheduled_at": None,
            "next_in": None}


def executing_by_queue(cursor):
    """{queue: executing jobs}."""
    cursor.execute(EXECUTING_BY_QUEUE)
    return dict(cursor.fetchall())


def _planned_rows(cursor, questions):
    """The planner's row estimates for [(queue, figure)], in order (0 where the plan has another shape)."""
    if not questions:
        return []
    plan = _plan(cursor, " UNION ALL ".join(_QUESTIONS[figure] for _, figure in questions),
                 [queue for queue, _ in questions])
    branches = plan.get("Plans", []) if plan["Node Type"] == "Append" else [plan]
    if len(branches) != len(questions):  # then the counts stay at the limit
        return [0] * len(questions)
    return [int(branch["Plan Rows"]) for branch in branches]


def _plan(cursor, sql, params=None):
    """The top node of the plan of `sql` (EXPLAIN: nothing runs)."""
    cursor.execute("EXPLAIN (FORMAT JSON) " + sql, params)
    plan = cursor.fetchone()[0]
    if isinstance(plan, str):  # a connection without psycopg2's json typecaster
        plan = json.loads(plan)
    return plan[0]["Plan"]


# --- held-back jobs (flow control, migration 0011) ---------------------------------------------------------------
# A job a limit holds back stays pending with `blocked_on` naming the limit, in the held-back index (blocked_on,
# priority, scheduled_at, enqueued_at). Its figures are by queue and reason (the limit key's first word:
# concurrency, rate or paused), never by key: keys may be one per customer. The limits that hold jobs back come
# from a loose scan of that index (one descent per limit, as the workers' own sweep does at every poll), stopped
# after HELD_KEYS_LIMIT limits; each limit's jobs are then walked in the index's order, at most
# HELD_EXACT_LIMIT + 1 of them, reading each one's queue (a job-level limit, "concurrency job NAME:KEY", may hold
# jobs of several queues). A limit past the walk gets the planner's estimate of its jobs, shared between its
# queues as in the walk; a queue's figure that holds an estimate, or that may miss limits past HELD_KEYS_LIMIT, is
# `estimated` ("~"). The walk reads each entry's row (its queue; and held-back rows change too often for the
# visibility map to spare the heap): 150 limits of 500 jobs took 50 ms with 500 per limit, hence 100, so the
# worst case (every limit past its walk) is about 50,000 entries.
HELD_KEYS_LIMIT = 500
HELD_EXACT_LIMIT = 100
# Limits past their walk whose count the planner is asked for (about 0.2 ms of planning each); any further one
# counts as its walk's floor, HELD_EXACT_LIMIT + 1, and is marked estimated like the others.
HELD_PLANNED_LIMIT = 100
HELD_REASONS = ("concurrency", "rate", "paused")
HELD_BACK = """
WITH RECURSIVE limits(key, n) AS (
    (SELECT blocked_on, 1 FROM exekutor_jobs WHERE status = 'p' AND blocked_on IS NOT NULL
     ORDER BY blocked_on LIMIT 1)
    UNION ALL
    SELECT (SELECT j.blocked_on FROM exekutor_jobs j WHERE j.status = 'p' AND j.blocked_on IS NOT NULL
            AND j.blocked_on > l.key ORDER BY j.blocked_on LIMIT 1), n + 1
    FROM limits l WHERE l.key IS NOT NULL AND n <= %(keys)s)
SELECT l.key, l.n, h.queue, h.held
FROM limits l CROSS JOIN LATERAL (
    SELECT w.queue::text AS queue, count(*)::int AS held
    FROM (SELECT j.queue FROM exekutor_jobs j WHERE j.status = 'p' AND j.blocked_on = l.key
          ORDER BY j.blocked_on, j.priority, j.scheduled_at, j.enqueued_at LIMIT %(limit)s) AS w
    GROUP BY w.queue) AS h
WHERE l.key IS NOT NULL
"""
_HELD_QUESTION = "SELECT FROM exekutor_jobs WHERE status = 'p' AND blocked_on = %s"


def held_back_by_queue(cursor, exact_up_to=HELD_EXACT_LIMIT, estimates=None, keys_limit=HELD_KEYS_LIMIT):
    """{queue: {"concurrency": n, "rate": n, "paused": n, "estimated": bool}} for every queue with held-back jobs
    (see HELD_BACK). `estimates`: an EstimateCache of its own, for a caller that asks every few seconds."""
    cursor.execute(HELD_BACK, {"keys": keys_limit, "limit": exact_up_to + 1})
    walked, truncated = {}, False
    for key, n, queue, held in cursor.fetchall():
        if n > keys_limit:  # the limit after the last one walked: there are more than keys_limit
            truncated = True
            continue
        walked.setdefault(key, {})[queue] = held
    over = [key for key, queues in walked.items() if sum(queues.values()) > exact_up_to]
    asked = over[:HELD_PLANNED_LIMIT]
    ask = functools.partial(_planned_held, cursor)
    planned = dict.fromkeys(over[HELD_PLANNED_LIMIT:], 0)  # the floor below
    planned.update(zip(asked, estimates.get(asked, ask) if estimates is not None else ask(asked)))
    result = {}
    for key, queues in walked.items():
        reason = key.partition(" ")[0]
        sample = sum(queues.values())
        total = max(exact_up_to + 1, planned[key]) if key in planned else sample
        for queue, held in queues.items():
            figures = result.setdefault(queue, no_held())
            figures[reason] = figures.get(reason, 0) + round(held * total / sample)
            figures["estimated"] = figures["estimated"] or key in planned or truncated
    return result


def no_held():
    """The held-back figures of a queue without held-back jobs."""
    return {**dict.fromkeys(HELD_REASONS, 0), "estimated": False}


def _planned_held(cursor, keys):
    return [int(_plan(cursor, _HELD_QUESTION, [key])["Plan Rows"]) for key in keys]
