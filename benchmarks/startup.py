"""Start-up: how soon a worker can work after its exec, how soon the CLI answers, and what both import.

- Worker: one no-op job is pending, then `python -m exekutor start --app benchmarks.jobs ...` is exec'd. Three
  moments, all in the server's clock (the exec moment is placed in it with one `clock_timestamp()` read just
  before, `harness.ServerClock`): *registered* = the worker row's `started_at` (its INSERT's `now()`), *ready* =
  the row's `last_heartbeat_at` when the driver, polling every 5 ms, first sees status `r` (the status update
  stamps it; the first heartbeat comes 12 s later; the JSON's `ready_seen_s`, when the poll returned, bounds it
  from above), *first job* = the pending job's `started_at` (the
  reservation's `now()`). The worker's CPU and RSS at ready are noted too.
- CLI: `exekutor-gevent --help`, `info`, `jobs list` and `schedules` on the empty benchmark database, wall clock
  from exec to exit, the commands in turn round after round (so drift hits them alike). Run from an empty
  directory (no config file is read); the console script beside this interpreter, else `python -m exekutor`.
- Imports: `python -X importtime` of a worker (up to its ready) and of `import exekutor.cli`, summed; the wall
  clock of `python -c 'import exekutor.cli'` against `python -c pass` (the interpreter alone); and which heavy
  optional modules each pulled in. Figures, no targets.
"""
import os
import re
import subprocess
import sys
import tempfile
import time

from benchmarks import harness
from benchmarks.jobs import NOOP_PAYLOAD

READY_POLL = 0.005
CLI_COMMANDS = (("--help",), ("info",), ("jobs", "list"), ("schedules",))
# `jobs list` exits 1 when no job matches, as grep does: on the empty queue that is its answer.
CLI_STATUSES = {("jobs", "list"): (0, 1)}
# Modules a worker or a CLI command that does not use them should not pay for.
HEAVY_MODULES = ("flask", "jinja2", "werkzeug", "sentry_sdk", "yaml", "croniter", "ssl", "psutil", "gevent")
IMPORT_LINE = re.compile(r"^import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def _threads(ctx):
    return ctx.best_threads or ctx.threads_candidates[0]


def measure_worker_start(ctx, threads, interpreter_args=()):
    """One exec of a worker with one job pending; returns the three moments (seconds after the exec) and the
    process, still running, for the caller to read (its log) and stop."""
    db = ctx.db
    db.reset()
    db.insert_pending(1, NOOP_PAYLOAD)
    clock = harness.ServerClock(db)
    exec_perf = time.perf_counter()
    proc = harness.spawn([*interpreter_args, "-m", "exekutor", "start", "--app", "benchmarks.jobs", "--threads",
                          str(threads), "--poll-interval", "1", "--quiet"], db.url, f"startup-{threads}")
    exec_at = clock.at(exec_perf)
    ready = ready_seen = job = registered = None
    cpu = rss = None
    deadline = time.monotonic() + 30
    while ready is None or job is None:
        if proc.poll() is not None:
            raise RuntimeError(f"the worker exited with status {proc.returncode}:\n{harness.log_tail(proc)}")
        if time.monotonic() > deadline:
            harness.stop_process(proc)
            raise RuntimeError(f"the worker was not ready within 30s:\n{harness.log_tail(proc)}")
        row = db.execute(
            "SELECT w.status, extract(epoch FROM w.started_at)::float8, "
            "extract(epoch FROM w.last_heartbeat_at)::float8, "
            "(SELECT extract(epoch FROM min(started_at))::float8 FROM exekutor_jobs) "
            "FROM (SELECT 1) AS one LEFT JOIN exekutor_workers AS w ON TRUE")[0]
        seen = clock.at(time.perf_counter()) - exec_at  # an upper bound on when what the row says happened
        status, registered_epoch, heartbeat_epoch, job_epoch = row
        if registered_epoch is not None:
            registered = registered_epoch - exec_at
        if ready is None and status == "r":
            ready, ready_seen = heartbeat_epoch - exec_at, seen
            cpu, rss = harness.cpu_seconds(proc.pid), harness.rss_bytes(proc.pid)
        if job_epoch is not None:
            job = job_epoch - exec_at
        time.sleep(READY_POLL)
    return proc, {"registered_s": registered, "ready_s": ready, "ready_seen_s": ready_seen, "first_job_s": job,
                  "cpu_at_ready_s": cpu, "rss_at_ready_mb": round((rss or 0) / 2**20, 1),
                  "clock_uncertainty_ms": clock.uncertainty * 1e3}


def _worker_runs(ctx, budget):
    threads = _threads(ctx)
    runs = []
    for i in range(max(ctx.runs, 1)):
        if runs and not budget.allows(5):
            break
        proc, run = measure_worker_start(ctx, threads)
        harness.stop_process(proc)
        runs.append(run)
        ctx.say(f"  worker run {i + 1}: registered {run['registered_s']:.3f}s, ready {run['ready_s']:.3f}s, "
                f"pending job started {run['first_job_s']:.3f}s after exec (CPU {run['cpu_at_ready_s']:.2f}s, "
                f"RSS {run['rss_at_ready_mb']} MB at ready)")
    ctx.db.reset()
    return threads, runs


def cli_command():
    """What a user runs: the `exekutor-gevent` console script installed beside this interpreter, else
    `python -m exekutor` (the same module behind it)."""
    script = os.path.join(os.path.dirname(sys.executable), "exekutor-gevent")
    return [script] if os.access(script, os.X_OK) else [sys.executable, "-m", "exekutor"]


def _cli_runs(ctx, budget):
    ctx.db.reset()
    base = cli_command()
    times = {command: [] for command in CLI_COMMANDS}
    with tempfile.TemporaryDirectory(prefix="exekutor-bench-cli-") as empty:
        for _ in range(max(ctx.runs, 1)):
            if times[CLI_COMMANDS[0]] and not budget.allows(10):
                break
            for command in CLI_COMMANDS:
                started = time.perf_counter()
                result = subprocess.run([*base, *command], cwd=empty, env=harness.child_env(ctx.db.url),
                                        capture_output=True, text=True, timeout=60)
                took = time.perf_counter() - started
                if result.returncode not in CLI_STATUSES.get(command, (0,)):
                    raise RuntimeError(f"`{' '.join(command)}` exited with status {result.returncode}:\n"
                                       f"{result.stderr[-2000:]}")
                times[command].append(took)
    for command in CLI_COMMANDS:
        summary = harness.summary(times[command])
        ctx.say(f"  `exekutor-gevent {' '.join(command)}`: median {summary['median']:.3f}s "
                f"(min {summary['min']:.3f}s, max {summary['max']:.3f}s)")
    return base, times


def parse_importtime(text):
    """`-X importtime` lines -> (total ms of every module's own time, module count, the top-level imports by
    cumulative ms, the set of module names)."""
    total_us, names, top = 0, set(), {}
    for line in text.splitlines():
        match = IMPORT_LINE.match(line)
        if not match:
            continue
        own, cumulative, indent, name = int(match[1]), int(match[2]), match[3], match[4]
        total_us += own
        names.add(name)
        if len(indent) <= 1:  # imported by the program itself, not by another module
            top[name] = top.get(name, 0) + cumulative / 1000
    biggest = dict(sorted(top.items(), key=lambda item: -item[1])[:10])
    return total_us / 1000, len(names), {k: round(v, 1) for k, v in biggest.items()}, names


def _heavy(names):
    return sorted(module for module in HEAVY_MODULES if module in names)


def _import_figures(ctx):
    """Import profiles of a worker and of the CLI module, and the wall clock of the CLI import."""
    proc, _ = measure_worker_start(ctx, _threads(ctx), interpreter_args=("-X", "importtime"))
    try:
        with open(proc.log_path, encoding="utf-8", errors="replace") as handle:
            worker = parse_importtime(handle.read())
    finally:
        harness.stop_process(proc)
        ctx.db.reset()
    env = harness.child_env(ctx.db.url)
    cli = parse_importtime(subprocess.run([sys.executable, "-X", "importtime", "-c", "import exekutor.cli"],
                                          env=env, capture_output=True, text=True, timeout=60).stderr)
    walls = {"import exekutor.cli": [], "pass": []}
    for _ in range(max(ctx.runs, 1)):
        for code in walls:
            started = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=60)
            walls[code].append((time.perf_counter() - started) * 1000)
    return worker, cli, walls


