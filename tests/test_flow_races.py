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
