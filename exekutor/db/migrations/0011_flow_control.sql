-- exekutor 0011: flow control (DESIGN §13, docs/flow-control.md): concurrency limits, rate limits and paused queues,
-- across every worker, enforced where jobs start (the reservation) and nowhere else.
--
-- Limit keys are text: "concurrency job NAME[:KEY]", "rate job NAME[:KEY]", "concurrency queue NAME", "rate queue
-- NAME" and "paused queue NAME" (a paused queue is a limit that admits nothing).
--
-- A job held back by a limit stays pending (status 'p': it keeps its unique key, `jobs cancel` discards it, counts
-- show it as pending) with `blocked_on` naming the limit. The reservation index only holds pending jobs whose
-- blocked_on is NULL, so no reservation ever walks the jobs a limit holds back, however many there are; they wait
-- in their own index, in dequeue order per limit, for a slot.
--
-- Concurrency slots are not counters that a crash could leave wrong: a slot is a job row, executing or promoted,
-- whose `holds` names the limit. `exekutor_start_limited` counts them under a lock of the limit's row in
-- exekutor_limits, in a statement that starts after the lock is granted (so it sees every start and promotion that
-- committed before), and a job gives its slot up by leaving that state: finished, released, rescued, cancelled,
-- whichever path, with no statement of its own. `exekutor_unblock` moves the next held-back jobs of a limit back
-- into the reservation index when slots are free, as promoted jobs that already hold their slot (so that nobody
-- else takes it meanwhile and no more jobs are promoted than there are slots).
--
-- Rate limits keep, per limit row, the start times of its last N starts (`starts`, ascending): a start is admitted
-- when fewer than N of them are within the window. A held-back job is promoted with its scheduled_at moved to the
-- moment its slot comes free, so the workers' timers start it then (no poll).
--
-- A queue row in exekutor_queues carries its paused state and its limits. Lock order, everywhere: job rows (the
-- reservation's candidates), then limit rows in key order.

ALTER TABLE exekutor_jobs
    ADD COLUMN IF NOT EXISTS concurrency_key text,
    ADD COLUMN IF NOT EXISTS concurrency_limit integer,
    ADD COLUMN IF NOT EXISTS rate_key text,
    ADD COLUMN IF NOT EXISTS rate_limit integer,
    ADD COLUMN IF NOT EXISTS rate_period integer,
    ADD COLUMN IF NOT EXISTS holds text[],
    ADD COLUMN IF NOT EXISTS blocked_on text;

CREATE TABLE IF NOT EXISTS exekutor_queues (
    name        varchar(63) PRIMARY KEY,
    paused_at   timestamptz,
    concurrency integer CHECK (concurrency > 0),
    rate_limit  integer CHECK (rate_limit > 0),
    rate_period integer CHECK (rate_period > 0),
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS exekutor_limits (
    key        text PRIMARY KEY,
    max        integer NOT NULL DEFAULT 1,
    period     integer,
    starts     timestamptz[] NOT NULL DEFAULT '{}',
    updated_at timestamptz NOT NULL DEFAULT now()
);

-- The reservation index without held-back jobs (same columns, same name).
CREATE INDEX exekutor_jobs_ready_idx ON exekutor_jobs (priority, scheduled_at, enqueued_at)
    WHERE status = 'p' AND blocked_on IS NULL;
DROP INDEX exekutor_jobs_pending_idx;
ALTER INDEX exekutor_jobs_ready_idx RENAME TO exekutor_jobs_pending_idx;
-- Held-back jobs, in dequeue order per limit.
CREATE INDEX exekutor_jobs_blocked_idx ON exekutor_jobs (blocked_on, priority, scheduled_at, enqueued_at)
    WHERE status = 'p' AND blocked_on IS NOT NULL;
-- The ready jobs of a job-level limit, so that the first refusal holds back the limit's whole due backlog at once
-- (exekutor_hold_back) instead of a reservation's worth at a time in front of the queue's other jobs.
CREATE INDEX exekutor_jobs_concurrency_ready_idx ON exekutor_jobs (concurrency_key)
    WHERE status = 'p' AND blocked_on IS NULL AND concurrency_key IS NOT NULL;
CREATE INDEX exekutor_jobs_rate_ready_idx ON exekutor_jobs (rate_key)
    WHERE status = 'p' AND blocked_on IS NULL AND rate_key IS NOT NULL;
-- Slots: the executing and promoted jobs holding each limit (only limited jobs have entries). A job holds at most
-- three (its own concurrency limit, its queue's, and a rate limit it was promoted for), one B-tree per position:
-- slots are counted with plain index scans (exekutor_slots), which mark the entries of rows that are gone as dead
-- and skip them from then on. (A GIN index on the array cannot: it is read by bitmap scans only, so every count
-- rechecked every row that ever held the slot until VACUUM, 40,000 after 20,000 jobs: 2.9 ms a count.)
CREATE INDEX exekutor_jobs_holds1_idx ON exekutor_jobs ((holds[1])) WHERE status IN ('p', 'e') AND holds IS NOT NULL;
CREATE INDEX exekutor_jobs_holds2_idx ON exekutor_jobs ((holds[2])) WHERE status IN ('p', 'e') AND holds IS NOT NULL;
CREATE INDEX exekutor_jobs_holds3_idx ON exekutor_jobs ((holds[3])) WHERE status IN ('p', 'e') AND holds IS NOT NULL;

-- How many jobs hold `slot` (pending ones only, with `pending_only`), counted up to `cap`: enough to know whether a
-- limit of `cap` is full, and a LIMIT keeps the planner on plain index scans.
CREATE FUNCTION exekutor_slots(slot text, cap integer, pending_only boolean DEFAULT false) RETURNS integer
    LANGUAGE sql STABLE AS $$
    SELECT ((SELECT count(*) FROM (SELECT 1 FROM exekutor_jobs h
                                   WHERE h.status IN ('p', 'e') AND h.holds IS NOT NULL AND h.holds[1] = slot
                                     AND (NOT pending_only OR h.status = 'p') LIMIT cap) AS a)
          + (SELECT count(*) FROM (SELECT 1 FROM exekutor_jobs h
                                   WHERE h.status IN ('p', 'e') AND h.holds IS NOT NULL AND h.holds[2] = slot
                                     AND (NOT pending_only OR h.status = 'p') LIMIT cap) AS b)
          + (SELECT count(*) FROM (SELECT 1 FROM exekutor_jobs h
                                   WHERE h.status IN ('p', 'e') AND h.holds IS NOT NULL AND h.holds[3] = slot
                                     AND (NOT pending_only OR h.status = 'p') LIMIT cap) AS c))::integer
$$;

-- A job that becomes pending again (retried, released, rescued; an operator's retry of a finished one) gives its
-- slots up (a finished row keeps the holds it ran with): it runs again only through a new admission, never as if
-- it had been promoted. Only a promotion sets holds on a pending row (pending to pending). Evaluated in C for
-- every update; unlimited jobs never call the function.
CREATE FUNCTION exekutor_jobs_drop_holds() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.holds := NULL;
    RETURN NEW;
END
$$;
CREATE TRIGGER exekutor_jobs_drop_holds
    BEFORE UPDATE ON exekutor_jobs
    FOR EACH ROW WHEN (OLD.status <> 'p' AND NEW.status = 'p' AND NEW.holds IS NOT NULL)
    EXECUTE FUNCTION exekutor_jobs_drop_holds();

-- The limits of a job, as (key, max, period) rows: period NULL for a concurrency limit, 0 for a pause.
CREATE FUNCTION exekutor_job_limits(job_queue text, job_concurrency_key text, job_concurrency_limit integer,
                                    job_rate_key text, job_rate_limit integer, job_rate_period integer)
    RETURNS TABLE (key text, max integer, period integer) LANGUAGE sql STABLE AS $$
    SELECT 'paused queue ' || q.name, 0, 0 FROM exekutor_queues q WHERE q.name = job_queue AND q.paused_at IS NOT NULL
    UNION ALL
    SELECT 'concurrency job ' || job_concurrency_key, job_concurrency_limit, NULL
    WHERE job_concurrency_key IS NOT NULL AND job_concurrency_limit IS NOT NULL
    UNION ALL
    SELECT 'concurrency queue ' || q.name, q.concurrency, NULL FROM exekutor_queues q
    WHERE q.name = job_queue AND q.concurrency IS NOT NULL
    UNION ALL
    SELECT 'rate job ' || job_rate_key, job_rate_limit, job_rate_period
    WHERE job_rate_key IS NOT NULL AND job_rate_limit IS NOT NULL AND job_rate_period IS NOT NULL
    UNION ALL
    SELECT 'rate queue ' || q.name, q.rate_limit, q.rate_period FROM exekutor_queues q
    WHERE q.name = job_queue AND q.rate_limit IS NOT NULL AND q.rate_period IS NOT NULL
$$;

-- Lock the limit rows of `keys` in key order (creating the missing ones), with their max and period as given.
-- A paused queue has its row too (max 0, period 0, never counted): a reservation that holds jobs back on the
-- pause holds that row's lock until it commits, and a resume takes it (in a transaction of its own, after its
-- update committed: queue_control.resume_queue) before its release looks for them. Without it, a resume
-- committing while such a reservation was still open read the jobs before the reservation committed, found none
-- held back, and they waited for a worker's poll sweep (a minute by default; found by
-- tests/test_flow_properties.py, reduced in tests/test_flow_races.py).
CREATE FUNCTION exekutor_lock_limits(keys text[], maxes integer[], periods integer[]) RETURNS void
    LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO exekutor_limits AS l (key, max, period)
    SELECT DISTINCT ON (k.key) k.key, k.max, k.period FROM unnest(keys, maxes, periods) AS k(key, max, period)
    ORDER BY k.key
    ON CONFLICT (key) DO NOTHING;
    PERFORM 1 FROM exekutor_limits WHERE key = ANY(keys) ORDER BY key FOR UPDATE;
    UPDATE exekutor_limits l SET max = k.max, period = k.period, updated_at = now()
    FROM (SELECT DISTINCT ON (key) key, max, period FROM unnest(keys, maxes, periods) AS u(key, max, period)
          ORDER BY key) AS k
    WHERE l.key = k.key AND (l.max IS DISTINCT FROM k.max OR l.period IS DISTINCT FROM k.period);
END
$$;

-- Admission of limited candidates (rows the caller's reservation locked, in its dequeue order): each is started
-- for `worker` (the same columns as the reservation's RETURNING) if every limit of its own admits it; otherwise it
-- is held back on the first limit that does not. A job promoted by exekutor_unblock already holds its concurrency
-- slots. A last row with a NULL id says how many candidates were held back or skipped (in `attempts`), so that the
-- worker reserves again at once instead of waiting for the next notification.
CREATE FUNCTION exekutor_start_limited(candidates uuid[], worker uuid)
    RETURNS TABLE (id text, queue text, priority smallint, payload text, options jsonb, enqueued_at timestamptz,
                   scheduled_at timestamptz, attempts integer, releases integer, waited float8, holds text[])
    LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    job record;
    lim record;
    keys text[];
    maxes integer[];
    periods integer[];
    used integer[];      -- per key: slots taken (concurrency) or starts within the window (rate)
    pos integer;
    refusal text;
    needed text[];
    started uuid[] := '{}';
    held uuid[] := '{}';
    held_on text[] := '{}';
    skipped integer := 0;
    freed text[] := '{}';
BEGIN
    -- Every limit of every candidate, locked in key order before any is read.
    SELECT array_agg(l.key ORDER BY l.key), array_agg(l.max ORDER BY l.key), array_agg(l.period ORDER BY l.key)
    INTO keys, maxes, periods
    FROM (SELECT DISTINCT ON (l.key) l.key, l.max, l.period
          FROM exekutor_jobs j, unnest(candidates) AS c(id),
               LATERAL exekutor_job_limits(j.queue, j.concurrency_key, j.concurrency_limit, j.rate_key, j.rate_limit,
                                           j.rate_period) AS l
          WHERE j.id = c.id ORDER BY l.key) AS l;
    keys := coalesce(keys, '{}');
    PERFORM exekutor_lock_limits(keys, maxes, periods);
    -- What is used now, read after the locks: slots held by executing and promoted jobs, and starts in the window.
    used := ARRAY(
        SELECT CASE
            WHEN k.period IS NULL THEN
                exekutor_slots(k.key, k.max + 1)
            WHEN k.period > 0 THEN
                (SELECT count(*) FROM exekutor_limits l, unnest(l.starts) AS s(t)
                 WHERE l.key = k.key AND s.t > now() - k.period * interval '1 second')
            ELSE 0 END::integer
        FROM unnest(keys, periods, maxes) WITH ORDINALITY AS k(key, period, max, n) ORDER BY k.n);

    FOR job IN
        SELECT j.id, j.queue, j.concurrency_key, j.concurrency_limit, j.rate_key, j.rate_limit, j.rate_period,
               coalesce(j.holds, '{}') AS holds
        FROM unnest(candidates) WITH ORDINALITY AS c(id, n) JOIN exekutor_jobs j ON j.id = c.id
        WHERE j.status = 'p' AND j.blocked_on IS NULL
        ORDER BY c.n
    LOOP
        refusal := NULL;
        needed := '{}';
        FOR lim IN SELECT * FROM exekutor_job_limits(job.queue, job.concurrency_key, job.concurrency_limit,
                                                     job.rate_key, job.rate_limit, job.rate_period) AS l
                   ORDER BY (l.period = 0) DESC NULLS LAST, l.key
        LOOP
            pos := array_position(keys, lim.key);
            IF pos IS NULL THEN
                -- A limit that appeared since the locks were taken: this job waits for the next reservation.
                refusal := '';
            ELSIF lim.period = 0 THEN
                refusal := lim.key;
            ELSIF lim.period IS NULL THEN
                -- A promoted job already counts in `used` under the slot it holds.
                IF NOT lim.key = ANY(job.holds) AND used[pos] >= lim.max THEN
                    refusal := lim.key;
                END IF;
                needed := needed || lim.key;
            ELSIF used[pos] >= lim.max THEN
                refusal := lim.key;
            END IF;
            EXIT WHEN refusal IS NOT NULL;
        END LOOP;
        IF refusal = '' THEN
            skipped := skipped + 1;
        ELSIF refusal IS NULL THEN
            FOR lim IN SELECT * FROM exekutor_job_limits(job.queue, job.concurrency_key, job.concurrency_limit,
                                                         job.rate_key, job.rate_limit, job.rate_period)
            LOOP
                pos := array_position(keys, lim.key);
                IF lim.period IS NULL THEN
                    IF NOT lim.key = ANY(job.holds) THEN
                        used[pos] := used[pos] + 1;
                    END IF;
                ELSIF lim.period > 0 THEN
                    used[pos] := used[pos] + 1;
                    UPDATE exekutor_limits l SET starts = (
                        SELECT array_agg(t ORDER BY t) FROM (
                            SELECT t FROM unnest(l.starts || now()) AS s(t) ORDER BY t DESC LIMIT lim.max) AS last)
                    WHERE l.key = lim.key;
                END IF;
            END LOOP;
            -- Slots it was promoted with that it no longer needs (its limits changed meanwhile) come free.
            freed := freed || ARRAY(SELECT unnest(job.holds) EXCEPT SELECT unnest(needed));
            started := started || job.id;
        ELSIF refusal LIKE 'rate %' THEN
            -- It keeps the concurrency slots it was promoted with while it waits for its start time (the rate
            -- limit promotes it then): dropping them would promote the next job of those limits, which the rate
            -- limit would refuse in turn, round after round.
            held := held || job.id;
            held_on := held_on || refusal;
        ELSE
            held := held || job.id;
            held_on := held_on || refusal;
            freed := freed || job.holds;
        END IF;
    END LOOP;

    -- The admitted jobs start first, so that the promotions below count the slots they now hold.
    RETURN QUERY
    UPDATE exekutor_jobs j SET status = 'e', worker_id = worker, attempts = j.attempts + 1, started_at = now(),
        blocked_on = NULL, holds = nullif(ARRAY(
            SELECT l.key FROM exekutor_job_limits(j.queue, j.concurrency_key, j.concurrency_limit, j.rate_key,
                                                  j.rate_limit, j.rate_period) AS l
            WHERE l.period IS NULL ORDER BY l.key), '{}')
    WHERE j.id = ANY(started)
    RETURNING j.id::text, j.queue::text, j.priority, j.payload::text, j.options, j.enqueued_at, j.scheduled_at,
        j.attempts, j.releases, extract(epoch FROM now() - j.scheduled_at)::float8, j.holds;

    UPDATE exekutor_jobs j SET blocked_on = h.key, holds = CASE WHEN h.key LIKE 'rate %' THEN nullif(ARRAY(
            SELECT k FROM unnest(j.holds) AS k WHERE k LIKE 'concurrency %'), '{}') END
    FROM unnest(held, held_on) AS h(id, key) WHERE j.id = h.id;
    PERFORM exekutor_hold_back(ARRAY(SELECT DISTINCT k FROM unnest(held_on) AS k));
    -- Slots that came free, limits that just refused a job, and rate limits that just admitted one (their next
    -- start times moved): promote what they have room for now, or schedule it for when they have.
    PERFORM exekutor_unblock_locked(ARRAY(
        SELECT k FROM unnest(freed || held_on) AS k UNION SELECT k FROM unnest(keys) AS k WHERE k LIKE 'rate %'));

    IF cardinality(held) + skipped > 0 THEN
        RETURN QUERY SELECT NULL::text, NULL::text, NULL::smallint, NULL::text, NULL::jsonb, NULL::timestamptz,
            NULL::timestamptz, cardinality(held) + skipped, NULL::integer, NULL::float8, NULL::text[];
    END IF;
END
$$;

-- Whether a live worker takes jobs of this queue and priority: promotions go only to jobs some worker will reserve.
CREATE FUNCTION exekutor_served(job_queue text, job_priority integer) RETURNS boolean LANGUAGE sql STABLE AS $$
    SELECT EXISTS (SELECT 1 FROM exekutor_workers w
                   WHERE w.status IN ('i', 'r') AND (w.queues IS NULL OR job_queue = ANY(w.queues))
                     AND job_priority BETWEEN coalesce(w.min_priority, 1) AND coalesce(w.max_priority, 32767))
$$;

-- Promote held-back jobs of `keys` (their limit rows locked by the caller) into the reservation index, jobs of queues
-- a live worker takes, as many as each limit has room for: free concurrency slots (the promoted job takes its slot
-- now), or, for a rate limit, the start times its window allows within one period, each job scheduled at its own (jobs already promoted and not
-- started keep theirs). Paused-queue keys are promoted whole when the queue is no longer paused. Returns how many
-- jobs were promoted, and tells the workers.
CREATE FUNCTION exekutor_unblock_locked(keys text[]) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    lim record;
    free integer;
    notified integer;
    promoted integer := 0;
    total integer := 0;
    times timestamptz[];
BEGIN
    FOR lim IN SELECT l.key, l.max, l.period, l.starts FROM exekutor_limits l
               WHERE l.key = ANY(keys) AND l.key NOT LIKE 'paused %' ORDER BY l.key
    LOOP
        -- A promoted job that no live worker takes (its queue's workers stopped) would keep its slot for as long as
        -- that lasts, and the limit's jobs of served queues would wait with it: it is held back again.
        UPDATE exekutor_jobs j SET blocked_on = lim.key, holds = NULL
        WHERE j.status IN ('p', 'e') AND j.holds IS NOT NULL AND lim.key IN (j.holds[1], j.holds[2], j.holds[3])
          AND j.status = 'p' AND j.blocked_on IS NULL AND NOT exekutor_served(j.queue, j.priority);
        CONTINUE WHEN NOT EXISTS (SELECT 1 FROM exekutor_jobs b WHERE b.status = 'p' AND b.blocked_on = lim.key);
        IF lim.period IS NULL THEN
            free := lim.max - exekutor_slots(lim.key, lim.max + 1);
            CONTINUE WHEN free <= 0;
            WITH next AS (
                SELECT b.id FROM exekutor_jobs b WHERE b.status = 'p' AND b.blocked_on = lim.key
                  AND exekutor_served(b.queue, b.priority)
                ORDER BY b.priority, b.scheduled_at, b.enqueued_at LIMIT free FOR UPDATE SKIP LOCKED
            ), moved AS (
                UPDATE exekutor_jobs j SET blocked_on = NULL, holds = coalesce(j.holds, '{}') || lim.key
                FROM next WHERE j.id = next.id
                RETURNING j.queue, j.priority, j.scheduled_at
            )
            SELECT count(*), exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer),
                                                     array_agg(scheduled_at))
            INTO promoted, notified FROM moved;
        ELSE
            -- The next start times the window allows: `max` of them, now for the free ones, then each start in the
            -- window plus the period; those already promoted and not started have the first ones.
            times := ARRAY(
                SELECT t FROM (
                    SELECT now() AS t FROM generate_series(1, lim.max - (
                        SELECT count(*) FROM unnest(lim.starts) AS s(t) WHERE s.t > now() - lim.period * interval '1 second'))
                    UNION ALL
                    SELECT s.t + lim.period * interval '1 second' FROM unnest(lim.starts) AS s(t)
                    WHERE s.t > now() - lim.period * interval '1 second') AS all_times
                ORDER BY t
                OFFSET exekutor_slots(lim.key, lim.max + 1, true));
            CONTINUE WHEN cardinality(times) = 0;
            WITH next AS (
                SELECT b.id, row_number() OVER (ORDER BY b.priority, b.scheduled_at, b.enqueued_at) AS n
                FROM (SELECT b.id, b.priority, b.scheduled_at, b.enqueued_at FROM exekutor_jobs b
                      WHERE b.status = 'p' AND b.blocked_on = lim.key AND exekutor_served(b.queue, b.priority)
                      ORDER BY b.priority, b.scheduled_at, b.enqueued_at LIMIT cardinality(times)
                      FOR UPDATE SKIP LOCKED) AS b
            ), moved AS (
                UPDATE exekutor_jobs j SET blocked_on = NULL, holds = coalesce(j.holds, '{}') || lim.key,
                    scheduled_at = greatest(j.scheduled_at, times[next.n])
                FROM next WHERE j.id = next.id
                RETURNING j.queue, j.priority, j.scheduled_at
            )
            SELECT count(*), exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer),
                                                     array_agg(scheduled_at))
            INTO promoted, notified FROM moved;
        END IF;
        total := total + promoted;
    END LOOP;
    RETURN total;
END
$$;

-- The limits `keys` just refused a job (their rows locked by the caller): the rest of their due backlog in the
-- reservation index is held back too, up to HOLD_BACK_BATCH rows per limit and call, so that the queue's other jobs
-- behind it are reached by the next reservation instead of after the limit's whole backlog has been walked a
-- reservation at a time. Jobs promoted with a slot, and rows other reservations hold, are left alone.
CREATE FUNCTION exekutor_hold_back(keys text[]) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    key text;
    kind text;
    subject text;
    moved integer;
    total integer := 0;
BEGIN
    FOREACH key IN ARRAY keys LOOP
        kind := split_part(key, ' ', 1) || ' ' || split_part(key, ' ', 2);
        subject := substr(key, length(kind) + 2);
        -- One statement per kind, each with a condition its index serves.
        IF kind = 'concurrency job' THEN
            UPDATE exekutor_jobs j SET blocked_on = key WHERE j.id IN (
                SELECT b.id FROM exekutor_jobs b
                WHERE b.status = 'p' AND b.blocked_on IS NULL AND b.concurrency_key = subject AND b.holds IS NULL
                  AND b.scheduled_at <= now()
                LIMIT 5000 FOR UPDATE SKIP LOCKED);
        ELSIF kind = 'rate job' THEN
            UPDATE exekutor_jobs j SET blocked_on = key WHERE j.id IN (
                SELECT b.id FROM exekutor_jobs b
                WHERE b.status = 'p' AND b.blocked_on IS NULL AND b.rate_key = subject AND b.holds IS NULL
                  AND b.scheduled_at <= now()
                LIMIT 5000 FOR UPDATE SKIP LOCKED);
        ELSE
            UPDATE exekutor_jobs j SET blocked_on = key WHERE j.id IN (
                SELECT b.id FROM exekutor_jobs b
                WHERE b.status = 'p' AND b.queue = subject AND b.scheduled_at <= now() AND b.blocked_on IS NULL
                  AND b.holds IS NULL
                LIMIT 5000 FOR UPDATE SKIP LOCKED);
        END IF;
        GET DIAGNOSTICS moved = ROW_COUNT;
        total := total + moved;
    END LOOP;
    RETURN total;
END
$$;

-- Slot handoff: the finished jobs of one completion statement freed one slot each of `keys` (repeated per slot);
-- each slot goes straight to the next job that limit holds back, started for `worker` in the same statement, so a
-- limit stays full without a promotion, a notification and a reservation between two runs. The number of slots
-- taken does not change (one job leaves executing and one enters, in one commit), so no limit row is locked. Only
-- jobs whose one limit is that slot qualify (no rate limit, no second concurrency limit, queue not paused); other
-- slots are promoted the usual way. At most `max_jobs` (the worker's free greenlets), of the worker's queues and
-- priorities. Returns the started jobs as a JSON array of reservation rows (times as epoch seconds), or NULL.
CREATE FUNCTION exekutor_handoff(keys text[], worker uuid, queues text[], min_priority integer,
                                 max_priority integer, max_jobs integer) RETURNS json LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    slot record;
    taken integer := 0;
    started json;
    chosen uuid[] := '{}';
    chosen_keys text[] := '{}';
BEGIN
    FOR slot IN SELECT k.key, count(*)::integer AS n FROM unnest(keys) AS k(key) GROUP BY k.key ORDER BY k.key LOOP
        EXIT WHEN taken >= max_jobs;
        WITH next AS (
            SELECT j.id FROM exekutor_jobs j
            WHERE j.status = 'p' AND j.blocked_on = slot.key AND j.scheduled_at <= now() AND j.rate_key IS NULL
              AND (queues IS NULL OR j.queue = ANY(queues)) AND j.priority BETWEEN min_priority AND max_priority
              AND CASE WHEN slot.key LIKE 'concurrency job %'
                       THEN NOT EXISTS (SELECT 1 FROM exekutor_queues q WHERE q.name = j.queue
                                        AND (q.paused_at IS NOT NULL OR q.concurrency IS NOT NULL
                                             OR q.rate_limit IS NOT NULL))
                       ELSE j.concurrency_key IS NULL AND NOT EXISTS (
                           SELECT 1 FROM exekutor_queues q WHERE q.name = j.queue
                           AND (q.paused_at IS NOT NULL OR q.rate_limit IS NOT NULL)) END
            ORDER BY j.priority, j.scheduled_at, j.enqueued_at
            LIMIT least(slot.n, max_jobs - taken)
            FOR UPDATE SKIP LOCKED)
        SELECT chosen || array_agg(id), chosen_keys || array_agg(slot.key) INTO chosen, chosen_keys FROM next;
        chosen := coalesce(chosen, '{}');
        chosen_keys := coalesce(chosen_keys, '{}');
        taken := cardinality(chosen);
    END LOOP;
    IF taken = 0 THEN
        RETURN NULL;
    END IF;
    WITH moved AS (
        UPDATE exekutor_jobs j SET status = 'e', worker_id = worker, attempts = j.attempts + 1, started_at = now(),
            blocked_on = NULL, holds = ARRAY[c.key]
        FROM unnest(chosen, chosen_keys) AS c(id, key) WHERE j.id = c.id
        RETURNING json_build_array(j.id::text, j.queue, j.priority, j.payload::text, j.options,
            extract(epoch FROM j.enqueued_at), extract(epoch FROM j.scheduled_at), j.attempts, j.releases,
            extract(epoch FROM now() - j.scheduled_at), j.holds) AS job)
    SELECT json_agg(job) INTO started FROM moved;
    RETURN started;
END
$$;

-- Promote what the limits `keys` have room for (NULL: every limit that holds jobs back), taking their locks in key
-- order first. Called after slots come free: by the worker after it writes outcomes of limited jobs, after a
-- rescue or a release, and as a sweep at every poll, which also lets the jobs of resumed queues go.
CREATE FUNCTION exekutor_unblock(keys text[] DEFAULT NULL) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    resumed integer;
BEGIN
    IF keys IS NULL THEN
        -- The limits holding jobs back: a loose scan of the held-back index, one descent per limit.
        keys := ARRAY(
            WITH RECURSIVE blocked(key) AS (
                (SELECT blocked_on FROM exekutor_jobs WHERE status = 'p' AND blocked_on IS NOT NULL
                 ORDER BY blocked_on LIMIT 1)
                UNION ALL
                SELECT (SELECT j.blocked_on FROM exekutor_jobs j
                        WHERE j.status = 'p' AND j.blocked_on IS NOT NULL AND j.blocked_on > b.key
                        ORDER BY j.blocked_on LIMIT 1)
                FROM blocked b WHERE b.key IS NOT NULL)
            SELECT key FROM blocked WHERE key IS NOT NULL);
    END IF;
    -- The jobs of pauses that are over first, waiting for their rows (lock order: job rows, then limit rows; a
    -- reservation whose candidate scan met a held job keeps its row locked until it ends, and a release that
    -- skipped it left it held back). A resume waits for the reservations that saw the pause before it calls
    -- this (queue_control.resume_queue). Paused-queue rows are not locked here: unblock_locked skips them.
    resumed := exekutor_resume_held(ARRAY(
        SELECT k FROM unnest(keys) AS k
        WHERE k LIKE 'paused queue %' AND NOT EXISTS (
            SELECT 1 FROM exekutor_queues q WHERE 'paused queue ' || q.name = k AND q.paused_at IS NOT NULL)));
    PERFORM 1 FROM exekutor_limits WHERE key = ANY(keys) AND key NOT LIKE 'paused %' ORDER BY key FOR UPDATE;
    RETURN resumed + exekutor_unblock_locked(keys);
END
$$;

-- The jobs a pause held back go back to the reservation index once their queue is no longer paused.
CREATE FUNCTION exekutor_resume_held(keys text[]) RETURNS integer LANGUAGE plpgsql AS $$
DECLARE
    moved integer;
    notified integer;
BEGIN
    WITH resumed AS (
        UPDATE exekutor_jobs j SET blocked_on = NULL
        WHERE j.status = 'p' AND j.blocked_on = ANY(keys)
        RETURNING j.queue, j.priority, j.scheduled_at
    )
    SELECT count(*), exekutor_notify_pending(array_agg(queue::text), array_agg(priority::integer),
                                             array_agg(scheduled_at))
    INTO moved, notified FROM resumed;
    RETURN moved;
END
$$;

-- The status constraint is unchanged: a held-back job is pending.
