"""The dashboard's pages on a big table: each under 200 ms with 1,000,000 finished and 100,000 pending jobs; then
the pages that list queues and workers with 20,000 queues and 5,000 workers (MANY_QUEUES, MANY_WORKERS: each
queue with pending, executing, finished and failed jobs), where their size must stay bounded too.

The table is filled as the big-table scenario fills it (finished jobs 10 ms apart, so the last hour holds 360,000 of
them: the throughput chart has real work to do), plus pending jobs in a few queues and some workers. Each page is
requested through Flask's test client, as a browser would get it (the queries, the rendering, the headers; not the
network), once to warm up and then ROUNDS times; the median is the figure.

The jobs page's search is measured on the same table (each failed job with an error record): an id prefix, a
job name part that every job has and one that none has (a scan of every job the other fields leave, stopped after
search.TEXT_SEARCH_MS; and within 10 minutes), error text, argument text (with dashboard_show_arguments on) and a
time range; each under 300 ms. Each /jobs page also counts the jobs of every status (data.status_counts).
"""
import statistics
import time

from benchmarks import harness
from benchmarks.jobs import NOOP_PAYLOAD
from benchmarks.throughput import FILLER_QUEUE, fill_big_table

ROUNDS = 15
QUICK_ROUNDS = 5
TARGET_MS = 200
SEARCH_TARGET_MS = 300
PENDING_QUEUES = ("default", "mail", "reports", "images")
MANY_QUEUES, MANY_WORKERS = 20_000, 5_000


