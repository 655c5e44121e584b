"""The dashboard's operator tools through Flask's test client: the search, the counts per status, the warnings,
the selected jobs' actions and the folded tracebacks (their browser side is in test_dashboard_operator_browser)."""
import datetime as dt
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from exekutor import config, operations
from tests.conftest import query
from tests.test_dashboard import PREFIX, csrf_token, get, guarded_app, logged_in, make_job, status_of

flask = pytest.importorskip("flask")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def app(database_url):
    return guarded_app()


@pytest.fixture
def client(app):
    return logged_in(app)


def listed(html):
    return re.findall(r'class="id">([0-9a-f-]{36})<', html)


# --- search -------------------------------------------------------------------------------------------------------

def test_search_by_each_field(client, db):
    smtp = make_job(db, job="myapp.jobs:send_receipt", message="SMTP server refused 550")
    other = make_job(db, job="myapp.jobs:resize_100%_image", message="PIL cannot identify", queue="images")
    pending = make_job(db, status="p", job="myapp.jobs:send_receipt", args=("order-1042",))
    query(db, "UPDATE exekutor_jobs SET enqueued_at = now() - interval '3 days', "
              "finished_at = now() - interval '3 days' WHERE id = %s", (other,))

    def found(**params):
        query_string = "&".join(f"{key}={value}" for key, value in params.items())
        return set(listed(get(client, f"/jobs?{query_string}")[1]))

    assert found(prefix=smtp[:8]) == {smtp}
    assert found(prefix=smtp[:13].upper()) == {smtp}  # hyphens and case do not matter
    assert found(name="SEND_receipt") == {smtp, pending}
    assert found(name="100%25_") == {other}  # % and _ are literal, not wildcards
    assert found(name="e%25i") == set() and found(name="_") == {smtp, other, pending}
    assert found(error="smtp") == {smtp} and found(error="RuntimeError") == {smtp, other}
    assert found(queue="images") == {other} and found(status="pending") == {pending}
    old = (dt.datetime.now() - dt.timedelta(days=1)).strftime("%Y-%m-%dT%H:%M")
    assert found(status="failed", to=old) == {other}
    assert found(status="failed", **{"from": old}) == {smtp}
    assert found(args="order-1042") == {smtp, other, pending}  # arguments hidden: not searchable, ignored
    config.configure(dashboard_show_arguments=True)
    assert found(args="ORDER-1042") == {pending}
    assert 'id="filter-args"' in get(client, "/jobs")[1]


def test_search_pages_with_the_cursors_of_jobs_list(client, db):
    ids = {make_job(db, job=f"myapp.jobs:report_{i}") for i in range(60)}
    make_job(db, job="myapp.jobs:other")
    _, html = get(client, "/jobs?status=failed&name=report_")
    cursor = re.search(r'id="next-page" href="[^"]*after=([^&"]+)', html).group(1)
    _, second = get(client, f"/jobs?status=failed&name=report_&after={cursor}")
    assert set(listed(html)) | set(listed(second)) == ids and len(listed(second)) == 10


@pytest.mark.parametrize("params, message", [
    ("prefix=xyz", "invalid id prefix"), ("prefix=" + "a" * 33, "invalid id prefix"),
    ("from=yesterday", "invalid from time"), ("to=0001-01-01T00:00", "invalid to time"),
    ("name=" + "x" * 201, "invalid job_contains"), ("error=%00", "NUL"),
])
def test_a_bad_search_field_is_a_400_that_says_which(client, db, params, message):
    _, html = get(client, f"/jobs?{params}", status=400)
    assert message in html


@settings(max_examples=60, deadline=None)
@given(st.text(max_size=40), st.sampled_from(["prefix", "name", "error", "args", "from", "to", "queue"]))
def test_any_text_in_a_search_field_is_a_page_or_a_400(app, db, value, field):
    config.configure(dashboard_show_arguments=True)
    app.config["TESTING"] = False  # an exception is the 500 a browser would get
    response = logged_in(app).get(PREFIX + "/jobs", query_string={"status": "failed", field: value})
    assert response.status_code in (200, 400), (field, value)


@given(st.sampled_from(["job_contains", "error_contains", "arguments_contain", "id_prefix"]),
       st.sampled_from(["a\x00b", "\ud800", "x\udfffy", ""]))
