"""`python -m benchmarks hosts`: workers on simulated hosts. Run as root; it cleans up after itself.

Each host is a Linux network namespace joined to this one by a veth pair (tests/reliability/netns.py), running one
`exekutor start` worker against a PostgreSQL cluster of the bed's own (tests/reliability/cluster.py) that listens on
every host's gateway address. Per host: one-way latency (`tc netem` on the host's link, both directions), a clock
offset (libfaketime) and, for one host, a partition at a chosen moment (its link dropped for a while). Each run
enqueues no-op jobs in one batch once every worker listens and times them to the last completion (database clock);
a pickup run enqueues jobs one by one and takes started_at - scheduled_at. Every job is reconciled: completed, and
run once (`attempts` = 1; a job run again after its host was presumed dead has 2).

Everything the bed made (workers by PID, namespaces and veths, the cluster) is removed at the end, on an error, on
Ctrl-C or SIGTERM; the whole run is bounded by --budget seconds.
"""
import argparse
import glob
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg2
import psycopg2.extensions

from benchmarks import harness

FAKETIME_LIBS = glob.glob("/usr/lib/*/faketime/libfaketime.so.1")


def parse_args(argv):
    parser = argparse.ArgumentParser(prog="python -m benchmarks hosts", description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", default="1,2,4,8", help="host counts to measure (default 1,2,4,8)")
    parser.add_argument("--latency", default="0,2,10", help="one-way latencies in ms (default 0,2,10)")
    parser.add_argument("--jobs", type=int, default=None, help="no-op jobs per run (default 5000; 1000 --quick)")
    parser.add_argument("--sleep", type=float, default=0.0,
                        help="jobs sleep this long (bench.sleep) instead of doing nothing (with --partition)")
    parser.add_argument("--threads", type=int, default=25, help="--threads of each worker (default 25)")
    parser.add_argument("--via-proxy", action="store_true",
                        help="latency by a delaying TCP proxy per host (tests/delay_proxy.py), 0 ms included, "
                             "instead of tc netem (for kernels without sch_netem)")
    parser.add_argument("--loss", type=float, default=0.0, help="packet loss %% on every link (default 0)")
    parser.add_argument("--clock-offsets", default="", help="faketime offsets per host, comma-separated ('+2s,-1s')")
    parser.add_argument("--partition", default="", metavar="AT:FOR",
                        help="cut the last host off AT seconds into each run, FOR seconds (e.g. 1:12)")
    parser.add_argument("--worker-timeout", type=float, default=6.0, help="workers' worker_timeout (default 6)")
    parser.add_argument("--pickup", type=int, default=None, help="jobs of the pickup-latency run (default 300)")
    parser.add_argument("--budget", type=float, default=None, help="seconds for everything (default 600; 240 --quick)")
    parser.add_argument("--quick", action="store_true", help="smaller counts, shorter budget")
    parser.add_argument("--json", metavar="PATH", help="write the results there too")
    args = parser.parse_args(argv)
    args.hosts = [int(n) for n in args.hosts.split(",") if n]
    args.latency = [float(ms) for ms in args.latency.split(",") if ms]
    args.jobs = args.jobs or (1000 if args.quick else 5000)
    args.pickup = args.pickup if args.pickup is not None else (100 if args.quick else 300)
    args.budget = args.budget or (240.0 if args.quick else 600.0)
    args.clock_offsets = [offset for offset in args.clock_offsets.split(",") if offset]
    return args


class Bed:
    def __init__(self, args):
        from tests.reliability import cluster as clusters
        from tests.reliability import netns

        self.args = args
        self.clusters, self.netns = clusters, netns
        self.hosts = [netns.Host(index) for index in range(max(args.hosts))]
        self.cluster = None
        self.workers = []
        self.proxies = []
        self.delay = None  # seconds of the delaying proxies (--via-proxy), None: workers connect directly
        self.deadline = time.monotonic() + args.budget

    # --- setup and cleanup ----------------------------------------------------------------------------------

    def setup(self):
        reason = self.netns.unavailable() or self.clusters.PostgresCluster.usable()
        if reason:
            raise SystemExit(f"hosts: cannot run here: {reason}")
        for host in self.hosts:
            host.create()
        self.cluster = self.clusters.PostgresCluster(self.clusters.postgres_bindir()[0])
        self.cluster.init()
        gateways = ",".join(host.gateway for host in self.hosts)
        with open(os.path.join(self.cluster.data, "postgresql.conf"), "a", encoding="utf-8") as conf:
            conf.write(f"listen_addresses = '127.0.0.1,{gateways}'\n")
        with open(os.path.join(self.cluster.data, "pg_hba.conf"), "a", encoding="utf-8") as hba:
            for host in self.hosts:
                hba.write(f"host all all {host.address}/32 trust\n")
        self.cluster.start()
        self.cluster.setup_database()
        from exekutor.db import migrations

        migrations.migrate(self.cluster.url())
        self.db = harness.connect(self.cluster.url())

    def cleanup(self):
        self.stop_workers()
        for host in self.hosts:
            host.destroy()
        if self.cluster is not None:
            self.cluster.destroy()

    # --- links ----------------------------------------------------------------------------------------------

    def shape(self, latency_ms):
        """netem delay (and loss) on both ends of every host's link, or with --via-proxy the proxies' delay; None,
        or why it could not be set."""
        if self.args.via_proxy:
            self.delay = latency_ms / 1000.0
            return None
        for host in self.hosts:
            for device, prefix in ((host.near, ()), (host.far, host.prefix)):
                subprocess.run([*prefix, "tc", "qdisc", "del", "dev", device, "root"], capture_output=True)
                if not latency_ms and not self.args.loss:
                    continue
                result = subprocess.run([*prefix, "tc", "qdisc", "add", "dev", device, "root", "netem", "delay",
                                         f"{latency_ms}ms", "loss", f"{self.args.loss}%"],
                                        capture_output=True, text=True)
                if result.returncode:
                    return result.stderr.strip() or "tc failed"
        return None

    # --- runs -----------------------------------------------------------------------------------------------

    def start_workers(self, count):
        self.workers = []
        for index, host in enumerate(self.hosts[:count]):
            params = psycopg2.extensions.parse_dsn(self.cluster.url())
            url = psycopg2.extensions.make_dsn(**dict(params, host=host.gateway))
            if self.delay is not None:
                from tests.delay_proxy import DelayProxy

                proxy = DelayProxy(host.gateway, "127.0.0.1", self.cluster.port, self.delay).start()
                self.proxies.append(proxy)
                url = psycopg2.extensions.make_dsn(**dict(params, host=host.gateway, port=str(proxy.port)))
            env = {"EXEKUTOR_WORKER_TIMEOUT": str(self.args.worker_timeout),
                   "EXEKUTOR_HEARTBEAT_INTERVAL": str(max(0.5, self.args.worker_timeout / 6)),
                   "EXEKUTOR_CONNECT_TIMEOUT": "3"}
            if index < len(self.args.clock_offsets) and FAKETIME_LIBS:
                env.update(LD_PRELOAD=FAKETIME_LIBS[0], FAKETIME=self.args.clock_offsets[index],
                           FAKETIME_DONT_FAKE_MONOTONIC="1")
            self.workers.append(spawn_on(host, url, env, self.args.threads, f"host{index}"))
        self._wait(lambda: self.db_scalar("SELECT count(*) FROM exekutor_workers WHERE status = 'r'") == count, 60,
                   "every worker to register")

    def stop_workers(self):
        for proc in self.workers:
            harness.stop_process(proc, timeout=10)
        self.workers = []
        for proxy in self.proxies:
            proxy.stop()
        self.proxies = []

    def db_scalar(self, sql, params=None):
        with self.db.cursor() as cursor:
            cursor.execute(sql, params)
            return cursor.fetchone()[0]

    def _wait(self, condition, timeout, what):
        deadline = min(time.monotonic() + timeout, self.deadline)
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"hosts: timed out waiting for {what}")
            time.sleep(0.05)

    def throughput(self, count):
        """No-op jobs per second of `count` workers, one per host; reconciled."""
        from benchmarks import jobs
        from exekutor.enqueue import enqueue_many

        self.db_execute("TRUNCATE exekutor_jobs, exekutor_job_errors")
        self.start_workers(count)
        partition = self.args.partition and count > 1
        try:
            started = self.db_scalar("SELECT extract(epoch FROM clock_timestamp())::float")
            requests = [jobs.sleep.job(self.args.sleep) if self.args.sleep else jobs.noop.job(i)
                        for i in range(self.args.jobs)]
            enqueue_many(requests, connection=self.db)
            cut = None
            if partition:
                at, length = (float(part) for part in self.args.partition.split(":"))
                time.sleep(at)
                self.hosts[count - 1].cut()
                cut = time.monotonic()
                time.sleep(length)
                self.hosts[count - 1].join()
            self._wait(lambda: self.db_scalar("SELECT count(*) FROM exekutor_jobs WHERE status IN ('p', 'e')") == 0,
                       180, f"{self.args.jobs} jobs on {count} host(s) to finish")
            last = self.db_scalar("SELECT extract(epoch FROM max(finished_at))::float FROM exekutor_jobs")
        finally:
            self.stop_workers()
        rows = dict(harness_rows(self.db, "SELECT status || ':' || attempts, count(*) FROM exekutor_jobs GROUP BY 1"))
        return {"hosts": count, "jobs": self.args.jobs, "seconds": round(last - started, 3),
                "jobs_per_second": round(self.args.jobs / (last - started), 1), "outcomes": rows,
                "run_twice": sum(n for key, n in rows.items() if not key.endswith(":1")),
                "partitioned": bool(cut)}

    def pickup(self, count):
        """started_at - scheduled_at (database clock) of jobs enqueued one by one, 20 a second."""
        from benchmarks import jobs
        from exekutor.enqueue import enqueue_many

        self.db_execute("TRUNCATE exekutor_jobs, exekutor_job_errors")
        self.start_workers(count)
        try:
            for i in range(self.args.pickup):
                enqueue_many([jobs.noop.job(i)], connection=self.db)
                time.sleep(0.05)
            self._wait(lambda: self.db_scalar("SELECT count(*) FROM exekutor_jobs WHERE status IN ('p', 'e')") == 0,
                       60, "the pickup jobs to finish")
        finally:
            self.stop_workers()
        delays = sorted(row[0] * 1000 for row in harness_rows(
            self.db, "SELECT extract(epoch FROM started_at - scheduled_at)::float FROM exekutor_jobs"))
        return {"hosts": count, "jobs": len(delays), "p50_ms": round(statistics.median(delays), 1),
                "p99_ms": round(harness.percentile(delays, 0.99), 1)}

    def db_execute(self, sql):
        with self.db.cursor() as cursor:
            cursor.execute(sql)


