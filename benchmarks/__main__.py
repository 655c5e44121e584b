"""`python -m benchmarks all` (or one or more scenarios); see benchmarks/README.md."""
import argparse
import datetime as _dt
import os
import sys
import time
import traceback

from benchmarks import harness, report

ORDER = ("startup", "noop", "limit", "io", "latency", "enqueue", "notify", "bigtable", "dashboard", "scheduler",
         "flow", "peers")
# Not part of `all`: named only (the peers' comparison installs PgQueuer into a virtualenv of its own).
NOT_IN_ALL = ("peers",)
ALIASES = {"memory": "io", "throughput": "noop", "bare": "limit", "notification": "notify", "big": "bigtable"}
# Seconds each scenario may take (full mode); a scenario past its budget starts no further run, reports what
# it got and the suite moves on. --quick scales them down.
BUDGETS = {"startup": 90, "noop": 120, "limit": 90, "io": 45, "latency": 60, "enqueue": 50, "notify": 30,
           "bigtable": 180, "dashboard": 150, "scheduler": 160, "flow": 360, "peers": 480}
DEFAULT_THREADS = "25,50,100,200"


class Context:
    """What the scenarios share: the database, the options, and the figures measured so far."""

    def __init__(self, db, quick, runs, threads_candidates, profile_dir, runs_given=False):
        self.db = db
        self.quick = quick
        self.runs = runs
        self.runs_given = runs_given  # --runs was given (a scenario with a default of its own follows it then)
        self.threads_candidates = threads_candidates
        self.profile_dir = profile_dir
        self.profile_seq = 0
        self.results = {}
        self.figures = []
        self.errors = {}
        self.scenario_info = {}
        self.current_budget = None
        self.extra_databases = []  # dropped at the end if a failed scenario left them
        self.best_threads = None if len(threads_candidates) > 1 else threads_candidates[0]
        self.noop_empty = None
        self.bare = None
        self.bare_batch = None

    def count(self, full, quick):
        return quick if self.quick else full

    def new_budget(self, name):
        """The time budget of scenario `name`; figures recorded while it is the current one note its overrun."""
        self.current_budget = harness.Budget(BUDGETS[name] * (0.4 if self.quick else 1.0))
        return self.current_budget

    @staticmethod
    def say(message):
        print(message, flush=True)

    def record(self, name, data):
        self.results[name] = data

    def figure(self, key, label, unit, stats, target=None, throughput=False, reference=None, partial=False,
               overrun=False):
        """One row of the table. partial: a run was cut by the budget before it finished; overrun: the budget
        stopped the scenario before all its runs."""
        self.figures.append({"key": key, "label": label, "unit": unit, "median": stats["median"],
                             "min": stats["min"], "max": stats["max"], "runs": stats["runs"],
                             "values": stats.get("values", []), "target": target, "throughput": throughput,
                             "reference": reference, "partial": bool(partial),
                             "overrun": bool(overrun or (self.current_budget and self.current_budget.overrun))})