def test_nul_lone_surrogates_and_empty_text_are_refused_before_the_database(name, value):
    with pytest.raises(operations.OperationError):
        operations.JobFilter(**{name: value})


def test_a_text_search_that_runs_out_of_time_says_how_to_narrow_it(client, db, monkeypatch):
    from exekutor.dashboard import search

    query(db, "INSERT INTO exekutor_jobs (queue, payload, status, finished_at) SELECT 'bulk', "
              "jsonb_build_object('job', 'myapp.jobs:noop', 'args', jsonb_build_array(i)), 'c', now() "
              "FROM generate_series(1, 200000) AS i")
    monkeypatch.setattr(search, "TEXT_SEARCH_MS", 5)
    _, html = get(client, "/jobs?status=completed&args=no-such-argument&name=no-such-name")
    assert 'id="search-stopped"' in html and "stopped after 5 ms" in html and "No jobs." not in html
    assert "data-refresh" not in html  # not run again every few seconds
    _, html = get(client, "/jobs?status=completed")  # the connection it used is fine afterwards
    assert len(listed(html)) == 50 and 'id="search-stopped"' not in html


def test_a_search_is_also_what_a_bulk_action_by_filter_touches(client, db):
    config.configure(dashboard_allow_actions=True)
    smtp = [make_job(db, message="SMTP refused") for _ in range(2)]
    other = make_job(db, message="disk full")
    _, html = get(client, "/jobs?status=failed&error=smtp")
    confirm = re.search(r'id="bulk-retry" href="([^"]+)"', html).group(1).replace("&amp;", "&")
    _, html = get(client, confirm[len(PREFIX):])
    assert "Retry 2 job(s)?" in html and 'with an error containing <strong class="search-field">smtp</strong>' in html
    form = dict(re.findall(r'<input type="hidden" name="([a-z_]+)" value="([^"]*)"', html))
    assert client.post(PREFIX + "/actions/retry", data=form).status_code == 303
    assert [status_of(db, job_id) for job_id in smtp] == ["p", "p"] and status_of(db, other) == "f"


# --- counts per status --------------------------------------------------------------------------------------------

def counts(html):
    return {status: value for status, value in
            re.findall(r'data-status="([a-z]+)"[^>]*>[a-z]+ <span class="value">([~0-9]+)</span>', html)}


def test_the_jobs_page_counts_each_status_with_the_other_fields_and_says_its_window(client, db):
    for status, queue, number in (("p", "mail", 3), ("f", "mail", 2), ("c", "mail", 4), ("d", "mail", 1),
                                  ("f", "other", 5), ("e", "mail", 1)):
        for _ in range(number):
            make_job(db, status=status, queue=queue)
    query(db, "UPDATE exekutor_jobs SET scheduled_at = now() + interval '1 hour' WHERE id = "
              "(SELECT id FROM exekutor_jobs WHERE status = 'p' LIMIT 1)")
    cancelled = make_job(db, status="d", queue="mail")
    query(db, "UPDATE exekutor_jobs SET cancel_requested_at = now() WHERE id = %s", (cancelled,))
    _, html = get(client, "/jobs?queue=mail&status=failed")
    assert counts(html) == {"pending": "3", "scheduled": "1", "executing": "1", "completed": "4", "failed": "2",
                            "discarded": "2", "cancelled": "1"}
    assert "all-time, not a recent window" in html and "Exact up to 1000" in html
    assert counts(get(client, "/jobs")[1])["failed"] == "7"


def test_counts_above_the_exact_limit_or_too_costly_are_estimates_marked(client, db, monkeypatch):
    from exekutor.dashboard import data

    for _ in range(6):
        make_job(db, status="c")
    query(db, "ANALYZE exekutor_jobs")
    monkeypatch.setattr(data, "STATUS_COUNT_EXACT", 4)
    shown = counts(get(client, "/jobs")[1])
    assert shown["completed"].startswith("~") and int(shown["completed"][1:]) >= 5
    assert shown["failed"] == "0"
    monkeypatch.setattr(data, "STATUS_COUNT_MAX_COST", -1)  # every count too costly: nothing is counted
    assert all(value.startswith("~") for value in counts(get(client, "/jobs")[1]).values())


# --- warnings -----------------------------------------------------------------------------------------------------