def scenario_startup(ctx):
    budget = ctx.new_budget("startup")
    threads, worker_runs = _worker_runs(ctx, budget)
    base, cli_times = _cli_runs(ctx, budget)
    worker_imports, cli_imports, walls = _import_figures(ctx)
    for label, (total, count, top, names) in (("worker", worker_imports), ("import exekutor.cli", cli_imports)):
        ctx.say(f"  {label}: {count} modules, {total:.0f} ms of imports (-X importtime); heavy modules: "
                f"{', '.join(_heavy(names)) or 'none'}; biggest: "
                + ", ".join(f"{k} {v:.0f} ms" for k, v in list(top.items())[:5]))
    ctx.record("startup", {
        "threads": threads, "worker_runs": worker_runs, "cli_command": base,
        "cli_seconds": {" ".join(command): values for command, values in cli_times.items()},
        "imports": {label: {"total_ms": round(total, 1), "modules": count, "top_level_ms": top,
                            "heavy_modules": _heavy(names)}
                    for label, (total, count, top, names) in (("worker", worker_imports),
                                                              ("exekutor.cli", cli_imports))},
        "python_c_ms": walls, "budget_overrun": budget.overrun})
    ctx.figure("startup_registered", "worker exec -> registered (its row)", "s",
               harness.summary([r["registered_s"] for r in worker_runs]))
    ctx.figure("startup_ready", "worker exec -> ready (status r, able to reserve)", "s",
               harness.summary([r["ready_s"] for r in worker_runs]), target=("<=", 0.15))
    ctx.figure("startup_first_job", "worker exec -> a job pending at exec started", "s",
               harness.summary([r["first_job_s"] for r in worker_runs]), target=("<=", 0.25))
    ctx.figure("startup_cpu", "  worker CPU at ready (user + system)", "s",
               harness.summary([r["cpu_at_ready_s"] for r in worker_runs]))
    for command in CLI_COMMANDS:
        target = ("<=", 0.12) if command == ("--help",) else ("<=", 0.25)
        ctx.figure(f"cli_{'_'.join(c.strip('-') for c in command)}",
                   f"`exekutor-gevent {' '.join(command)}`, empty queue, exec to exit", "s",
                   harness.summary(cli_times[command]), target=target)
    ctx.figure("imports_worker", "worker's imports (-X importtime, sum)", "ms", harness.summary([worker_imports[0]]))
    ctx.figure("imports_cli", "`import exekutor.cli` (-X importtime, sum)", "ms", harness.summary([cli_imports[0]]))
    ctx.figure("imports_cli_wall", "`python -c 'import exekutor.cli'`, exec to exit", "ms",
               harness.summary(walls["import exekutor.cli"]))
    ctx.figure("imports_python", "  `python -c pass` (the interpreter alone)", "ms", harness.summary(walls["pass"]))
