"""Enqueueing, in this (plain, not monkeypatched) process, through exekutor's public API.

- one by one: `noop.perform_later(i)` in a loop, each its own autocommit INSERT on the pooled connection;
- enqueue_many: 20,000 requests built with `noop.job(i)` (arguments serialized there), then
  `exekutor.enqueue_many(requests)` as one call (one INSERT ... SELECT FROM unnest(...)). The headline rate
  counts both (what an application spends); the insert alone is reported beside it;
- notification cost: the same enqueue_many of pre-built requests with the statement-level trigger
  `exekutor_jobs_notify_insert` enabled and disabled (ALTER TABLE ... DISABLE TRIGGER), runs alternating so
  that drift on a busy machine hits both alike. A LISTEN connection is open, as a worker's would be.
"""
import time

from benchmarks import harness

TRIGGER = "exekutor_jobs_notify_insert"


def _jobs():
    import exekutor  # noqa: F401 - after the driver has pointed EXEKUTOR_DATABASE_URL at the bench database
    from benchmarks import jobs

    return jobs


def scenario_enqueue(ctx):
    import exekutor
    from exekutor.db.pool import reset_default_pool

    jobs = _jobs()
    budget = ctx.new_budget("enqueue")
    one_count, many_count = ctx.count(3000, 500), ctx.count(20000, 5000)
    ctx.db.reset()
    for _ in range(3):
        jobs.noop.perform_later("warm-up")  # opens the pooled connection
    singles, manys = [], []
    try:
        for i in range(ctx.runs):
            if singles and not budget.allows(3 * max(r["seconds"] for r in singles)):
                break
            ctx.db.reset()
            started = time.perf_counter()
            for n in range(one_count):
                jobs.noop.perform_later(n)
            seconds = time.perf_counter() - started
            singles.append({"jobs": one_count, "seconds": round(seconds, 4), "rate": one_count / seconds})
            ctx.say(f"  perform_later one by one, run {i + 1}: {one_count / seconds:,.0f} jobs/s")
        for i in range(ctx.runs):
            if manys and not budget.allows(3 * max(r["seconds"] for r in manys)):
                break
            ctx.db.reset()
            started = time.perf_counter()
            requests = [jobs.noop.job(n) for n in range(many_count)]
            built = time.perf_counter()
            exekutor.enqueue_many(requests)
            done = time.perf_counter()
            manys.append({"jobs": many_count, "build_s": round(built - started, 4),
                          "insert_s": round(done - built, 4), "seconds": round(done - started, 4),
                          "rate": many_count / (done - started), "insert_rate": many_count / (done - built)})
            ctx.say(f"  enqueue_many({many_count:,}), run {i + 1}: {manys[-1]['rate']:,.0f} jobs/s "
                    f"(building the requests {built - started:.3f}s, the call {done - built:.3f}s)")
    finally:
        reset_default_pool()
        ctx.db.reset()
    ctx.record("enqueue", {"one_by_one": singles, "enqueue_many": manys, "budget_overrun": budget.overrun})
    ctx.figure("enqueue_one", "enqueue one by one (perform_later, autocommit)", "jobs/s",
               harness.summary([r["rate"] for r in singles]), target=(">=", 2000), throughput=True)
    ctx.figure("enqueue_many", f"enqueue_many of {many_count:,} (building requests + the call)", "jobs/s",
               harness.summary([r["rate"] for r in manys]), target=(">=", 50000), throughput=True)
    ctx.figure("enqueue_many_insert", "  enqueue_many, the call alone", "jobs/s",
               harness.summary([r["insert_rate"] for r in manys]), throughput=True)


def scenario_notify(ctx):
    import exekutor
    from exekutor.db.pool import reset_default_pool

    jobs = _jobs()
    budget = ctx.new_budget("notify")
    count = ctx.count(20000, 5000)
    rounds = max(ctx.runs, 7) if not ctx.quick else 1
    requests = [jobs.noop.job(n) for n in range(count)]
    listener = harness.connect(ctx.db.url)
    with listener.cursor() as cursor:
        cursor.execute('LISTEN "exekutor::job_enqueued"')
    on, off, notified = [], [], 0
    try:
        ctx.db.reset()
        exekutor.enqueue_many(requests[:10])  # warm-up: opens the pooled connection
        for i in range(rounds):
            if on and not budget.allows(3 * count / min(on + off)):
                break
            for enabled, rates in ((True, on), (False, off)) if i % 2 == 0 else ((False, off), (True, on)):
                ctx.db.reset()
                ctx.db.execute(f"ALTER TABLE exekutor_jobs {'ENABLE' if enabled else 'DISABLE'} TRIGGER {TRIGGER}")
                started = time.perf_counter()
                exekutor.enqueue_many(requests)
                rates.append(count / (time.perf_counter() - started))
                listener.poll()
                notified += len(listener.notifies)
                listener.notifies.clear()
            ctx.say(f"  round {i + 1}: trigger on {on[-1]:,.0f} jobs/s, off {off[-1]:,.0f} jobs/s")
    finally:
        ctx.db.execute(f"ALTER TABLE exekutor_jobs ENABLE TRIGGER {TRIGGER}")
        listener.close()
        reset_default_pool()
        ctx.db.reset()
    with_trigger, without = harness.summary(on), harness.summary(off)
    # Cost of each round's pair, so that drift between rounds cancels out.
    costs = harness.summary([1 - a / b for a, b in zip(on, off)])
    ctx.record("notify", {"jobs": count, "rounds": len(on), "trigger_on": on, "trigger_off": off,
                          "notifications_received": notified, "budget_overrun": budget.overrun})
    ctx.figure("notify_on", f"bulk insert of {count:,} (enqueue_many), trigger on", "jobs/s", with_trigger,
               throughput=True)
    ctx.figure("notify_off", f"bulk insert of {count:,} (enqueue_many), trigger off", "jobs/s", without,
               throughput=True)
    ctx.figure("notify_cost", "notification trigger cost (1 - on/off)", "%",
               {k: (v * 100 if isinstance(v, float) else v) for k, v in costs.items() if k != "values"}
               | {"values": [c * 100 for c in costs["values"]]}, target=("<=", 10.0))