def add_worker(db, queues, heartbeat_age=0, status="r"):
    query(db, "INSERT INTO exekutor_workers (hostname, pid, identifier, status, queues, min_threads, max_threads, "
              "last_heartbeat_at) VALUES ('app-1', %s, 'w', %s, %s, 1, 10, now() - %s * interval '1 second')",
          (4000 + heartbeat_age, status, queues, heartbeat_age))


def warnings(html):
    return re.findall(r'<p class="warning (alarm|warn)"><strong>([^<]+)</strong>(.*?)</p>', html, re.S)


def test_the_overview_warns_of_unserved_queues_overdue_jobs_late_workers_and_paused_queues(client, db):
    from exekutor import pause_queue

    config.configure(worker_timeout=60, heartbeat_interval=5, polling_interval=10)
    assert warnings(get(client, "/")[1]) == []
    make_job(db, status="p", queue="mail")
    make_job(db, status="p", queue="<script>x</script>")
    make_job(db, status="p", queue="reports")
    query(db, "UPDATE exekutor_jobs SET scheduled_at = now() - interval '5 minutes' WHERE queue = 'reports'")
    add_worker(db, ["mail", "reports"])
    add_worker(db, None, heartbeat_age=20)  # late but alive: it takes every queue
    add_worker(db, ["<script>x</script>"], heartbeat_age=600)  # presumed dead: serves nothing
    pause_queue("paused-one")
    _, html = get(client, "/")
    found = {text: body for _, text, body in warnings(html)}
    kinds = [(kind, text) for kind, text, _ in warnings(html)]
    assert kinds == [("alarm", "Presumed dead (no heartbeat for worker_timeout):"),
                     ("warn", "Due jobs waited longer than polling_interval (10s):"),
                     ("warn", "Late heartbeat (more than twice heartbeat_interval):"),
                     ("warn", "Paused (none of its jobs starts until it is resumed):")]
    assert "reports: 5m 0" in found["Due jobs waited longer than polling_interval (10s):"]
    assert "app-1:4600" in html and "app-1:4020" in html and ">paused-one</a>" in html
    # The late worker takes every queue; once it is gone, the hostile queue has no live worker.
    query(db, "DELETE FROM exekutor_workers WHERE queues IS NULL")
    _, html = get(client, "/")
    unserved = [body for kind, text, body in warnings(html) if text.startswith("No live worker")]
    assert len(unserved) == 1 and "&lt;script&gt;x&lt;/script&gt;" in unserved[0] and "mail" not in unserved[0]
    assert "<script>x" not in html


# --- selected jobs ------------------------------------------------------------------------------------------------

def test_retry_only_the_selected_jobs_after_one_confirmation(client, db):
    config.configure(dashboard_allow_actions=True)
    chosen = [make_job(db) for _ in range(2)]
    left = make_job(db)
    _, html = get(client, "/jobs?status=failed&queue=mail")
    assert html.count('<input type="checkbox" name="id"') == 3 and 'id="selected-retry"' in html
    assert 'id="selected-cancel"' not in html  # nothing on this page can be cancelled
    _, html = get(client, f"/actions/retry?selection=1&status=failed&queue=mail&id={chosen[0]}&id={chosen[1]}")
    assert "Retry 2 job(s)?" in html and set(re.findall(r'name="id" value="([^"]+)"', html)) == set(chosen)
    assert [status_of(db, job_id) for job_id in chosen] == ["f", "f"]  # the GET only asks
    response = client.post(PREFIX + "/actions/retry", data={"id": chosen, "selection": "1", "status": "failed",
                                                              "queue": "mail", "csrf_token": csrf_token(html)})
    assert response.status_code == 303
    assert response.headers["Location"] == f"{PREFIX}/jobs?status=failed&queue=mail&action=retry&done=2"
    assert [status_of(db, job_id) for job_id in chosen] == ["p", "p"] and status_of(db, left) == "f"


