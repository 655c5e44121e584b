"""Recurring jobs (DESIGN §11): tick computation (cron in a time zone across DST, `every` aligned to the epoch),
config validation, claiming in the database (exactly once, catch-up), and real workers that share a schedule."""
import contextlib
import datetime as dt
import signal
import textwrap
import time
import types

import psycopg2
import pytest

import exekutor
from exekutor import config
from exekutor.errors import ConfigError
from exekutor.schedules import MAX_CATCH_UP, make_schedule, registry
from tests.conftest import query, scalar, wait_for

UTC = dt.timezone.utc


def utc(*args):
    return dt.datetime(*args, tzinfo=UTC)


def ticks(schedule, start, end):
    found, moment = [], start
    while True:
        moment = schedule.next_after(moment)
        if moment > end:
            return found
        found.append(moment)


# --- ticks ------------------------------------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_cron_in_amsterdam_across_both_dst_changes():
    # 2025: CET (+1) until 30 March 02:00, CEST (+2) until 26 October 03:00.
    daily = make_schedule("daily", "j", cron="30 2 * * *", timezone="Europe/Amsterdam")
    assert ticks(daily, utc(2025, 3, 29), utc(2025, 4, 1)) == [
        utc(2025, 3, 29, 1, 30),  # 02:30 CET
        utc(2025, 3, 30, 1, 0),  # 02:30 does not exist: 03:00 CEST, right after the gap (as cron does)
        utc(2025, 3, 31, 0, 30),  # 02:30 CEST
    ]
    assert ticks(daily, utc(2025, 10, 25), utc(2025, 10, 28)) == [
        utc(2025, 10, 25, 0, 30),  # 02:30 CEST
        utc(2025, 10, 26, 0, 30),  # 02:30 exists twice: once, at the first (CEST)
        utc(2025, 10, 27, 1, 30),  # 02:30 CET
    ]
    hourly = make_schedule("hourly", "j", cron="@hourly", timezone="Europe/Amsterdam")
    assert len(ticks(hourly, utc(2025, 10, 25, 22), utc(2025, 10, 26, 23))) == 25  # the long day: every real hour
    assert len(ticks(hourly, utc(2025, 3, 29, 23), utc(2025, 3, 30, 22))) == 23
    weekday = make_schedule("weekday", "j", cron="0 9 * * 1-5", timezone="Europe/Amsterdam")
    assert ticks(weekday, utc(2025, 3, 27), utc(2025, 4, 1)) == [utc(2025, 3, 27, 8), utc(2025, 3, 28, 8),
                                                                  utc(2025, 3, 31, 7)]


@pytest.mark.timeout(10)
def test_cron_day_of_month_or_day_of_week_as_cron_does():
    either = make_schedule("x", "j", cron="0 0 13 * 5")  # both restricted: the 13th OR a Friday
    days = [t.strftime("%a %d") for t in ticks(either, utc(2024, 9, 1), utc(2024, 10, 14))]
    assert days == ["Fri 06", "Fri 13", "Fri 20", "Fri 27", "Fri 04", "Fri 11", "Sun 13"]


@pytest.mark.timeout(10)
def test_latest_and_catch_up_ticks_agree_with_forward_iteration():
    schedule = make_schedule("x", "j", cron="*/20 1-3 * * *", timezone="Europe/Amsterdam", catch_up=True)
    start, end = utc(2025, 10, 24), utc(2025, 10, 28)
    expected = ticks(schedule, start, end)
    due, truncated = schedule.due_ticks(start, end)
    assert due == expected and not truncated
    assert schedule.latest_at(end) == expected[-1]


@pytest.mark.timeout(10)
def test_every_is_aligned_to_the_epoch():
    schedule = make_schedule("x", "j", every="7s")
    for start in (utc(2024, 1, 1, 0, 0, 3), utc(2024, 1, 1, 0, 0, 5, 123456)):
        found = ticks(schedule, start, start + dt.timedelta(minutes=1))
        assert all(int(t.timestamp()) % 7 == 0 and t.microsecond == 0 for t in found)
        assert [b - a for a, b in zip(found, found[1:])] == [dt.timedelta(seconds=7)] * (len(found) - 1)
    assert make_schedule("x", "j", every="1d").next_after(utc(2024, 5, 5, 13)) == utc(2024, 5, 6)


@pytest.mark.timeout(10)
def test_due_ticks_after_downtime():
    last, now = utc(2024, 1, 1, 0, 0), utc(2024, 1, 1, 0, 10, 30)
    assert make_schedule("x", "j", every="1m").due_ticks(last, now) == ([utc(2024, 1, 1, 0, 10)], False)
    catch_up = make_schedule("x", "j", every="1m", catch_up=True)
    assert catch_up.due_ticks(last, now) == ([utc(2024, 1, 1, 0, m) for m in range(1, 11)], False)
    due, truncated = catch_up.due_ticks(last - dt.timedelta(days=30), now)
    assert len(due) == MAX_CATCH_UP and truncated and due[-1] == utc(2024, 1, 1, 0, 10)  # the most recent ones


