"""exekutor's benchmark suite: `python -m benchmarks all` (see benchmarks/README.md).

Scenarios: startup (worker start-up, CLI response, imports), noop (with a --threads sweep), limit (the bare
psycopg2 loop), io (and memory), latency, enqueue, notify, bigtable, dashboard, scheduler, flow; and, named only,
peers (PgQueuer side by side, benchmarks/compare.py). Results go to benchmarks/results/<timestamp>.json and latest.json.
"""
