-- exekutor 0002: notifications carry the range of priorities and scheduled times of the jobs they announce.
--
-- 0001 sent only the best priority and the earliest time per queue: a worker whose priority range excluded the
-- best priority ignored jobs of the same statement it could run, and a future job enqueued with a due one was
-- only found at the next poll. Now each notification has, per queue:
--   q  the queue; p, P  the lowest and highest priority number; t, T  the earliest and latest scheduled time
--   (epoch seconds, database clock).
-- A worker accepts a notification when its priority range overlaps [p, P]; when T is in the future it asks the
-- database for the next scheduled time. Workers of 0001 read p and t as before.

CREATE OR REPLACE FUNCTION exekutor_notify_pending(queues text[], priorities integer[], scheduled timestamptz[])
    RETURNS integer LANGUAGE sql AS $$
    SELECT count(pg_notify('exekutor::job_enqueued',
                           json_build_object('q', q, 'p', p, 'P', pp, 't', extract(epoch FROM s),
                                             'T', extract(epoch FROM ss))::text))::integer
    FROM (SELECT q, min(p) AS p, max(p) AS pp, min(s) AS s, max(s) AS ss
          FROM unnest(queues, priorities, scheduled) AS u(q, p, s) GROUP BY q) AS per_queue
$$;

CREATE OR REPLACE FUNCTION exekutor_jobs_notify_insert() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('exekutor::job_enqueued',
                      json_build_object('q', queue, 'p', p, 'P', pp, 't', extract(epoch FROM s),
                                        'T', extract(epoch FROM ss))::text)
    FROM (SELECT queue, min(priority) AS p, max(priority) AS pp, min(scheduled_at) AS s, max(scheduled_at) AS ss
          FROM inserted_jobs WHERE status = 'p' GROUP BY queue) AS per_queue;
    RETURN NULL;
END
$$;