# --- definitions and validation ---------------------------------------------------------------------------------

@pytest.mark.timeout(10)
def test_periodic_decorator_registers_a_schedule_of_a_job():
    @exekutor.periodic(cron="@daily", timezone="Europe/Amsterdam", args=(1,), name="tests.decorated")
    @exekutor.job(name="tests.recurring.decorated")
    def decorated(n):
        return n

    try:
        schedule = registry.all()["tests.decorated"]
        assert (schedule.job, schedule.cron, schedule.args) == ("tests.recurring.decorated", "0 0 * * *", (1,))
        assert decorated(3) == 3
        with pytest.raises(TypeError, match="above @exekutor.job"):
            exekutor.periodic(every=5)(lambda: None)
        with pytest.raises(ValueError, match="every must be a duration from 1 second to 100 years"):
            exekutor.periodic(every=0.5)(decorated)
    finally:
        registry.remove("tests.decorated")
        exekutor.registry.remove("tests.recurring.decorated")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("entry, problem", [
    ('{job: "a:b", cron: "61 * * * *"}', "schedule 'bad': invalid cron expression '61 * * * *'"),
    ('{job: "a:b", cron: "* * * *"}', "expected 5 fields"),
    ('{job: "a:b", cron: "@daily", timezone: Mars/Base}', "unknown time zone 'Mars/Base'"),
    ('{job: "a:b", every: 500ms}', "every must be a duration from 1 second to 100 years"),
    ('{job: "a:b", every: 5, cron: "@daily"}', "give either cron or every, not both"),
    ('{job: "a:b"}', "give either cron or every, not neither"),
    ('{job: "a:b", every: 5, timezon: UTC}', "unknown key 'timezon' (did you mean 'timezone'?)"),
    ('{job: "a:b", every: 5, args: 7}', "args must be a list"),
])
def test_config_schedules_are_validated_at_load(tmp_path, entry, problem):
    path = tmp_path / "exekutor.yml"
    path.write_text(textwrap.dedent(f"""\
        exekutor:
          polling_interval: 5
          schedules:
            bad: {entry}
        """))
    with pytest.raises(ConfigError) as info:
        config.load([str(path)], environ={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"invalid value for schedules in {path} line 3: ")
    assert problem in message


@pytest.mark.timeout(10)
def test_config_schedules_from_yaml_and_environment(tmp_path):
    path = tmp_path / "exekutor.yml"
    path.write_text('exekutor:\n  schedules:\n    nightly_rollup: {job: "myapp.jobs:rollup", cron: "0 3 * * *", '
                    'timezone: UTC, args: [7]}\n')
    config.load([str(path)], environ={})
    schedule = config.get("schedules")["nightly_rollup"]
    assert (schedule.job, schedule.cron, schedule.args, schedule.source) == ("myapp.jobs:rollup", "0 3 * * *", (7,),
                                                                             "config")
    config.load(environ={"EXEKUTOR_SCHEDULES": '{"often": {"job": "a:b", "every": "90s", "catch_up": true}}'})
    assert config.get("schedules")["often"].every == 90 and config.get("schedules")["often"].catch_up
    assert config.get("enable_scheduler") is True


# --- claiming in the database -----------------------------------------------------------------------------------

@pytest.fixture
def schedules_table(db):
    yield db
    with db.cursor() as cursor:
        cursor.execute("DELETE FROM exekutor_schedules")


def in_process_scheduler(url, schedules):
    """A Scheduler on a stand-in worker (its own autocommit connection), driven by hand with claim_due()."""
    from exekutor.worker.scheduler import Scheduler

    conn = psycopg2.connect(url)
    conn.autocommit = True

    @contextlib.contextmanager
    def database():
        yield conn

    worker = types.SimpleNamespace(provider=types.SimpleNamespace(clock_offset=0.0), db=database, stopping=False)
    scheduler = Scheduler(worker, schedules)
    scheduler._start_schedules()
    return scheduler


@pytest.fixture
def hourly_job():
    definition = exekutor.job(name="tests.recurring.hourly", queue="reports", priority=7)(lambda **kwargs: None)
    yield definition
    exekutor.registry.remove("tests.recurring.hourly")


@pytest.mark.timeout(20)
@pytest.mark.parametrize("catch_up, expected_jobs", [(False, 1), (True, 5)])
def test_catch_up_after_downtime_exactly_once_between_workers(database_url, schedules_table, hourly_job, catch_up,
                                                              expected_jobs):
    db = schedules_table
    schedule = make_schedule("tests.hourly", "tests.recurring.hourly", every="1h", catch_up=catch_up,
                             pass_tick=True)
    first = in_process_scheduler(database_url, {"tests.hourly": schedule})
    assert first.claim_due() == 0  # a new schedule starts at its next tick: nothing now
    latest = schedule.latest_at(dt.datetime.now(UTC))
    # Downtime: the last claimed tick was five hours before the latest one.
    with db.cursor() as cursor:
        cursor.execute("UPDATE exekutor_schedules SET last_tick = %s WHERE name = 'tests.hourly'",
                       (latest - dt.timedelta(hours=5),))
    second = in_process_scheduler(database_url, {"tests.hourly": schedule})  # both read the same last_tick
    first._start_schedules()
    assert second.claim_due() == 1
    first.claim_due()  # too late: its compare-and-set fails, and it inserts nothing
    first.claim_due()
    rows = query(db, "SELECT scheduled_at, queue, priority, payload FROM exekutor_jobs ORDER BY scheduled_at")
    assert len(rows) == expected_jobs
    assert [row[0] for row in rows] == [latest - dt.timedelta(hours=n) for n in range(expected_jobs - 1, -1, -1)]
    assert {(row[1], row[2]) for row in rows} == {("reports", 7)}
    assert rows[-1][3]["schedule"] == {"name": "tests.hourly", "tick": latest.isoformat()}
    assert scalar(db, "SELECT last_tick FROM exekutor_schedules WHERE name = 'tests.hourly'") == latest


# --- real workers -----------------------------------------------------------------------------------------------

@pytest.mark.timeout(60)
def test_three_workers_enqueue_each_tick_exactly_once(start_worker, schedules_table):
    from tests.recurring_app import EVERY_SECOND, TICKS_DDL

    db = schedules_table
    with db.cursor() as cursor:
        cursor.execute(TICKS_DDL)
        cursor.execute("TRUNCATE recurring_ticks")
    args, env = (), {"EXEKUTOR_WORKER_TIMEOUT": "4"}  # the killed worker's job (if any) runs again soon
    # One worker also has a schedule of a job nobody registered: logged once, skipped.
    unknown = {**env, "EXEKUTOR_SCHEDULES": '{"ghost": {"job": "tests.nobody", "every": "2s"}}'}
    apps = ("tests.recurring_app",)
    workers = [start_worker(*args, apps=apps, wait=False, env=unknown if n == 0 else env) for n in range(3)]
    for worker in workers:
        worker.wait_started(db)
    started = time.monotonic()

    def enqueued():
        return scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE payload->'schedule'->>'name' = %s",
                      (EVERY_SECOND,))

    wait_for(lambda: enqueued() >= 4, 20, "the first ticks")
    workers[1].signal(signal.SIGKILL)  # dies, perhaps mid-claim
    wait_for(lambda: enqueued() >= 8, 20, "ticks after the kill")
    workers[2].stop()
    workers.append(start_worker(*args, apps=apps, env=env))  # a restart
    wait_for(lambda: time.monotonic() - started > 15, 30, "15 seconds of ticks", interval=0.5)
    for worker in (workers[0], workers[3]):
        worker.stop()

    ticks_enqueued = [row[0] for row in query(
        db, "SELECT scheduled_at FROM exekutor_jobs WHERE payload->'schedule'->>'name' = %s ORDER BY scheduled_at",
        (EVERY_SECOND,))]
    assert len(ticks_enqueued) >= 12
    assert len(set(ticks_enqueued)) == len(ticks_enqueued), "a tick was enqueued twice"
    gaps = [b - a for a, b in zip(ticks_enqueued, ticks_enqueued[1:])]
    assert set(gaps) == {dt.timedelta(seconds=1)}, f"a tick is missing: {ticks_enqueued}"
    last_tick = scalar(db, "SELECT last_tick FROM exekutor_schedules WHERE name = %s", (EVERY_SECOND,))
    assert last_tick == ticks_enqueued[-1]
    # Every enqueued tick ran (at least once: a job of the killed worker may run again after worker_timeout).
    ran = {row[0] for row in query(db, "SELECT tick FROM recurring_ticks")}
    finished = {row[0] for row in query(db, "SELECT scheduled_at FROM exekutor_jobs WHERE status = 'c'")}
    assert finished <= ran and len(finished) >= len(ticks_enqueued) - 2
    assert workers[0].output().count("'ghost' names job 'tests.nobody'") == 1
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE payload->>'job' = 'tests.nobody'") == 0


