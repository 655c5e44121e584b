"""The dashboard in a real headless Chromium (Selenium), against `exekutor-gevent dashboard` as a real process.

One server and one browser per module (a few seconds each test). Every page is visited and photographed (PNG files
in $EXEKUTOR_TEST_ARTIFACTS, default tests/artifacts/, which CI keeps); a failed job is retried and a pending one
cancelled by clicking, and the database is checked; hostile text stays text: no alert, no console error, no CSP
violation, also after the live refresh swapped the page's content.
"""
import base64
import json
import os
import shutil
import tempfile
import time

import pytest

from tests.conftest import ROOT, query, wait_for
from tests.test_dashboard import HOSTILE, INVISIBLE, hidden_characters, make_invisible_job, make_job, status_of
from tests.test_dashboard_standalone import standalone

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
if not os.path.exists(CHROMIUM):
    pytest.skip(f"{CHROMIUM} is missing (Debian packages chromium and chromium-driver; .ci/run installs them)",
                allow_module_level=True)
pytest.importorskip("flask")
webdriver = pytest.importorskip("selenium.webdriver")
from selenium.common.exceptions import NoAlertPresentException  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402

pytestmark = pytest.mark.timeout(90)
ARTIFACTS = os.environ.get("EXEKUTOR_TEST_ARTIFACTS") or os.path.join(ROOT, "tests", "artifacts")


@pytest.fixture(scope="module")
def server(database_url):
    """`exekutor-gevent dashboard --allow-actions --show-arguments` on a free loopback port, also answering
    jobs.test; its base URL."""
    with standalone(database_url, "--allow-actions", "--show-arguments", "--allowed-host", "jobs.test") as dashboard:
        yield dashboard.base


@pytest.fixture(scope="module")
def browser():
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="exekutor-chromium-")
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--window-size=1360,900", f"--user-data-dir={profile}",
                 "--host-resolver-rules=MAP *.test 127.0.0.1"):  # names that resolve to loopback, as rebinding does
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(20)
    os.makedirs(ARTIFACTS, exist_ok=True)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def visit(browser, server, path, shot=None):
    browser.get(server + path)
    assert_nothing_ran(browser)
    if shot:
        save(browser, shot)


def save(browser, name):
    """A screenshot of the whole page, beyond the window, in the artifacts directory."""
    # The window's width at least: the capture lays the page out without its scrollbar, at the window's width.
    width, height = browser.execute_script(
        "return [Math.max(document.documentElement.scrollWidth, window.innerWidth), "
        "document.documentElement.scrollHeight]")
    shot = browser.execute_cdp_cmd("Page.captureScreenshot", {
        "format": "png", "captureBeyondViewport": True,
        "clip": {"x": 0, "y": 0, "width": width, "height": min(height, 6000), "scale": 1}})
    with open(os.path.join(ARTIFACTS, f"dashboard-{name}.png"), "wb") as f:
        f.write(base64.b64decode(shot["data"]))


def assert_nothing_ran(browser):
    """No alert is open, and the console has no error (a blocked inline script is a CSP error there)."""
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.text  # noqa: B018 - reading it is what raises
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors


def rows(browser):
    return browser.find_elements(By.CSS_SELECTOR, "table.jobs tbody tr")


# --- pages --------------------------------------------------------------------------------------------------------

def test_every_page_renders_cleanly(browser, server, db):
    failed = make_job(db, message="SMTP server refused the connection for order 1042")
    for _ in range(3):
        make_job(db, status="p", queue="default", job="myapp.jobs:resize_image")
    for _ in range(6):
        make_job(db, status="c", queue="mail")
    make_job(db, status="d", queue="reports", job="myapp.jobs:rollup", message="queue_timeout passed")
    query(db, "INSERT INTO exekutor_workers (hostname, pid, identifier, status, queues, min_threads, max_threads) "
              "VALUES ('app-1', 4242, 'mailer', 'r', ARRAY['mail', 'default'], 1, 100)")
    for path, name in (("/", "overview"), ("/queues/mail", "queue"), ("/workers", "workers"), ("/jobs", "jobs"),
                       (f"/jobs/{failed}", "job"), ("/schedules", "schedules")):
        visit(browser, server, path, shot=name)
        assert browser.find_element(By.CSS_SELECTOR, "header.top .brand").text == "exekutor"
    visit(browser, server, "/workers")
    assert "app-1" in browser.find_element(By.TAG_NAME, "main").text
    visit(browser, server, f"/jobs/{failed}")
    assert "SMTP server refused the connection" in browser.find_element(By.CSS_SELECTOR, ".error-record").text


