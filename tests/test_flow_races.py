"""Races of flow control found by the property tests (tests/test_flow_properties.py), each reduced to its smallest
form: two connections interleaved by hand, no worker."""
import threading
import uuid

import psycopg2
import pytest

import exekutor
from tests import flow_app
from tests.conftest import scalar

pytestmark = pytest.mark.timeout(60)


def test_a_resume_racing_a_reservation_that_holds_jobs_back_on_the_pause_lets_them_go(db, database_url):
    """A reservation that read the queue as paused holds its candidates back on the pause; a resume that commits
    while that reservation is still open must not miss them. (It did: the resume's release read the jobs before
    the reservation committed, saw none held back, and they waited for a worker's poll sweep, a minute by
    default. Now a pause has a limit row that both take: the release waits for the reservation.)"""
    exekutor.pause_queue("default")
    job_id = flow_app.free.perform_later("held").id
    reservation = psycopg2.connect(database_url)
    try:
        with reservation.cursor() as cursor:
            cursor.execute("SELECT id FROM exekutor_jobs WHERE id = %s FOR UPDATE", (job_id,))
            cursor.execute("SELECT count(*) FROM exekutor_start_limited(ARRAY[%s]::uuid[], %s)",
                           (job_id, str(uuid.uuid4())))
        resumed = []
        resume = threading.Thread(target=lambda: resumed.append(exekutor.resume_queue("default")))
        resume.start()
        resume.join(1.0)  # with the fix the release waits for the reservation: give it the time to get there
        reservation.commit()
        resume.join(30)
        assert resumed == [True]
    finally:
        reservation.close()
    assert scalar(db, "SELECT blocked_on FROM exekutor_jobs WHERE id = %s", (job_id,)) is None


def test_a_resume_lets_go_a_held_job_whose_row_another_transaction_locks_for_a_moment(db, database_url):
    """A reservation's candidate scan that met the job just as it was held back keeps the row locked until the
    reservation ends (PostgreSQL keeps a lock taken for a row that then fails its re-check). A resume's release
    that skipped locked rows left such a job held back after the resume, until a worker's poll sweep (found by the
    long profile of tests/test_flow_properties.py). It waits for the row instead."""
    exekutor.pause_queue("default")
    job_id = flow_app.free.perform_later("held").id
    with db.cursor() as cursor:
        cursor.execute("SELECT count(*) FROM exekutor_start_limited(ARRAY[%s]::uuid[], %s)",
                       (job_id, str(uuid.uuid4())))
    assert scalar(db, "SELECT blocked_on FROM exekutor_jobs WHERE id = %s", (job_id,)) == "paused queue default"
    locker = psycopg2.connect(database_url)
    try:
        with locker.cursor() as cursor:
            cursor.execute("SELECT id FROM exekutor_jobs WHERE id = %s FOR UPDATE", (job_id,))
        resumed = []
        resume = threading.Thread(target=lambda: resumed.append(exekutor.resume_queue("default")))
        resume.start()
        resume.join(1.0)
        locker.commit()
        resume.join(30)
        assert resumed == [True]
    finally:
        locker.close()
    assert scalar(db, "SELECT blocked_on FROM exekutor_jobs WHERE id = %s", (job_id,)) is None


def _limited(tag):
    return flow_app.prop.set(concurrency=1, concurrency_key="k").perform_later(tag).id


def _worker_row(conn, queues=None):
    """A live worker's row (promotions go only to jobs of queues a live worker takes)."""
    scalar(conn, "INSERT INTO exekutor_workers (hostname, pid, status, queues) VALUES ('test', 1, 'r', %s) "
                 "RETURNING 1", (queues,))


def _start(conn, job_id):
    """What a reservation does with a limited candidate: lock it, admit it or hold it back. True if admitted."""
    with conn.cursor() as cursor:
        cursor.execute("SELECT id FROM exekutor_jobs WHERE id = %s FOR UPDATE", (job_id,))
        cursor.execute("SELECT id FROM exekutor_start_limited(ARRAY[%s]::uuid[], %s)", (job_id, str(uuid.uuid4())))
        return any(row[0] for row in cursor.fetchall())