def test_a_forged_selection_post_changes_nothing(app, db):
    config.configure(dashboard_allow_actions=True)
    chosen = [make_job(db, status="p") for _ in range(2)]
    client = logged_in(app)
    _, html = get(client, f"/actions/cancel?selection=1&id={chosen[0]}&id={chosen[1]}")
    for form, headers in (({"id": chosen, "selection": "1"}, {}),  # no token
                          ({"id": chosen, "selection": "1", "csrf_token": "0" * 64}, {}),
                          ({"id": chosen, "selection": "1", "csrf_token": csrf_token(html)},
                           {"Origin": "https://evil.example"})):
        assert client.post(PREFIX + "/actions/cancel", data=form, headers=headers).status_code == 403
    assert logged_in(app).post(PREFIX + "/actions/cancel", data={"id": chosen, "csrf_token": csrf_token(html)}
                               ).status_code == 403  # a token without its cookie
    assert [status_of(db, job_id) for job_id in chosen] == ["p", "p"]


def test_a_selection_is_bounded_and_must_name_jobs(client, db):
    config.configure(dashboard_allow_actions=True)
    get(client, "/actions/retry?selection=1&status=failed", status=400)
    many = "&".join(f"id={make_job(db)}" for _ in range(51))
    get(client, f"/actions/retry?selection=1&{many}", status=400)
    get(client, "/actions/retry?selection=1&id=not-a-uuid", status=400)


def test_read_only_lists_have_no_checkboxes(client, db):
    make_job(db)
    _, html = get(client, "/jobs?status=failed")
    assert 'type="checkbox"' not in html and "selected-retry" not in html


# --- tracebacks ---------------------------------------------------------------------------------------------------

OWN_FRAMES = ('Traceback (most recent call last):\n'
              '  File "/srv/venv/lib/python3.12/site-packages/exekutor/execution.py", line 88, in run\n'
              '    result = job(*args)\n'
              '  File "/srv/venv/lib/python3.12/site-packages/exekutor/hooks.py", line 12, in call\n'
              '    return function()\n'
              '  File "/srv/app/myapp/jobs.py", line 8, in send_receipt\n'
              '    smtp.send(order)\n'
              'RuntimeError: SMTP refused <script>alert(1)</script>\n')


def test_exekutors_frames_are_folded_and_repeated_attempts_collapsed(client, db):
    job_id = make_job(db, traceback=OWN_FRAMES)
    for attempt in (2, 3):
        query(db, "INSERT INTO exekutor_job_errors (job_id, attempt, error) SELECT job_id, %s, error "
                  "FROM exekutor_job_errors WHERE job_id = %s AND attempt = 1", (attempt, job_id))
    query(db, "INSERT INTO exekutor_job_errors (job_id, attempt, error) VALUES (%s, 4, "
              "jsonb_build_object('type', 'builtins.KeyError', 'message', 'x', 'traceback', 'plain'))", (job_id,))
    _, html = get(client, f"/jobs/{job_id}")
    assert len(re.findall("<section class=\"error-record\">", html)) == 2 and "Errors (4)" in html
    assert "3 attempts failed the same way" in html and "attempts 1–3" in html
    fold = re.search(r'<details class="frames"><summary>(.*?)</summary><pre class="traceback own">(.*?)</pre>',
                     html, re.S)
    assert fold.group(1) == "2 frame(s) of exekutor" and "execution.py" in fold.group(2)
    assert "hooks.py" in fold.group(2) and "myapp/jobs.py" not in fold.group(2)
    assert "myapp/jobs.py" in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script>alert" not in html


# --- schedules: run now, pause, resume ----------------------------------------------------------------------------

def store_schedule(db, name, job="myapp.jobs:rollup", queue="reports"):
    """A schedule's row as a worker writes it (its definition, and how its jobs are enqueued), last ticked now."""
    import json

    from exekutor.schedules import make_schedule

    definition = {**make_schedule(name, job, every=3600).definition(),
                  "enqueue": {"queue": queue, "priority": 9, "options": None}}
    query(db, "INSERT INTO exekutor_schedules (name, definition, last_tick) VALUES (%s, %s::jsonb, now())",
          (name, json.dumps(definition)))