def test_filter_and_paginate(browser, server, db):
    for _ in range(60):
        make_job(db, queue="mail")
    for _ in range(5):
        make_job(db, queue="other")
    visit(browser, server, "/jobs")
    Select(browser.find_element(By.ID, "filter-status")).select_by_value("failed")
    browser.find_element(By.ID, "filter-queue").send_keys("mail")
    browser.find_element(By.ID, "filter-submit").click()
    wait_for(lambda: "status=failed" in browser.current_url, 10, "the filtered page")
    assert len(rows(browser)) == 50
    browser.find_element(By.ID, "next-page").click()
    wait_for(lambda: "after=" in browser.current_url, 10, "the second page")
    assert len(rows(browser)) == 10 and not browser.find_elements(By.ID, "next-page")
    assert all(row.find_element(By.CSS_SELECTOR, "td.queue").text == "mail" for row in rows(browser))
    browser.find_element(By.ID, "first-page").click()
    wait_for(lambda: "after=" not in browser.current_url, 10, "the first page again")
    assert_nothing_ran(browser)


# --- actions --------------------------------------------------------------------------------------------------------

def test_retry_a_failed_job_by_clicking(browser, server, db):
    job_id = make_job(db)
    visit(browser, server, f"/jobs/{job_id}")
    browser.find_element(By.ID, "retry").click()
    wait_for(lambda: browser.find_elements(By.ID, "confirm"), 10, "the confirmation")
    save(browser, "confirm")
    assert status_of(db, job_id) == "f"  # asking changed nothing
    browser.find_element(By.ID, "confirm").click()
    notice = wait_for(lambda: browser.find_elements(By.ID, "notice"), 10, "the notice")[0]
    assert notice.text == "Retried 1 job(s)."
    assert status_of(db, job_id) == "p"
    assert_nothing_ran(browser)


def test_cancel_a_pending_job_by_clicking(browser, server, db):
    job_id = make_job(db, status="p")
    visit(browser, server, f"/jobs/{job_id}")
    browser.find_element(By.ID, "cancel").click()
    wait_for(lambda: browser.find_elements(By.ID, "confirm"), 10, "the confirmation")
    browser.find_element(By.ID, "confirm").click()
    wait_for(lambda: browser.find_elements(By.ID, "notice"), 10, "the notice")
    assert status_of(db, job_id) == "d"
    assert "cancelled" in browser.find_element(By.CSS_SELECTOR, "h1 .status").text
    assert_nothing_ran(browser)


def test_an_allowed_host_name_works_with_actions_and_a_rebound_one_gets_nothing(browser, server, db):
    job_id = make_job(db, queue="payroll-queue")
    port = server.rpartition(":")[2]
    browser.get(f"http://rebind.test:{port}/jobs/{job_id}")
    browser.get_log("browser")  # drained: its stylesheet, refused too, is an expected console error
    assert "400" in browser.find_element(By.TAG_NAME, "h1").text
    assert "payroll-queue" not in browser.page_source and not browser.find_elements(By.ID, "retry")
    visit(browser, f"http://jobs.test:{port}", f"/jobs/{job_id}")
    browser.find_element(By.ID, "retry").click()
    wait_for(lambda: browser.find_elements(By.ID, "confirm"), 10, "the confirmation")
    browser.find_element(By.ID, "confirm").click()
    notice = wait_for(lambda: browser.find_elements(By.ID, "notice"), 10, "the notice")[0]
    assert notice.text == "Retried 1 job(s)." and browser.current_url.startswith(f"http://jobs.test:{port}/")
    assert status_of(db, job_id) == "p"