def test_an_operator_retry_of_a_finished_limited_job_does_not_bring_its_old_slot_back(db):
    """A finished job keeps the `holds` of its last run; retried by an operator it was pending with them, so it
    counted as holding a slot already and started over the limit. (Now the retry drops them.)"""
    from exekutor import operations

    first, second = _limited("first"), _limited("second")
    assert _start(db, first)
    scalar(db, "UPDATE exekutor_jobs SET status = 'f', finished_at = now() WHERE id = %s RETURNING 1", (first,))
    assert _start(db, second)
    assert operations.retry(db, [first]).retried == [first]
    assert not _start(db, first), "started while the limit's only slot is taken"
    assert scalar(db, "SELECT count(*) FROM exekutor_jobs WHERE status = 'e'") == 1


def test_cancelling_a_promoted_job_lets_the_next_held_back_job_go(db):
    """A job promoted into a free slot (pending, holding it) and cancelled gives the slot up; the next job held back
    on the limit must get it at once, not at a worker's next poll sweep (a minute by default)."""
    from exekutor import operations

    _worker_row(db)
    running, promoted, waiting = _limited("running"), _limited("promoted"), _limited("waiting")
    assert _start(db, running)
    assert not _start(db, promoted) and not _start(db, waiting)
    scalar(db, "UPDATE exekutor_jobs SET status = 'c', finished_at = now() WHERE id = %s RETURNING 1", (running,))
    scalar(db, "SELECT exekutor_unblock(ARRAY['concurrency job flow.prop:k'])")  # the completer's, after the outcome
    assert scalar(db, "SELECT blocked_on IS NULL FROM exekutor_jobs WHERE id = %s", (promoted,))
    assert operations.cancel(db, [promoted]).cancelled == [promoted]
    assert scalar(db, "SELECT blocked_on FROM exekutor_jobs WHERE id = %s", (waiting,)) is None


def test_a_promoted_job_of_a_queue_no_worker_serves_does_not_starve_its_key_in_other_queues(db):
    """A concurrency key shared by jobs of two queues. A job promoted into the free slot holds it while it is pending:
    one of a queue whose workers are gone (stopped, scaled down, or never started for it) would hold it for as long
    as that lasts, and the key's jobs in the queue that has workers would never run. So promotions go only to jobs
    some live worker takes, and a promoted job whose workers left is held back again by the next promotion."""
    def limited(tag, queue):
        return flow_app.prop.set(concurrency=1, concurrency_key="shared", queue=queue).perform_later(tag).id

    _worker_row(db, ["fast"])
    running = limited("running", "fast")
    assert _start(db, running)
    orphaned, served = limited("orphaned", "slow"), limited("served", "fast")  # dequeue order: orphaned first
    assert not _start(db, orphaned) and not _start(db, served)
    scalar(db, "UPDATE exekutor_jobs SET status = 'c', finished_at = now() WHERE id = %s RETURNING 1", (running,))
    scalar(db, "SELECT exekutor_unblock(ARRAY['concurrency job flow.prop:shared'])")
    assert scalar(db, "SELECT blocked_on IS NULL FROM exekutor_jobs WHERE id = %s", (served,))
    assert scalar(db, "SELECT holds FROM exekutor_jobs WHERE id = %s", (orphaned,)) is None
    # A job promoted while its queue had a worker, whose worker then left: the sweep holds it back again.
    assert _start(db, served)
    scalar(db, "UPDATE exekutor_jobs SET status = 'c', finished_at = now() WHERE id = %s RETURNING 1", (served,))
    scalar(db, "UPDATE exekutor_workers SET queues = ARRAY['fast', 'slow'] RETURNING 1")
    scalar(db, "SELECT exekutor_unblock(NULL)")
    assert scalar(db, "SELECT holds FROM exekutor_jobs WHERE id = %s", (orphaned,)) == \
        ["concurrency job flow.prop:shared"]
    scalar(db, "UPDATE exekutor_workers SET queues = ARRAY['fast'] RETURNING 1")
    later = limited("later", "fast")
    assert not _start(db, later)
    scalar(db, "SELECT exekutor_unblock(NULL)")
    assert scalar(db, "SELECT blocked_on FROM exekutor_jobs WHERE id = %s", (orphaned,)) is not None
    assert scalar(db, "SELECT blocked_on IS NULL FROM exekutor_jobs WHERE id = %s", (later,))
