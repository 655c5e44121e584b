"""`python -m benchmarks.explain [--batch N] [--pending N] [--filler N]`: EXPLAIN (ANALYZE, BUFFERS) of the
worker's reserve and complete statements, exactly as psycopg2 sends them (mogrified from exekutor.db.queries).

Not part of `all`: a tool for reading plans. It creates and drops its own `exekutor_bench` database, like
the suite (so do not run it while the suite runs). The table gets N pending no-op jobs (and optionally N
finished filler jobs); then the reserve statement takes a batch, the complete statement finishes it, each
explained (EXPLAIN ANALYZE executes the statement, so the complete sees the rows the reserve took). The
reserve/complete pair is then repeated `--rounds` times unexplained and explained again, so plans after
churn (dead index entries in the pending index) show too.
"""
import argparse
import sys
import uuid

from benchmarks import harness
from benchmarks.jobs import NOOP_PAYLOAD
from benchmarks.limit import complete_statement, register, reserve_params
from benchmarks.throughput import fill_big_table
from exekutor.db.queries import RESERVE_JOBS


def explain(cursor, sql, params):
    statement = cursor.mogrify(sql, params).decode()
    cursor.execute("EXPLAIN (ANALYZE, BUFFERS, VERBOSE OFF) " + statement)
    return "\n".join(row[0] for row in cursor.fetchall())


def main(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks.explain")
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--pending", type=int, default=20000)
    parser.add_argument("--filler", type=int, default=0, help="finished jobs to add first (big table)")
    parser.add_argument("--rounds", type=int, default=50, help="reserve/complete rounds before the second look")
    args = parser.parse_args(argv)
    db = harness.BenchDatabase().create()
    try:
        if args.filler:
            fill_big_table(db, args.filler)
        db.insert_pending(args.pending, NOOP_PAYLOAD)
        worker_id = str(uuid.uuid4())
        conn = harness.connect(db.url)
        with conn.cursor() as cursor:
            register(cursor, worker_id, args.batch, "explain")
            reserve = reserve_params(worker_id, args.batch)

            def look(title):
                print(f"===== {title}: RESERVE_JOBS (limit {args.batch})")
                print(explain(cursor, RESERVE_JOBS, reserve))
                cursor.execute("SELECT id::text FROM exekutor_jobs WHERE status = 'e' AND worker_id = %s",
                               (worker_id,))
                ids = [row[0] for row in cursor.fetchall()]
                print(f"\n===== {title}: completion ({len(ids)} ids)")
                print(explain(cursor, *complete_statement(worker_id, ids)))
                print()

            look(f"fresh table ({args.pending} pending, {args.filler} filler, after VACUUM ANALYZE)")
            for _ in range(args.rounds):
                cursor.execute(RESERVE_JOBS, reserve)
                ids = [row[0] for row in cursor.fetchall() if row[0] is not None]  # the last row is the walk's
                if not ids:
                    break
                cursor.execute(*complete_statement(worker_id, ids))
            look(f"after {args.rounds} more rounds (no vacuum)")
        conn.close()
    finally:
        db.drop()


if __name__ == "__main__":
    main(sys.argv[1:])