# --- hostile text -------------------------------------------------------------------------------------------------

def test_hostile_text_is_shown_literally_and_nothing_runs(browser, server, db):
    hostile = " ".join(HOSTILE) + " javascript:alert(1)"
    visit(browser, server, "/jobs?status=failed")
    started = time.monotonic()
    # Made after the page loaded: it arrives through the live refresh (innerHTML), the riskier path.
    job_id = make_job(db, queue="<script>alert(1)</script>", job=hostile, message=hostile, traceback=hostile)
    wait_for(lambda: len(rows(browser)) == 1, 15, "the live refresh to show the job")
    assert time.monotonic() - started < 15
    assert hostile in browser.find_element(By.CSS_SELECTOR, "table.jobs a.job-link").text
    assert_nothing_ran(browser)
    for path in ("/", f"/jobs/{job_id}", "/queues/%3Cscript%3Ealert(1)%3C%2Fscript%3E"):
        visit(browser, server, path)
        assert "<script>alert(1)</script>" in browser.find_element(By.TAG_NAME, "main").text
        for link in browser.find_elements(By.TAG_NAME, "a"):
            assert not (link.get_attribute("href") or "").lower().startswith("javascript:")
    visit(browser, server, f"/jobs/{job_id}", shot="hostile")
    traceback = browser.find_element(By.CSS_SELECTOR, "pre.traceback").text
    assert traceback == hostile
    assert not browser.find_elements(By.CSS_SELECTOR, "main script, main img")


def test_invisible_characters_are_shown_as_escapes(browser, server, db):
    """`gnp\u202e.exe` must not read `exe.png`: no bidi control or zero-width character reaches the visible text of
    the job page (type, message, traceback, options, arguments) or the schedules page; their escapes do."""
    from exekutor.schedules import make_schedule

    job_id = make_invisible_job(db)
    schedule = make_schedule("gnp\u202e.exe" + INVISIBLE, "tests.noop", every=60)
    query(db, "INSERT INTO exekutor_schedules (name, definition) VALUES (%s, %s::jsonb)",
          (schedule.name, json.dumps(schedule.definition())))
    try:
        visit(browser, server, f"/jobs/{job_id}", shot="invisible")
        text = browser.find_element(By.TAG_NAME, "main").text
        assert not hidden_characters(text), hidden_characters(text)
        for selector in ("h1 .name", ".error-record .type", ".error-message", "pre.traceback", "#arguments",
                         "dl.fields pre"):
            assert "gnp\\u202e.exe" in browser.find_element(By.CSS_SELECTOR, selector).text, selector
        assert "\\u200b\\u200c\\u200d\\u2060\\ufeff" in text and "\\u061c" in text and "\\u2066" in text
        # textContent: Selenium's .text turns the tab into a space; a <pre> shows it as it is.
        traceback = browser.find_element(By.CSS_SELECTOR, "pre.traceback").get_attribute("textContent").split("\n")
        assert traceback[:2] == ["Traceback:", "\tFile gnp\\u202e.exe " + INVISIBLE.encode("unicode_escape").decode()]
        visit(browser, server, "/schedules", shot="invisible-schedules")
        text = browser.find_element(By.TAG_NAME, "main").text
        assert not hidden_characters(text) and "gnp\\u202e.exe\\u200e" in text
    finally:
        query(db, "DELETE FROM exekutor_schedules")


# --- flow control: paused queues, limits, held-back jobs, Pause/Resume ------------------------------------------

FLOW_QUEUE = 'mail "eu" 100% ü'  # a quote, a %, spaces and a non-ASCII letter


