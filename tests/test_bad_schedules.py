"""Issue 25 item 2: durations, counts and `every:` are bounded with one-line errors; a schedule that cannot be
computed (a value from code, a row written by hand or by another version) is skipped and reported, and stops
neither the other schedules nor the commands and pages that list it."""
import datetime as dt
import json
import textwrap

import psycopg2.extras
import pytest
from hypothesis import given
from hypothesis import strategies as st

from exekutor import config
from exekutor.errors import ConfigError
from exekutor.schedules import UTC, Schedule, make_schedule
from tests.conftest import query, scalar, wait_for
from tests.test_cli import run_cli

DURATIONS = [name for name, option in config.OPTIONS.items() if option.unit is not None]
COUNTS = [name for name, option in config.OPTIONS.items() if option.kind in (config.INT, config.FLOAT)]
NUMBERS = st.one_of(st.integers(min_value=-(10 ** 450), max_value=10 ** 450), st.floats(),
                    st.sampled_from([10 ** 400, 99999999999 * 86400, 1e300, 3153600000, 3153600001]))
UNITS = st.sampled_from(["", "ms", "s", "m", "h", "d"])
TEXTS = st.one_of(st.builds(lambda n, u: f"{n}{u}", NUMBERS, UNITS), st.text(max_size=20))
VALUES = st.one_of(NUMBERS, TEXTS)


def one_line_error_or_value(name, load):
    """`load()` either refuses with one line naming `name`, or leaves a value within every bound."""
    try:
        load()
    except ConfigError as error:
        message = str(error)
        assert "\n" not in message and name in message and len(message) < 600, message
        return
    value = config.get(name)
    option = config.OPTIONS[name]
    if option.unit is not None and isinstance(value, float):
        seconds = value * {"s": 1, "m": 60}[option.unit]
        assert 0 <= seconds <= config.MAX_DURATION
        dt.datetime.now(UTC) + dt.timedelta(seconds=seconds)  # the arithmetic the worker does cannot overflow


@pytest.fixture(autouse=True)
def fresh_config():
    config.reset()
    yield
    config.reset()


@pytest.mark.timeout(120)
@given(name=st.sampled_from(DURATIONS + COUNTS), value=VALUES, source=st.sampled_from(["code", "env", "yaml"]))
def test_every_duration_and_count_is_bounded_with_a_one_line_error(tmp_path_factory, name, value, source):
    config.reset()
    if source == "code":
        one_line_error_or_value(name, lambda: config.configure(**{name: value}))
    elif source == "env":
        one_line_error_or_value(name, lambda: config.load(environ={config.OPTIONS[name].env_var: str(value)}))
    else:
        path = tmp_path_factory.mktemp("yaml") / "exekutor.yml"
        path.write_text(f"exekutor:\n  {name}: {json.dumps(value) if isinstance(value, str) else value}\n")
        one_line_error_or_value(name, lambda: config.load([str(path)], environ={}))


def test_a_400_digit_integer_in_a_config_file_is_one_line(tmp_path):
    path = tmp_path / "exekutor.yml"
    path.write_text(f"exekutor:\n  polling_interval: {'9' * 400}\n")
    with pytest.raises(ConfigError, match=r"^invalid value for polling_interval in .* at most 100 years"):
        config.load([str(path)], environ={})


EVERY = st.one_of(NUMBERS, TEXTS, st.timedeltas())


@pytest.mark.timeout(120)
@given(every=EVERY, catch_up=st.booleans(), moment=st.datetimes(min_value=dt.datetime(1971, 1, 1),
                                                                max_value=dt.datetime(2200, 1, 1)))
def test_every_is_refused_in_one_line_or_computable(every, catch_up, moment):
    config.reset()
    entry = {"job": "a:b", "every": every, "catch_up": catch_up}
    try:
        config.configure(schedules={"s": entry})
    except ConfigError as error:
        assert "\n" not in str(error) and str(error).startswith("invalid value for schedules in code: schedule 's'")
        return
    schedule, now = config.get("schedules")["s"], moment.replace(tzinfo=UTC)
    assert schedule.next_after(now) > now >= schedule.latest_at(now)
    schedule.due_ticks(now - dt.timedelta(days=3650), now, limit=3)


def test_a_schedule_object_from_code_is_validated_too():
    with pytest.raises(ConfigError, match="every must be a duration from 1 second to 100 years"):
        config.configure(schedules={"huge": Schedule("huge", "a:b", every=1e300)})


# --- stored rows ------------------------------------------------------------------------------------------------