def scenario_dashboard(ctx):
    budget = ctx.new_budget("dashboard")
    finished, pending = ctx.count(1_000_000, 200_000), ctx.count(100_000, 20_000)
    db = ctx.db
    db.reset()
    started = time.monotonic()
    fill_big_table(db, finished)
    for queue in PENDING_QUEUES:
        db.execute("INSERT INTO exekutor_jobs (queue, payload) SELECT %s, %s::jsonb FROM generate_series(1, %s)",
                   (queue, NOOP_PAYLOAD, pending // len(PENDING_QUEUES)))
    db.execute("INSERT INTO exekutor_workers (hostname, pid, identifier, status, queues, min_threads, max_threads) "
               "SELECT 'bench-' || i, 1000 + i, 'worker-' || i, 'r', NULL, 1, 100 FROM generate_series(1, 4) AS i")
    db.execute("INSERT INTO exekutor_job_errors (job_id, attempt, error) SELECT id, 1, jsonb_build_object("
               "'type', 'smtplib.SMTPRecipientsRefused', 'message', 'mailbox unavailable for order ' || "
               "(row_number() OVER ())::text, 'traceback', 'Traceback (most recent call last): ...') "
               "FROM exekutor_jobs WHERE status = 'f'")
    db.vacuum()
    ctx.say(f"  filled {finished:,} finished and {pending:,} pending jobs in {time.monotonic() - started:.1f}s")
    try:
        timings = _measure(ctx, budget, _pages)
        db.reset()
        _fill_many_queues(db)
        many = _measure(ctx, budget, _many_pages)
    finally:
        db.reset()
    ctx.record("dashboard", {"finished": finished, "pending": pending,
                             "pages_ms": {path: stats for path, (_, stats) in timings.items()},
                             "many_queues_pages_ms": {path: stats for path, (_, stats) in many.items()}})
    for path, (label, stats) in timings.items():
        target = SEARCH_TARGET_MS if label.startswith("search") else TARGET_MS
        ctx.figure("dashboard_" + _slug(path), f"dashboard {label}, {finished:,} finished + {pending:,} pending",
                   "ms", stats, target=("<=", target))
    for path, (label, stats) in many.items():
        ctx.figure("dashboard_many_" + _slug(path), f"dashboard {label}, {MANY_QUEUES:,} queues, "
                   f"{MANY_WORKERS:,} workers", "ms", stats, target=("<=", TARGET_MS))


def _fill_many_queues(db):
    """Per queue: two pending jobs (one due, one later), one finished in the last hour and one failed; per worker
    four of the queues and one executing job."""
    started = time.monotonic()
    names = f"SELECT i, 'queue-' || lpad(i::text, 5, '0') AS q FROM generate_series(1, {MANY_QUEUES}) AS i"
    db.execute("INSERT INTO exekutor_jobs (queue, payload, scheduled_at) "
               f"SELECT q, %s::jsonb, now() + later FROM ({names}) AS n, "
               "(VALUES (interval '-1 minute'), (interval '1 hour')) AS v(later)", (NOOP_PAYLOAD,))
    db.execute("INSERT INTO exekutor_jobs (queue, payload, status, attempts, started_at, finished_at) "
               f"SELECT q, %s::jsonb, s, 1, now() - interval '1 minute', now() - (i %% 3000) * interval '1 second' "
               f"FROM ({names}) AS n, (VALUES ('c'), ('f')) AS v(s)", (NOOP_PAYLOAD,))
    db.execute("INSERT INTO exekutor_workers (hostname, pid, identifier, status, queues, min_threads, max_threads) "
               "SELECT 'host-' || (i % 100), 1000 + i, 'worker-' || i, 'r', "
               f"ARRAY(SELECT 'queue-' || lpad((((i * 4 + k) % {MANY_QUEUES}) + 1)::text, 5, '0') "
               "FROM generate_series(0, 3) AS k), 1, 100 "
               f"FROM generate_series(1, {MANY_WORKERS}) AS i")
    db.execute("INSERT INTO exekutor_jobs (queue, payload, status, attempts, started_at, worker_id) "
               "SELECT w.queues[1], %s::jsonb, 'e', 1, now(), w.id FROM exekutor_workers w", (NOOP_PAYLOAD,))
    db.vacuum()
    print(f"  filled {MANY_QUEUES:,} queues and {MANY_WORKERS:,} workers in {time.monotonic() - started:.1f}s",
          flush=True)


def _many_pages(client, db):
    return [("/dashboard/", "overview /"), ("/dashboard/queues/queue-00042", "/queues/<one of many>"),
            ("/dashboard/workers", "/workers"), ("/dashboard/queues?after=queue-10000", "/queues (all, a middle page)")]


def _pages(client, db):
    """(path, label) of every page, with a real job id and a real second-page cursor."""
    failed_id = db.scalar("SELECT id::text FROM exekutor_jobs WHERE status = 'f' LIMIT 1")
    first = client.get("/dashboard/jobs?status=failed").get_data(as_text=True)
    cursor = first.split('id="next-page" href="')[1].split('"')[0].replace("&amp;", "&")
    return [("/dashboard/", "overview /"), (f"/dashboard/queues/{FILLER_QUEUE}", "/queues/<busy queue>"),
            ("/dashboard/queues/mail", "/queues/<pending queue>"), ("/dashboard/workers", "/workers"),
            ("/dashboard/jobs", "/jobs (all)"), ("/dashboard/jobs?status=failed", "/jobs?status=failed"),
            (cursor, "/jobs?status=failed, page 2"), ("/dashboard/jobs?status=pending&queue=mail",
                                                      "/jobs?status=pending&queue=mail"),
            (f"/dashboard/jobs/{failed_id}", "/jobs/<id>"), ("/dashboard/schedules", "/schedules"),
            *_searches(db, failed_id)]


def _searches(db, failed_id):
    """(path, label) of the searches: an hour's range of failed jobs two hours back, and each text field."""
    since = db.scalar("SELECT to_char(now() - interval '3 hours', 'YYYY-MM-DD\"T\"HH24:MI')")
    until = db.scalar("SELECT to_char(now() - interval '2 hours', 'YYYY-MM-DD\"T\"HH24:MI')")
    recent = db.scalar("SELECT to_char(now() - interval '10 minutes', 'YYYY-MM-DD\"T\"HH24:MI')")
    return [(f"/dashboard/jobs?prefix={failed_id[:8]}", "search: id prefix"),
            ("/dashboard/jobs?name=noop", "search: name part, every job"),
            ("/dashboard/jobs?status=completed&name=no-such-job", "search: name part, no job (stopped)"),
            (f"/dashboard/jobs?status=completed&name=no-such-job&from={recent}", "search: the same, 10 minutes"),
            ("/dashboard/jobs?status=failed&error=order+4242", "search: error text"),
            ("/dashboard/jobs?error=no-such-error", "search: error text, no job"),
            ("/dashboard/jobs?status=completed&args=no-such-argument", "search: argument text, no job (stopped)"),
            (f"/dashboard/jobs?status=failed&from={since}&to={until}", "search: failed, a time range")]


def _measure(ctx, budget, pages):
    import flask

    from exekutor import config
    from exekutor.dashboard import blueprint

    config.configure(dashboard_show_arguments=True)  # the argument search
    app = flask.Flask("bench")
    app.register_blueprint(blueprint, url_prefix="/dashboard")
    client = app.test_client()
    rounds = QUICK_ROUNDS if ctx.quick else ROUNDS
    timings = {}
    for path, label in pages(client, ctx.db):
        started = time.perf_counter()
        size = len(_get(client, path))  # warm: the pool's connection, the templates, PostgreSQL's caches
        if not timings:  # the process's first request also counts the charts' whole hour
            ctx.say(f"  first request ({label}): {(time.perf_counter() - started) * 1000:.0f} ms")
        times = []
        for _ in range(rounds):
            if times and not budget.allows(statistics.median(times) / 1000):
                break
            started = time.perf_counter()
            _get(client, path)
            times.append((time.perf_counter() - started) * 1000)
        stats = harness.summary(times)
        timings[path] = (label, stats)
        ctx.say(f"  {label:<40} median {stats['median']:7.1f} ms  (min {stats['min']:.1f}, max {stats['max']:.1f}), "
                f"{size / 1000:,.0f} kB")
    return timings


def _get(client, path):
    response = client.get(path)
    assert response.status_code == 200, f"{path}: HTTP {response.status_code}"
    return response.get_data()


def _slug(path):
    return "".join(ch if ch.isalnum() else "_" for ch in path.replace("/dashboard", "", 1)).strip("_")[:40] or "root"
