"""The reliability suite's load generator, throughput windows and reconciliation.

Reconciliation compares three records: the tags the load generator saw committed (acknowledged), the job
rows (`exekutor_jobs`, the truth about what was enqueued, including commits whose acknowledgement was lost),
and the executions the jobs recorded themselves (`rel_executions`). It holds when every job has exactly one
final outcome (none left pending or executing), no acknowledged job is missing, no job ran after its outcome was
written, and every job that ran to completion more than once can be explained: its first worker was killed
(at-least-once) or its own connection failed after its work committed (at-least-once). A job that ran to
completion twice while its first worker was alive and its connection fine is a violation.
"""
import collections
import threading
import time

import psycopg2

from exekutor.enqueue import enqueue_many
from tests.conftest import query, scalar, wait_for  # noqa: F401 - the scenarios import them from here
from tests.reliability import jobs

FINAL = ("c", "f", "d")
CONNECTION_ERRORS = ("psycopg2.OperationalError", "psycopg2.InterfaceError")


def log(message):
    print(f"[reliability {time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- load --------------------------------------------------------------------------------------------------


class Load:
    """A steady load of `rel.work` jobs from a thread of the test process, on a connection of its own.

    `backlog=N`: keep about N jobs pending (the workers' capacity sets the throughput; what throughput is
    measured against); `rate=R`: enqueue R jobs per second. Each job gets a unique tag. Database errors are
    survived (reconnect, go on); a batch whose commit failed is "uncertain": it may or may not be in.
    """

    def __init__(self, url, backlog=None, rate=None, prefix="job", batch=200, interval=0.05, **job_kwargs):
        assert (backlog is None) != (rate is None), "give backlog or rate"
        self.url, self.backlog, self.rate, self.prefix = url, backlog, rate, prefix
        self.batch, self.interval, self.job_kwargs = batch, interval, job_kwargs
        self.acknowledged = []
        self.uncertain = []
        self.errors = 0
        self.last_error = None
        self._sequence = 0
        self._stop = threading.Event()
        self._thread = None
        self._conn = None

    def start(self):
        self._started = time.monotonic()
        self._thread = threading.Thread(target=self._loop, name="reliability-load", daemon=True)
        self._thread.start()
        return self

    def stop(self):
        if self._thread is not None:
            self._stop.set()
            self._thread.join(30)
            self._thread = None
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        return self

    @property
    def enqueued(self):
        return len(self.acknowledged)

    def _connection(self):
        if self._conn is None or self._conn.closed:
            self._conn = psycopg2.connect(self.url, connect_timeout=3, application_name="reliability load")
        return self._conn

    def _wanted(self, conn):
        if self.rate is not None:
            due = int((time.monotonic() - self._started) * self.rate) - self._sequence
            return max(0, min(due, self.batch))
        with conn.cursor() as cursor:
            cursor.execute("SELECT count(*) FROM exekutor_jobs WHERE status = 'p' AND scheduled_at <= now()")
            (pending,) = cursor.fetchone()
        conn.commit()
        return max(0, min(self.backlog - pending, self.batch))

    def _loop(self):
        while not self._stop.is_set():
            tags = []
            try:
                conn = self._connection()
                count = self._wanted(conn)
                if count:
                    tags = [f"{self.prefix}-{self._sequence + i}" for i in range(count)]
                    self._sequence += count
                    enqueue_many([jobs.work.job(tag, **self.job_kwargs) for tag in tags], connection=conn)
                    conn.commit()
                    self.acknowledged.extend(tags)
            except psycopg2.Error as error:
                self.errors += 1
                self.last_error = error
                self.uncertain.extend(tags)
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None
                self._stop.wait(0.2)
                continue
            self._stop.wait(self.interval)


def enqueue_work(url, count, prefix, batch=5000, **job_kwargs):
    """Enqueue `count` rel.work jobs at once (in batches); returns their tags."""
    tags = []
    conn = psycopg2.connect(url)
    try:
        for start in range(0, count, batch):
            chunk = [f"{prefix}-{i}" for i in range(start, min(count, start + batch))]
            enqueue_many([jobs.work.job(tag, **job_kwargs) for tag in chunk], connection=conn)
            conn.commit()
            tags.extend(chunk)
    finally:
        conn.close()
    return tags


# --- throughput ---------------------------------------------------------------------------------------------


def executions_between(conn, start, end):
    """Successful executions that finished in [start, end) (epoch seconds)."""
    return scalar(conn, "SELECT count(*) FROM rel_executions WHERE ok AND finished_at >= to_timestamp(%s) "
                        "AND finished_at < to_timestamp(%s)", (start, end))


def measure(conn, seconds, label):
    """Jobs per second finished over the next `seconds` (a measurement window, not a wait)."""
    start = time.time()
    time.sleep(seconds)
    end = time.time()
    # the last executions of the window may still be committing
    time.sleep(0.3)
    rate = executions_between(conn, start, end) / (end - start)
    log(f"throughput {label}: {rate:.1f} jobs/s over {end - start:.1f}s")
    return rate


def unfinished(conn):
    return scalar(conn, "SELECT count(*) FROM exekutor_jobs WHERE status IN ('p', 'e')")


def wait_drained(conn, timeout, message="every job to reach a final outcome"):
    """Wait until no job is pending or executing; returns the seconds it took."""
    started = time.monotonic()
    try:
        wait_for(lambda: unfinished(conn) == 0, timeout, message, interval=0.25)
    except AssertionError as error:
        rows = query(conn, "SELECT status, count(*), min(left(payload::text, 120)), max(attempts) FROM exekutor_jobs "
                           "WHERE status IN ('p', 'e') GROUP BY status")
        raise AssertionError(f"{error}; unfinished (status, count, a payload, max attempts): {rows}") from None
    return time.monotonic() - started


def worker_executed_since(conn, pid, since):
    return scalar(conn, "SELECT count(*) FROM rel_executions WHERE pid = %s AND ok AND started_at >= to_timestamp(%s)",
                  (pid, since))


# --- reconciliation -----------------------------------------------------------------------------------------


class Reconciliation:
    def __init__(self, label):
        self.label = label
        self.counts = collections.OrderedDict()
        self.problems = []

    def __getitem__(self, key):
        return self.counts[key]

    def line(self):
        return f"[{self.label}] " + " ".join(f"{key}={value}" for key, value in self.counts.items())

    def report(self):
        text = self.line()
        if self.problems:
            text += "\n  " + "\n  ".join(self.problems[:20])
        return text

    def check(self, **expected):
        """Assert the invariants (and any expected counts, e.g. failed=0); the message carries every number."""
        bad = [f"{key}: expected {value}, got {self.counts[key]}" for key, value in expected.items()
               if self.counts[key] != value]
        for key in ("left_pending", "left_executing", "missing_acknowledged", "executions_of_unknown_jobs",
                    "executions_after_final", "completed_without_execution", "failed_with_success",
                    "duplicates_while_owner_alive"):
            if self.counts[key]:
                bad.append(f"{key} = {self.counts[key]}, expected 0")
        assert not bad, "reconciliation failed: " + "; ".join(bad) + "\n" + self.report()
        return self


def reconcile(conn, label, load=None, acknowledged=(), killed_pids=(), job="rel.work"):
    """Reconcile the jobs of `job` (name) with their executions; prints and returns the numbers."""
    acknowledged = set(acknowledged) | (set(load.acknowledged) if load else set())
    uncertain = set(load.uncertain) if load else set()
    killed_pids = set(killed_pids)
    rows = query(conn, "SELECT payload->'args'->>0, status, attempts, extract(epoch FROM finished_at), id::text "
                       "FROM exekutor_jobs WHERE payload->>'job' = %s", (job,))
    executions = query(conn, "SELECT tag, pid, ok, extract(epoch FROM started_at), extract(epoch FROM finished_at) "
                             "FROM rel_executions ORDER BY started_at")
    released = {row[0] for row in query(
        conn, "SELECT DISTINCT job_id::text FROM exekutor_job_errors WHERE error->>'type' = ANY(%s)",
        (list(CONNECTION_ERRORS),))}
    by_tag = collections.defaultdict(list)
    for tag, pid, ok, started, finished in executions:
        by_tag[tag].append((pid, ok, float(started), float(finished)))

    result = Reconciliation(label)
    counts, problems = result.counts, result.problems
    status = collections.Counter(row[1] for row in rows)
    tags = {row[0] for row in rows}
    counts["enqueued"] = len(rows)
    counts["acknowledged"] = len(acknowledged)
    counts["uncertain_commits"] = len(uncertain)
    counts["uncertain_in_table"] = len(uncertain & tags)
    counts["completed"], counts["failed"], counts["discarded"] = status["c"], status["f"], status["d"]
    counts["left_pending"], counts["left_executing"] = status["p"], status["e"]
    missing = acknowledged - tags
    counts["missing_acknowledged"] = len(missing)
    if missing:
        problems.append(f"acknowledged but not in exekutor_jobs: {sorted(missing)[:5]}")
    job_executions = [e for tag in tags for e in by_tag.get(tag, ())]
    counts["executions"] = len(job_executions)
    counts["successful_executions"] = sum(1 for e in job_executions if e[1])
    counts["raised_executions"] = sum(1 for e in job_executions if not e[1])
    all_tags = {row[0] for row in query(conn, "SELECT payload->'args'->>0 FROM exekutor_jobs")}
    counts["executions_of_unknown_jobs"] = sum(len(runs) for tag, runs in by_tag.items() if tag not in all_tags)
    after_kill = after_connection_loss = alive = 0
    after_final = completed_without = failed_with = 0
    for tag, state, _attempts, finished, job_id in rows:
        runs = by_tag.get(tag, [])
        ok_runs = [run for run in runs if run[1]]
        if state == "c" and not ok_runs:
            completed_without += 1
            problems.append(f"{tag} ({job_id}) completed without a recorded execution")
        if state == "f" and ok_runs:
            failed_with += 1
            problems.append(f"{tag} ({job_id}) failed although an execution succeeded")
        if state in FINAL and finished is not None:
            late = [run for run in runs if run[2] > float(finished) + 0.001]
            if late:
                after_final += len(late)
                problems.append(f"{tag} ({job_id}) ran after its outcome was written: {late}")
        for previous, run in zip(ok_runs, ok_runs[1:]):
            if previous[0] in killed_pids:
                after_kill += 1
            elif job_id in released:
                after_connection_loss += 1
            else:
                alive += 1
                problems.append(f"{tag} ({job_id}) ran twice while its first worker was alive: {previous} then {run}")
    counts["duplicates"] = after_kill + after_connection_loss + alive
    counts["duplicates_after_worker_kill"] = after_kill
    counts["duplicates_after_connection_loss"] = after_connection_loss
    counts["duplicates_while_owner_alive"] = alive
    counts["executions_after_final"] = after_final
    counts["completed_without_execution"] = completed_without
    counts["failed_with_success"] = failed_with
    log(result.report())
    return result