# --- pause, resume and run now (the dashboard's Schedules page; migration 0013) ------------------------------------

def schedule_jobs(db, name):
    return query(db, "SELECT id::text, scheduled_at, queue, priority, payload FROM exekutor_jobs "
                     "WHERE payload->'schedule'->>'name' = %s ORDER BY enqueued_at, scheduled_at", (name,))


@pytest.mark.timeout(20)
def test_a_paused_schedule_passes_its_ticks_without_jobs_and_run_now_leaves_the_next_tick(
        database_url, schedules_table, hourly_job):
    from exekutor.schedule_control import pause_schedule, resume_schedule, run_now

    db = schedules_table
    schedule = make_schedule("tests.hourly", "tests.recurring.hourly", every="1h", catch_up=True, pass_tick=True)
    scheduler = in_process_scheduler(database_url, {"tests.hourly": schedule})
    assert run_now(db, "tests.nothing") is None and not pause_schedule(db, "tests.nothing")
    last_tick = scalar(db, "SELECT last_tick FROM exekutor_schedules")

    job_id = run_now(db, "tests.hourly")  # enqueued as a tick would be: the job's queue, priority, the tick
    [(found, _, queue, priority, payload)] = schedule_jobs(db, "tests.hourly")
    assert (found, queue, priority) == (job_id, "reports", 7)
    assert payload["schedule"]["run_now"] is True and set(payload["kwargs"]) == {"tick"}
    assert scalar(db, "SELECT last_tick FROM exekutor_schedules") == last_tick  # the next tick is untouched
    assert scalar(db, "SELECT last_job_id::text FROM exekutor_schedules") == job_id

    assert pause_schedule(db, "tests.hourly") and not pause_schedule(db, "tests.hourly")
    latest = schedule.latest_at(dt.datetime.now(UTC))
    query(db, "UPDATE exekutor_schedules SET last_tick = %s", (latest - dt.timedelta(hours=3),))
    scheduler._start_schedules()
    assert scheduler.claim_due() == 1  # claimed (three ticks with catch_up), but paused: no job
    assert len(schedule_jobs(db, "tests.hourly")) == 1
    assert scalar(db, "SELECT last_tick FROM exekutor_schedules WHERE name = 'tests.hourly'") == latest
    assert scalar(db, "SELECT last_job_id::text FROM exekutor_schedules") == job_id

    assert resume_schedule(db, "tests.hourly") and not resume_schedule(db, "tests.hourly")
    query(db, "UPDATE exekutor_schedules SET last_tick = %s", (latest - dt.timedelta(hours=1),))
    scheduler._start_schedules()
    assert scheduler.claim_due() == 1
    jobs = schedule_jobs(db, "tests.hourly")
    assert [row[1] for row in jobs[1:]] == [latest]  # the one missed tick after the resume, not the paused ones
    assert scalar(db, "SELECT last_job_id::text FROM exekutor_schedules") == jobs[-1][0]