def flow_jobs(db):
    """A queue paused with a held-back job, a limited one with jobs held back by a job's concurrency limit, a free
    one; the held-back job's id."""
    from exekutor import pause_queue, queue_control

    held = make_job(db, status="p", queue=FLOW_QUEUE, job="myapp.jobs:send_receipt")
    query(db, "UPDATE exekutor_jobs SET blocked_on = %s WHERE id = %s", (f"paused queue {FLOW_QUEUE}", held))
    for i in range(5):
        job_id = make_job(db, status="p", queue="imports", job="myapp.jobs:import_feed")
        if i < 3:
            query(db, "UPDATE exekutor_jobs SET blocked_on = 'concurrency job myapp.jobs:import_feed:acme' "
                      "WHERE id = %s", (job_id,))
    for _ in range(2):
        make_job(db, status="p", queue="default", job="myapp.jobs:resize_image")
    pause_queue(FLOW_QUEUE)
    with db.cursor() as cursor:
        queue_control.publish_queue_limits(cursor, {"imports": {"concurrency": 5, "rate_limit": "100/m"}})
    return held


def queue_row(browser, name):
    for row in browser.find_elements(By.CSS_SELECTOR, "table.queues tbody tr"):
        if row.find_element(By.CSS_SELECTOR, "td a").text == name:
            return row
    raise AssertionError(f"no row of queue {name!r}")


def paused_names(db):
    return [row[0] for row in query(db, "SELECT name FROM exekutor_queues WHERE paused_at IS NOT NULL ORDER BY 1")]


def test_pause_and_resume_a_queue_by_clicking_and_see_why_jobs_wait(browser, server, db):
    held = flow_jobs(db)
    visit(browser, server, "/queues", shot="queues-flow")
    row = queue_row(browser, FLOW_QUEUE)
    assert "paused" in row.find_element(By.CSS_SELECTOR, "td.flow").text
    assert "1 paused" in row.text
    imports = queue_row(browser, "imports")
    assert "concurrency 5" in imports.text and "rate 100/m" in imports.text and "3 concurrency" in imports.text

    queue_row(browser, "default").find_element(By.CSS_SELECTOR, "button[data-queue-action=pause]").click()
    notice = wait_for(lambda: browser.find_elements(By.ID, "notice"), 10, "the notice")[0]
    assert notice.text.startswith("Paused this queue")
    assert paused_names(db) == ["default", FLOW_QUEUE]
    assert browser.find_element(By.ID, "paused-note").text.startswith("Paused since")
    save(browser, "queue-paused")
    assert_nothing_ran(browser)

    visit(browser, server, "/queues")
    queue_row(browser, FLOW_QUEUE).find_element(By.CSS_SELECTOR, "button[data-queue-action=resume]").click()
    notice = wait_for(lambda: browser.find_elements(By.ID, "notice"), 10, "the notice")[0]
    assert notice.text == "Resumed this queue: its held-back jobs start again."
    assert paused_names(db) == ["default"]
    assert browser.find_element(By.CSS_SELECTOR, "h1 .name").text == FLOW_QUEUE
    assert browser.find_elements(By.ID, "paused-note") == []
    assert browser.find_element(By.CSS_SELECTOR, "button[data-queue-action=pause]")
    assert_nothing_ran(browser)

    # The resume let the held-back job go (it waits for nothing now); the limited ones still say why they wait.
    visit(browser, server, f"/jobs/{held}")
    assert browser.find_elements(By.ID, "waiting") == []
    visit(browser, server, "/jobs?status=pending&queue=imports", shot="jobs-waiting")
    waiting = [element.text for element in browser.find_elements(By.CSS_SELECTOR, "table.jobs .waiting")]
    assert waiting == ["concurrency limit of job myapp.jobs:import_feed:acme"] * 3
    first = browser.find_element(By.CSS_SELECTOR, "table.jobs tbody tr .job-link").get_attribute("href")
    browser.get(first)
    assert browser.find_element(By.ID, "waiting").text == "concurrency limit of job myapp.jobs:import_feed:acme"
    save(browser, "job-waiting")


@pytest.fixture(scope="module")
def readonly_server(database_url):
    with standalone(database_url) as dashboard:
        yield dashboard.base