def test_run_now_pause_and_resume_a_schedule(client, db):
    config.configure(dashboard_allow_actions=True)
    name = "nightly <script>alert(1)</script> \u202e"
    store_schedule(db, name)
    last_tick = query(db, "SELECT last_tick FROM exekutor_schedules")[0][0]
    _, html = get(client, "/schedules")
    assert "&lt;script&gt;" in html and "<script>alert" not in html and "\\u202e" in html
    form = {"schedule": name.encode().hex(), "csrf_token": csrf_token(html)}
    response = client.post(PREFIX + "/schedule-actions/run", data=form)
    assert response.status_code == 303 and "schedule_action=ran" in response.headers["Location"]
    [(job_id, queue, priority)] = query(db, "SELECT id::text, queue, priority FROM exekutor_jobs")
    assert (queue, priority) == ("reports", 9) and job_id in response.headers["Location"]
    assert "Enqueued one job of its schedule now" in get(client, response.headers["Location"][len(PREFIX):])[1]
    assert query(db, "SELECT last_tick FROM exekutor_schedules")[0][0] == last_tick
    _, html = get(client, "/schedules")
    assert f'href="{PREFIX}/jobs/{job_id}"><span class="status status-pending">pending</span>' in html

    response = client.post(PREFIX + "/schedule-actions/pause", data=form)
    assert response.headers["Location"].endswith("/schedules?schedule_action=paused")
    _, html = get(client, "/schedules?schedule_action=paused")
    assert "Paused the schedule" in html and 'data-schedule-action="resume"' in html
    assert "passes without a job" in html
    assert client.post(PREFIX + "/schedule-actions/pause", data=form).headers["Location"].endswith("already-paused")
    assert client.post(PREFIX + "/schedule-actions/resume", data=form).headers["Location"].endswith("=resumed")
    assert query(db, "SELECT paused_at FROM exekutor_schedules")[0][0] is None
    unknown = {**form, "schedule": "nobody".encode().hex()}
    assert client.post(PREFIX + "/schedule-actions/run", data=unknown).headers["Location"].endswith("not-stored")


def test_schedule_actions_are_refused_without_a_token_when_read_only_and_for_bad_names(app, db):
    store_schedule(db, "nightly")
    client = logged_in(app)
    form = {"schedule": "nightly".encode().hex()}
    assert client.post(PREFIX + "/schedule-actions/pause", data=form).status_code == 403  # read-only
    assert 'data-schedule-action' not in get(client, "/schedules")[1]
    config.configure(dashboard_allow_actions=True)
    _, html = get(client, "/schedules")
    for data, headers in ((form, {}), ({**form, "csrf_token": "0" * 64}, {}),
                          ({**form, "csrf_token": csrf_token(html)}, {"Origin": "https://evil.example"})):
        assert client.post(PREFIX + "/schedule-actions/run", data=data, headers=headers).status_code == 403
    for bad in ("zz", "", "00", "ff"):  # not hex, empty, a NUL, not UTF-8
        response = client.post(PREFIX + "/schedule-actions/pause", data={"schedule": bad,
                                                                          "csrf_token": csrf_token(html)})
        assert response.status_code == 400
    assert client.post(PREFIX + "/schedule-actions/explode", data=form).status_code == 404
    assert query(db, "SELECT count(*) FROM exekutor_jobs")[0][0] == 0
    assert query(db, "SELECT paused_at FROM exekutor_schedules")[0][0] is None


# --- pickup latency -----------------------------------------------------------------------------------------------

def test_pickup_latency_percentiles_of_the_hour_per_queue_and_in_all(client, db):
    fast = [make_job(db, status="c", queue="latency") for _ in range(98)]
    slow = [make_job(db, status="f", queue="latency") for _ in range(2)]
    never = make_job(db, status="d", queue="latency")  # cancelled before it started: no latency
    for ids, wait in ((fast, "3 milliseconds"), (slow, "4 seconds")):
        query(db, "UPDATE exekutor_jobs SET scheduled_at = started_at - %s::interval WHERE id = ANY(%s::uuid[])",
              (wait, ids))
    query(db, "UPDATE exekutor_jobs SET started_at = NULL WHERE id = %s", (never,))
    _, html = get(client, "/queues/latency")
    assert re.search(r'id="pickup-latency">p50 ≤ 5 ms · p99 ≤ 5 s<', html)
    _, html = get(client, "/")
    assert '<td class="latency">p50 ≤ 5 ms · p99 ≤ 5 s</td>' in html
    make_job(db, status="c", queue="other")  # no wait at all: below the first edge
    _, html = get(client, "/")
    assert re.search(r'id="pickup-latency">p50 ≤ 5 ms · p99 ≤ 5 s<', html)
    assert '<td class="latency">p50 ≤ 1 ms · p99 ≤ 1 ms</td>' in html