@pytest.mark.timeout(60)
def test_a_worker_honours_a_pause_and_runs_a_schedule_now(start_worker, schedules_table):
    from exekutor.schedule_control import pause_schedule, resume_schedule, run_now
    from tests.recurring_app import EVERY_SECOND, TICKS_DDL

    db = schedules_table
    query(db, TICKS_DDL)
    query(db, "TRUNCATE recurring_ticks")
    worker = start_worker(apps=("tests.recurring_app",))

    def ticks_enqueued():
        return [row[1] for row in schedule_jobs(db, EVERY_SECOND) if "run_now" not in row[4]["schedule"]]

    wait_for(lambda: len(ticks_enqueued()) >= 2, 20, "the first ticks")
    assert pause_schedule(db, EVERY_SECOND)
    paused_at = scalar(db, "SELECT now()")
    wait_for(lambda: scalar(db, "SELECT last_tick FROM exekutor_schedules WHERE name = %s", (EVERY_SECOND,))
             > paused_at + dt.timedelta(seconds=3), 20, "three ticks while paused")
    during = [tick for tick in ticks_enqueued() if tick > paused_at + dt.timedelta(seconds=1)]
    assert during == [], "a paused schedule enqueued a job"
    job_id = run_now(db, EVERY_SECOND)
    wait_for(lambda: scalar(db, "SELECT status FROM exekutor_jobs WHERE id = %s", (job_id,)) == "c", 20,
             "the job run now to complete")
    assert scalar(db, "SELECT count(*) FROM recurring_ticks WHERE tick > %s", (paused_at,)) == 1
    resumed = scalar(db, "SELECT now()")
    assert resume_schedule(db, EVERY_SECOND)
    wait_for(lambda: len([tick for tick in ticks_enqueued() if tick > resumed]) >= 2, 20, "ticks after the resume")
    worker.stop()
    ticks = [tick for tick in ticks_enqueued() if tick > resumed]
    assert set(b - a for a, b in zip(ticks, ticks[1:])) == {dt.timedelta(seconds=1)}
    assert min(ticks) - resumed < dt.timedelta(seconds=2)  # from the next tick on: the pause is not caught up
