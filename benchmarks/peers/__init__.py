"""The peer side of `python -m benchmarks peers`: code that runs in the peers' own virtualenv
(benchmarks/.peers-venv, created on demand by benchmarks/peer_env.py), never in exekutor's.

`pgq_app` is the PgQueuer worker's factory (`pgq run benchmarks.peers.pgq_app:main`), `pgq_client` its enqueueing
side (one at a time, in bulk, and the latency producer). Nothing here imports exekutor.
"""
