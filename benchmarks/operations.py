"""`jobs list --status failed` on a big table: what an operator waits for, page 1 and a page far down.

Measured inside the big-table scenario, on its 1,000,000 finished jobs (1 % of them failed), through
`exekutor.operations.list_jobs` (the query and fetch the CLI, `info` and the dashboard run; the CLI's own start-up,
about 0.3 s of imports, is not in it). A later page is reached by following the cursors, as a user would; then
each page is timed ROUNDS times and the median kept.
"""
import time

import psycopg2

from benchmarks import harness
from exekutor import operations

ROUNDS = 20
FAR_PAGE = 100  # pages of 50 in: job 5,000 of the failed ones


def measure_listing(ctx, database, rows):
    conn = psycopg2.connect(database.url)
    conn.autocommit = True
    try:
        failed = operations.JobFilter(status="failed")
        cursor, page = None, 1
        while page < FAR_PAGE:  # as far as FAR_PAGE, or the last page of a smaller table
            following = operations.list_jobs(conn, failed, after=cursor).next_cursor
            if following is None:
                break
            cursor, page = following, page + 1
        first = _timed(lambda: operations.list_jobs(conn, failed))
        later = _timed(lambda: operations.list_jobs(conn, failed, after=cursor))
    finally:
        conn.close()
    ctx.say(f"  jobs list --status failed: first page {first['median']:.2f} ms, page {page} "
            f"{later['median']:.2f} ms")
    ctx.record("jobs_list", {"first_page_ms": first, "later_page_ms": later, "page": page})
    ctx.figure("jobs_list_first", f"`jobs list --status failed`, first page of 50, {rows:,} finished jobs", "ms",
               first, target=("<=", 100))
    ctx.figure("jobs_list_later", f"  the same, page {page} (after following the cursors)", "ms", later,
               target=("<=", 100))


def _timed(call):
    times = []
    for _ in range(ROUNDS):
        started = time.perf_counter()
        page = call()
        times.append((time.perf_counter() - started) * 1000)
        assert page.jobs, "the listing found no failed jobs"
    return harness.summary(times)