def spawn_on(host, url, env, threads, name):
    """`exekutor start` in the host's namespace, output to a log file; stopped by PID (harness.stop_process)."""
    log = tempfile.NamedTemporaryFile(prefix=f"exekutor-bench-{name}-", suffix=".log", delete=False)
    proc = subprocess.Popen([*host.prefix, sys.executable, "-m", "exekutor", "start", "--app", "benchmarks.jobs",
                             "--threads", str(threads), "--quiet"], cwd=harness.REPO_ROOT,
                            env=dict(harness.child_env(url), **env), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL)
    log.close()
    proc.log_path = log.name
    harness.register_child(proc)
    return proc


def harness_rows(conn, sql):
    with conn.cursor() as cursor:
        cursor.execute(sql)
        return cursor.fetchall()


def main(argv):
    args = parse_args(argv)
    if os.geteuid() != 0:
        raise SystemExit("hosts: run as root (network namespaces and tc need CAP_NET_ADMIN)")
    bed = Bed(args)

    def interrupted(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, interrupted)
    results = {"machine": harness.machine_info(), "args": vars(args), "throughput": [], "pickup": [],
               "unavailable": {}}
    try:
        bed.setup()
        for latency in args.latency:
            problem = bed.shape(latency)
            if problem:
                results["unavailable"][f"{latency:g}ms"] = problem
                print(f"latency {latency:g} ms: cannot shape the links ({problem}); skipped (--via-proxy sets latency "
                      "with a delaying proxy instead)", flush=True)
                continue
            for count in args.hosts:
                if time.monotonic() > bed.deadline:
                    print("budget spent: stopping here", flush=True)
                    break
                run = dict(bed.throughput(count), latency_ms=latency)
                results["throughput"].append(run)
                via = " (proxy)" if args.via_proxy else ""
                print(f"latency {latency:g} ms{via}, {count} host(s): {run['jobs_per_second']:.0f} jobs/s "
                      f"({run['jobs']} in {run['seconds']:.1f}s); outcomes {run['outcomes']}"
                      f"{' with a partition' if run['partitioned'] else ''}", flush=True)
        shaped = [lat for lat in args.latency if f"{lat:g}ms" not in results["unavailable"]]
        if shaped and args.pickup and time.monotonic() < bed.deadline:
            bed.shape(max(shaped))
            run = dict(bed.pickup(max(args.hosts)), latency_ms=max(shaped))
            results["pickup"].append(run)
            print(f"latency {max(shaped):g} ms, {run['hosts']} host(s): pickup p50 {run['p50_ms']} ms, "
                  f"p99 {run['p99_ms']} ms ({run['jobs']} jobs)", flush=True)
    finally:
        bed.cleanup()
    if args.json:
        harness.dump_json(args.json, results)
    print(json.dumps({"throughput": results["throughput"], "pickup": results["pickup"],
                      "unavailable": results["unavailable"]}, indent=1))
    return 0