def _scenario(name):
    from benchmarks import compare, dashboard, enqueue, flow, latency, limit, scheduler, startup, throughput

    return {"startup": startup.scenario_startup, "peers": compare.scenario_peers,
            "noop": throughput.scenario_noop, "io": throughput.scenario_io, "bigtable": throughput.scenario_bigtable,
            "limit": limit.scenario_limit, "latency": latency.scenario_latency,
            "enqueue": enqueue.scenario_enqueue, "notify": enqueue.scenario_notify,
            "dashboard": dashboard.scenario_dashboard, "scheduler": scheduler.scenario_scheduler,
            "flow": flow.scenario_flow}[name]


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="exekutor benchmarks against a real PostgreSQL (EXEKUTOR_BENCH_DATABASE_URL, default "
                    f"{harness.ADMIN_URL_DEFAULT}); a database {harness.BENCH_DATABASE} is created and dropped.")
    parser.add_argument("scenarios", nargs="*", default=["all"], metavar="SCENARIO",
                        help=f"all (default: every one but {', '.join(NOT_IN_ALL)}), or any of: {', '.join(ORDER)} "
                             "(memory is measured with io)")
    parser.add_argument("--quick", action="store_true", help="one run each, smaller counts (for iterating)")
    parser.add_argument("--runs", type=int, default=None, help="runs per figure (default 5; 1 with --quick)")
    parser.add_argument("--threads", default=DEFAULT_THREADS,
                        help=f"--threads values for the no-op sweep; the best is used for the other worker "
                             f"scenarios and as the bare loop's batch (default {DEFAULT_THREADS}; one value: no sweep)")
    parser.add_argument("--profile", metavar="DIR", default=None,
                        help="record every worker drain with py-spy (speedscope JSON in DIR); lowers the figures")
    parser.add_argument("--keep-database", action="store_true",
                        help=f"leave {harness.BENCH_DATABASE} in place afterwards (for EXPLAIN and friends)")
    args = parser.parse_args(argv)
    wanted = set()
    for name in args.scenarios:
        name = ALIASES.get(name, name)
        if name == "all":
            wanted.update(n for n in ORDER if n not in NOT_IN_ALL)
        elif name in ORDER:
            wanted.add(name)
        else:
            parser.error(f"unknown scenario {name!r}; choose from all, {', '.join(ORDER)}")
    try:
        threads = [int(t) for t in args.threads.split(",") if t.strip()]
        if not threads or min(threads) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--threads takes positive integers separated by commas, got {args.threads!r}")
    runs = args.runs or (1 if args.quick else 5)
    return args, [n for n in ORDER if n in wanted], threads, runs


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["hosts"]:  # the multi-host test bed: options and output of its own (benchmarks/hosts.py)
        from benchmarks import hosts

        return hosts.main(argv[1:])
    args, scenarios, threads, runs = parse_args(sys.argv[1:] if argv is None else argv)
    harness.install_signal_handlers()
    harness.compile_sources()
    stamp = report.timestamp()
    started_at = _dt.datetime.now().astimezone().isoformat(timespec="seconds")
    started = time.monotonic()
    busy = harness.busy_processes()
    machine = harness.machine_info()
    db = harness.BenchDatabase()
    # The driver enqueues through exekutor's API (default pool): point it at the benchmark database.
    os.environ["EXEKUTOR_DATABASE_URL"] = db.url
    os.environ.pop("DATABASE_URL", None)
    print(f"creating {harness.BENCH_DATABASE} on {harness.masked(db.admin)} ...", flush=True)
    db.create()
    ctx = Context(db, args.quick, runs, threads, args.profile, runs_given=args.runs is not None)
    try:
        postgres = db.server_info()
        for name in scenarios:
            print(f"\n== {name} ==", flush=True)
            scenario_started = time.monotonic()
            try:
                _scenario(name)(ctx)
            except Exception as error:  # noqa: BLE001 - one failed scenario must not lose the others' figures
                ctx.errors[name] = f"{type(error).__name__}: {error}"
                print(f"  FAILED: {type(error).__name__}: {error}", flush=True)
                traceback.print_exc()
                try:
                    db.reset()
                except Exception:  # noqa: BLE001
                    pass
            took = time.monotonic() - scenario_started
            ctx.scenario_info[name] = {"seconds": round(took, 1), "loadavg_at_end": os.getloadavg()}
            print(f"  ({took:.0f}s, load average {os.getloadavg()[0]:.2f})", flush=True)
    finally:
        harness._stop_all_children()
        for extra in list(ctx.extra_databases):
            extra.drop()
        if args.keep_database:
            print(f"\nkept database {harness.BENCH_DATABASE}", flush=True)
        else:
            db.drop()
    meta = {"started_at": started_at, "duration_s": time.monotonic() - started, "quick": args.quick, "runs": runs,
            "scenarios": scenarios, "threads_candidates": threads, "best_threads": ctx.best_threads,
            "command": "python -m benchmarks " + " ".join(sys.argv[1:] if argv is None else argv),
            "database": harness.masked(db.url), "postgres": postgres, "machine": machine,
            "loadavg_at_end": os.getloadavg(), "busy_processes_at_start": busy, "profiled": bool(args.profile),
            "scenario_times": ctx.scenario_info}
    figures = report.finish_figures(ctx)
    text = report.table(ctx, figures, meta)
    path = report.save({"meta": meta, "figures": figures, "scenarios": ctx.results, "errors": ctx.errors}, stamp)
    print("\n" + text)
    latest = os.path.relpath(os.path.join(report.RESULTS_DIR, "latest.json"))
    print(f"\nresults: {os.path.relpath(path)} (and {latest})")
    return 1 if ctx.errors else 0


if __name__ == "__main__":
    sys.exit(main())
