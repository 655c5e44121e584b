"""exekutor's benchmark suite: `python -m benchmarks all` (see benchmarks/README.md).

Scenarios: noop (with a --threads sweep), limit (the bare psycopg2 loop), io (and memory), latency, enqueue,
notify, bigtable. Results go to benchmarks/results/<timestamp>.json and latest.json.
"""