GOOD = make_schedule("tests.good", "tests.recurring.record_tick", every=60)
BAD_ROWS = {  # name: (definition, last_tick)
    "bad.every": ({"job": "tests.recurring.record_tick", "every": 1e300}, None),
    "bad.scalar": ("a JSON string", None),
    "bad.list": ([1, 2], None),
    "bad.job": ({"job": 7, "every": 60}, None),
    "bad.zone": ({"job": "tests.recurring.record_tick", "cron": "@daily", "timezone": "../../etc/passwd"}, None),
    "bad.tick": ({"job": "tests.recurring.record_tick", "every": 3600}, "9999-12-31 23:00+00"),
    "ghost": ({"job": "tests.nobody", "every": 60}, None),
}
TOLERATED = {  # last ticks Python cannot hold: listed as never run
    "odd.infinity": ({"job": "tests.recurring.record_tick", "every": 3600}, "infinity"),
    "odd.far": ({"job": "tests.recurring.record_tick", "every": 3600}, "294276-01-01 00:00+00"),
}


@pytest.fixture
def bad_rows(db):
    rows = {**BAD_ROWS, **TOLERATED, GOOD.name: (GOOD.definition(), None)}
    for name, (definition, tick) in rows.items():
        query(db, "INSERT INTO exekutor_schedules (name, definition, last_tick) VALUES (%s, %s, %s)",
              (name, psycopg2.extras.Json(definition), tick))
    yield db
    query(db, "DELETE FROM exekutor_schedules")


@pytest.mark.timeout(60)
def test_the_listings_survive_any_stored_row_and_say_why(bad_rows):
    listing = run_cli("schedules", "--app", "tests.recurring_app")
    assert listing.returncode == 0, listing.stderr
    for name in BAD_ROWS:
        assert f"warning: schedule {name}: " in listing.stdout, (name, listing.stdout)
    assert "'tests.nobody' is not registered" in listing.stdout
    for name in (GOOD.name, *TOLERATED):
        assert f"warning: schedule {name}" not in listing.stdout and name in listing.stdout
    listed = run_cli("schedules", "--json", "--app", "tests.recurring_app").stdout
    entries = {entry["name"]: entry for entry in json.loads(listed)["schedules"]}
    assert all(entries[name]["problem"] for name in BAD_ROWS)
    assert entries[GOOD.name]["problem"] is None and entries[GOOD.name]["next_run"]
    assert "every must be a duration from 1 second to 100 years" in entries["bad.every"]["problem"]
    assert "not a JSON object" in entries["bad.scalar"]["problem"] and entries["bad.job"]["job"] is None
    assert "OverflowError" in entries["bad.tick"]["problem"]
    info = run_cli("info")
    assert info.returncode == 0 and "warning: schedule bad.every" in info.stdout, info.stderr
    assert json.loads(run_cli("info", "--json").stdout)["schedules"]


@pytest.mark.timeout(60)
def test_the_dashboard_schedules_page_survives_any_stored_row(bad_rows, database_url):
    flask = pytest.importorskip("flask")
    from exekutor.dashboard import blueprint

    app = flask.Flask(__name__)
    app.register_blueprint(blueprint, url_prefix="/jobs")
    response = app.test_client().get("/jobs/schedules")
    html = response.get_data(as_text=True)
    assert response.status_code == 200, html
    assert "every must be a duration from 1 second to 100 years" in html and "not a JSON object" in html


@pytest.mark.timeout(90)
def test_a_worker_runs_its_good_schedule_beside_one_that_cannot_be_computed(start_worker, db):
    from tests.recurring_app import EVERY_SECOND, TICKS_DDL

    query(db, TICKS_DDL)
    # A row of this worker's own schedule, its last tick edited by hand: the next one is past datetime's range.
    query(db, "INSERT INTO exekutor_schedules (name, definition, last_tick) "
              "VALUES ('far', '{}', '9999-12-31 23:00+00')")
    far = '{"far": {"job": "tests.recurring.record_tick", "every": "1h", "pass_tick": true}}'
    try:
        worker = start_worker(apps=("tests.recurring_app",), env={"EXEKUTOR_SCHEDULES": far})
        wait_for(lambda: scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE payload->'schedule'->>'name' = %s",
                                (EVERY_SECOND,)) >= 3, 30, "the good schedule's ticks")
        wait_for(lambda: "schedule 'far' cannot be computed" in worker.output(), 10, "the skipped schedule's log")
        worker.stop()
        assert worker.output().count("schedule 'far' cannot be computed") == 1
        assert "exekutor scheduler error" not in worker.output()
    finally:
        query(db, "DELETE FROM exekutor_schedules")
        query(db, "DROP TABLE IF EXISTS recurring_ticks")


@pytest.mark.timeout(30)
def test_a_config_file_with_a_huge_every_is_one_line(tmp_path):
    path = tmp_path / "exekutor.yml"
    path.write_text(textwrap.dedent("""\
        exekutor:
          schedules:
            huge: {job: "a:b", every: 99999999999d}
        """))
    result = run_cli("schedules", "--configfile", path)
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "schedule 'huge': every must be a duration from 1 second to 100 years" in result.stderr