def test_read_only_has_no_pause_button_and_refuses_a_forged_post(browser, readonly_server, db):
    flow_jobs(db)
    for path in ("/", "/queues", "/queues/imports"):
        visit(browser, readonly_server, path)
        assert browser.find_elements(By.CSS_SELECTOR, "form, button, .queue-action") == []
    visit(browser, readonly_server, "/queues", shot="queues-flow-readonly")
    assert "paused" in queue_row(browser, FLOW_QUEUE).text
    # A POST from the dashboard's own origin (so only the read-only mode can refuse it): 403, nothing changes.
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        fetch('/queue-actions/resume', {method: 'POST', body: new URLSearchParams({queue: arguments[0]})})
            .then(response => done(response.status), error => done(String(error)));
    """, FLOW_QUEUE.encode().hex())
    assert status == 403
    assert paused_names(db) == [FLOW_QUEUE]
    browser.get_log("browser")  # drained: the refused POST is an expected console error


# --- the operator's tools: warnings, search and counts, selections, tracebacks, narrow screens -------------------

def add_worker(db, queues, heartbeat_age=0, pid=4242):
    query(db, "INSERT INTO exekutor_workers (hostname, pid, identifier, status, queues, min_threads, max_threads, "
              "last_heartbeat_at) VALUES ('app-1', %s, 'w', 'r', %s, 1, 10, now() - %s * interval '1 second')",
          (pid, queues, heartbeat_age))


def warning_jobs(db):
    """A queue with an overdue job that a worker takes, a hostile one that no live worker takes, a paused one, a
    late worker and a dead one."""
    from exekutor import pause_queue

    make_job(db, status="p", queue="reports", job="myapp.jobs:rollup")
    query(db, "UPDATE exekutor_jobs SET scheduled_at = now() - interval '7 minutes' WHERE queue = 'reports'")
    make_job(db, status="p", queue="<script>alert(1)</script>")
    make_job(db, status="f", queue="mail", message="SMTP refused")
    add_worker(db, ["reports", "mail"])
    add_worker(db, ["mail"], heartbeat_age=40, pid=4343)
    add_worker(db, ["<script>alert(1)</script>"], heartbeat_age=3600, pid=4444)
    pause_queue("newsletters")


def test_warnings_are_at_the_top_of_the_overview(browser, server, db):
    warning_jobs(db)
    visit(browser, server, "/", shot="warnings")
    warnings = browser.find_elements(By.CSS_SELECTOR, "#warnings .warning")
    texts = [warning.text for warning in warnings]
    assert texts[0] == "No live worker takes these queues, which have due jobs: <script>alert(1)</script>"
    assert texts[1] == "Presumed dead (no heartbeat for worker_timeout): app-1:4444"
    assert texts[2].startswith("Due jobs waited longer than polling_interval (1m 00s): reports: 7m")
    assert texts[3] == "Late heartbeat (more than twice heartbeat_interval): app-1:4343"
    assert texts[4] == "Paused (none of its jobs starts until it is resumed): newsletters"
    first_card = browser.find_element(By.CSS_SELECTOR, "section.cards")
    assert warnings[-1].location["y"] < first_card.location["y"]  # above everything else
    assert [warning.get_attribute("class") for warning in warnings] == ["warning alarm"] * 2 + ["warning warn"] * 3
    browser.find_element(By.LINK_TEXT, "newsletters").click()
    wait_for(lambda: browser.find_elements(By.ID, "paused-note"), 10, "the paused queue's page")
    assert_nothing_ran(browser)


def status_counts(browser):
    return {link.get_attribute("data-status"): link.find_element(By.CSS_SELECTOR, ".value").text
            for link in browser.find_elements(By.CSS_SELECTOR, "#status-counts a[data-status]")}


def test_search_a_failing_job_and_see_the_counts_per_status(browser, server, db):
    wanted = make_job(db, job="myapp.jobs:send_receipt", message="SMTP 550 mailbox unavailable", args=("order-77",))
    for _ in range(3):
        make_job(db, job="myapp.jobs:send_receipt", message="timeout")
    make_job(db, status="p", job="myapp.jobs:send_receipt")
    make_job(db, status="c", job="myapp.jobs:resize_image")
    visit(browser, server, "/jobs")
    browser.find_element(By.ID, "filter-name").send_keys("SEND_RECEIPT")
    browser.find_element(By.ID, "filter-submit").click()
    wait_for(lambda: "name=SEND_RECEIPT" in browser.current_url, 10, "the search")
    assert status_counts(browser) == {"pending": "1", "scheduled": "0", "executing": "0", "completed": "0",
                                      "failed": "4", "discarded": "0", "cancelled": "0"}
    assert "all-time" in browser.find_element(By.ID, "counts-window").text
    browser.find_element(By.CSS_SELECTOR, "#status-counts a[data-status=failed]").click()
    wait_for(lambda: "status=failed" in browser.current_url, 10, "the failed ones")
    assert len(rows(browser)) == 4
    browser.find_element(By.ID, "filter-error").send_keys("mailbox")
    browser.find_element(By.ID, "filter-args").send_keys("order-77")
    browser.find_element(By.ID, "filter-submit").click()
    wait_for(lambda: "error=mailbox" in browser.current_url, 10, "the narrower search")
    assert [row.find_element(By.CSS_SELECTOR, ".id").text for row in rows(browser)] == [wanted]
    save(browser, "search")
    browser.find_element(By.ID, "filter-prefix").send_keys("zz")
    browser.find_element(By.ID, "filter-submit").click()
    wait_for(lambda: browser.find_elements(By.ID, "search-error"), 10, "the refusal")
    assert "invalid id prefix" in browser.find_element(By.ID, "search-error").text
    browser.get_log("browser")  # drained: the page's own 400 is an expected console error
    assert browser.find_element(By.ID, "live-state").text == ""  # a refused search is not refreshed


def test_a_hostile_search_stays_text(browser, server, db):
    make_job(db, queue="<script>alert(1)</script>", message="<img src=x onerror=alert(1)>")
    visit(browser, server, "/jobs?error=%3Cimg&name=%3Cscript%3E%22%27")
    assert browser.find_element(By.ID, "filter-error").get_attribute("value") == "<img"
    assert browser.find_element(By.ID, "filter-name").get_attribute("value") == "<script>\"'"
    visit(browser, server, "/jobs?error=%3Cimg")
    assert "<img src=x onerror=alert(1)>" in rows(browser)[0].text
    assert not browser.find_elements(By.CSS_SELECTOR, "main img, main script")
    assert_nothing_ran(browser)


def test_select_jobs_and_retry_only_those_with_the_keyboard(browser, server, db):
    from selenium.webdriver.common.keys import Keys

    jobs = [make_job(db, queue="billing") for _ in range(3)]
    visit(browser, server, "/jobs?status=failed&queue=billing")
    boxes = browser.find_elements(By.CSS_SELECTOR, "table.jobs input.pick")
    assert len(boxes) == 3 and not browser.find_elements(By.ID, "selected-cancel")
    chosen = [box.get_attribute("value") for box in boxes[:2]]

    def tab_to(condition, what):
        for _ in range(80):
            browser.switch_to.active_element.send_keys(Keys.TAB)
            if condition(browser.switch_to.active_element):
                return browser.switch_to.active_element
        raise AssertionError(f"Tab never reached {what}")

    for job_id in chosen:
        tab_to(lambda element, job_id=job_id: element.get_attribute("value") == job_id, job_id).send_keys(Keys.SPACE)
    assert [box.is_selected() for box in boxes] == [True, True, False]
    # The live refresh leaves a selection alone (it would replace the checkboxes).
    wait_for(lambda: "jobs selected" in browser.find_element(By.ID, "live-state").text, 15, "the paused refresh")
    assert [box.is_selected() for box in boxes] == [True, True, False]
    save(browser, "selection")
    tab_to(lambda element: element.get_attribute("id") == "selected-retry", "Retry selected").send_keys(Keys.ENTER)
    wait_for(lambda: browser.find_elements(By.ID, "confirm"), 10, "the confirmation")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Retry 2 job(s)?"
    assert sorted(item.text for item in browser.find_elements(By.CSS_SELECTOR, "#selected-ids li")) == sorted(chosen)
    save(browser, "confirm-selection")
    assert [status_of(db, job_id) for job_id in jobs] == ["f"] * 3  # asking changed nothing
    browser.find_element(By.ID, "confirm").send_keys(Keys.ENTER)
    notice = wait_for(lambda: browser.find_elements(By.ID, "notice"), 10, "the notice")[0]
    assert notice.text == "Retried 2 job(s)." and "queue=billing" in browser.current_url
    assert sorted(status_of(db, job_id) for job_id in jobs) == ["f", "p", "p"]
    assert {job_id for job_id in jobs if status_of(db, job_id) == "p"} == set(chosen)
    assert_nothing_ran(browser)


def test_a_forged_selection_post_from_the_page_is_refused(browser, server, db):
    jobs = [make_job(db, status="p", queue="billing") for _ in range(2)]
    visit(browser, server, "/jobs?status=pending")
    status = browser.execute_async_script("""
        const done = arguments[arguments.length - 1];
        const form = new URLSearchParams({selection: '1'});
        arguments[0].forEach(id => form.append('id', id));
        fetch('/actions/cancel', {method: 'POST', body: form})
            .then(response => done(response.status), error => done(String(error)));
    """, jobs)
    assert status == 403
    assert [status_of(db, job_id) for job_id in jobs] == ["p", "p"]
    browser.get_log("browser")  # drained: the refused POST is an expected console error


TRACEBACK = ('Traceback (most recent call last):\n'
             '  File "/srv/venv/lib/python3.12/site-packages/exekutor/execution.py", line 88, in run\n'
             '    result = job(*args)\n'
             '  File "/srv/venv/lib/python3.12/site-packages/exekutor/hooks.py", line 12, in call\n'
             '    return function()\n'
             '  File "/srv/app/myapp/jobs.py", line 8, in send_receipt\n'
             '    smtp.send(order)\n'
             'smtplib.SMTPRecipientsRefused: 550 mailbox unavailable\n')


def test_tracebacks_fold_exekutors_frames_and_collapse_repeated_attempts(browser, server, db):
    job_id = make_job(db, message="550 mailbox unavailable", traceback=TRACEBACK)
    for attempt in (2, 3):
        query(db, "INSERT INTO exekutor_job_errors (job_id, attempt, error) SELECT job_id, %s, error "
                  "FROM exekutor_job_errors WHERE job_id = %s AND attempt = 1", (attempt, job_id))
    visit(browser, server, f"/jobs/{job_id}", shot="traceback")
    records = browser.find_elements(By.CSS_SELECTOR, ".error-record")
    assert len(records) == 1 and "3 attempts failed the same way" in records[0].text
    shown = records[0].find_element(By.CSS_SELECTOR, ".traceback-parts").text
    assert "myapp/jobs.py" in shown and "SMTPRecipientsRefused" in shown and "execution.py" not in shown
    summary = browser.find_element(By.CSS_SELECTOR, "details.frames summary")
    assert summary.text == "2 frame(s) of exekutor"
    summary.click()
    assert "exekutor/execution.py" in records[0].find_element(By.CSS_SELECTOR, ".traceback-parts").text
    save(browser, "traceback-unfolded")
    assert_nothing_ran(browser)


@pytest.mark.parametrize("width", [700, 390])
def test_pages_fit_a_narrow_window_and_a_phone(browser, server, db, width):
    warning_jobs(db)
    failed = make_job(db, traceback=TRACEBACK)
    browser.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                            {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": width < 500})
    try:
        for path, name in (("/", "overview"), ("/jobs?status=failed", "jobs"), (f"/jobs/{failed}", "job"),
                           ("/queues/reports", "queue"), ("/workers", "workers"), ("/schedules", "schedules")):
            visit(browser, server, path)
            page_width, window_width = browser.execute_script(
                "return [document.documentElement.scrollWidth, document.documentElement.clientWidth]")
            assert page_width <= window_width, (path, page_width)  # wide tables scroll in their box, not the page
            if name in ("overview", "jobs", "job"):
                save(browser, f"{name}-{width}px")
        nav = browser.find_element(By.CSS_SELECTOR, "header.top nav")
        assert nav.is_displayed() and nav.size["width"] <= width
    finally:
        browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})


def test_charts_have_axes_labels_and_the_failed_part(browser, server, db):
    for status in ("c",) * 6 + ("f", "d"):
        make_job(db, status=status, queue="charts")
    visit(browser, server, "/", shot="charts")
    card = browser.find_element(By.CSS_SELECTOR, ".card.wide")
    assert "jobs finished per minute, last hour: 8 (2 failed)" in card.text
    labels = [text.text for text in card.find_elements(By.CSS_SELECTOR, "svg text")]
    assert labels == ["8", "0", "60 min ago", "30 min ago", "now"]
    assert len(card.find_elements(By.CSS_SELECTOR, "rect.bar.failed")) == 1
    row = queue_row(browser, "charts")
    assert "peak 8/min" in row.find_element(By.CSS_SELECTOR, "svg").text
    visit(browser, server, "/queues/charts", shot="queue-chart")
    tip = browser.find_element(By.CSS_SELECTOR, "main svg g title").get_attribute("textContent")
    assert tip == "8 finished, 2 failed (1 min ago)"
    assert_nothing_ran(browser)


def test_run_a_schedule_now_pause_and_resume_it_by_clicking(browser, server, db):
    from tests.test_dashboard_search import store_schedule

    store_schedule(db, "nightly-rollup")
    store_schedule(db, "hourly-digest", job="myapp.jobs:digest", queue="mail")
    try:
        visit(browser, server, "/schedules")
        row = schedule_row(browser, "nightly-rollup")
        assert "active" in row.text and row.find_element(By.CSS_SELECTOR, "td.last-job").text == "-"
        row.find_element(By.CSS_SELECTOR, "button[data-schedule-action=run]").click()
        notice = wait_for(lambda: browser.find_elements(By.ID, "notice"), 10, "the job run now")[0]
        assert notice.text.startswith("Enqueued one job of its schedule now")
        assert browser.find_element(By.CSS_SELECTOR, "h1 .name").text == "myapp.jobs:rollup"
        visit(browser, server, "/schedules")
        schedule_row(browser, "nightly-rollup").find_element(By.CSS_SELECTOR, "button[data-schedule-action=pause]"
                                                            ).click()
        notice = wait_for(lambda: browser.find_elements(By.ID, "notice"), 10, "the pause")[0]
        assert notice.text.startswith("Paused the schedule")
        row = schedule_row(browser, "nightly-rollup")
        assert "paused" in row.find_element(By.CSS_SELECTOR, "td.schedule-state").text
        assert row.find_element(By.CSS_SELECTOR, "td.last-job").text == "pending"
        save(browser, "schedules")
        row.find_element(By.CSS_SELECTOR, "button[data-schedule-action=resume]").click()
        wait_for(lambda: "Resumed" in browser.find_element(By.ID, "notice").text, 10, "the resume")
        assert query(db, "SELECT count(*) FROM exekutor_schedules WHERE paused_at IS NOT NULL")[0][0] == 0
        assert_nothing_ran(browser)
    finally:
        query(db, "DELETE FROM exekutor_schedules")


def schedule_row(browser, name):
    for row in browser.find_elements(By.CSS_SELECTOR, "main table tbody tr"):
        if row.find_element(By.TAG_NAME, "td").text.startswith(name):
            return row
    raise AssertionError(f"no row of schedule {name!r}")
