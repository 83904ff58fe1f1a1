-- Functions that claim, finish and requeue jobs. Producers and consumers in any language can
-- call them from SQL; jobvisor's workers and supervisor call the same ones.

-- Wake idle workers: one notification per job type per inserting statement, payload = type.
CREATE FUNCTION background_jobs_notify_insert() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('jobvisor_jobs', inserted.type)
    FROM (SELECT DISTINCT type FROM new_rows WHERE status = 'pending') AS inserted;
    RETURN NULL;
END;
$$;

CREATE TRIGGER background_jobs_notify_insert
    AFTER INSERT ON background_jobs
    REFERENCING NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION background_jobs_notify_insert();


-- The distinct (type, static_priority) groups of pending jobs of the given types, each with
-- the earliest run_at in it. Inside a group the job that became due first has the highest
-- claim score, so these heads are all that the claim and the supervisor need to look at.
-- A loose index scan over background_jobs_claim_idx finds the groups, which are few, without
-- reading every pending row.
CREATE FUNCTION pending_group_heads(types_param text[])
RETURNS TABLE (type text, static_priority real, run_at timestamptz)
LANGUAGE sql STABLE AS $$
    WITH RECURSIVE grp(type, static_priority) AS (
        SELECT t.type, head.static_priority
        FROM unnest(types_param) AS t(type)
        CROSS JOIN LATERAL (
            SELECT j.static_priority
            FROM background_jobs AS j
            WHERE j.status = 'pending' AND j.type = t.type
            ORDER BY j.static_priority
            LIMIT 1
        ) AS head
        UNION ALL
        SELECT g.type, nxt.static_priority
        FROM grp AS g
        CROSS JOIN LATERAL (
            SELECT j.static_priority
            FROM background_jobs AS j
            WHERE j.status = 'pending' AND j.type = g.type
              AND j.static_priority > g.static_priority
            ORDER BY j.static_priority
            LIMIT 1
        ) AS nxt
    )
    SELECT g.type, g.static_priority, first.run_at
    FROM grp AS g
    CROSS JOIN LATERAL (
        SELECT j.run_at
        FROM background_jobs AS j
        WHERE j.status = 'pending' AND j.type = g.type AND j.static_priority = g.static_priority
        ORDER BY j.run_at
        LIMIT 1
    ) AS first
$$;


-- Claim up to batch_size due pending jobs of the given types for one worker, highest score
-- first, where score = static_priority + min(5, minutes since run_at / 10) and ties go to
-- the earlier run_at, then the lower id. Scores use now(), the transaction's start time, so
-- every row of one claim is aged against the same instant.
--
-- The claim never sorts all pending rows: each group from pending_group_heads contributes
-- the head of its index range, and only those heads are merged by score. SKIP LOCKED makes
-- concurrent claims take disjoint rows.
--
-- type_limits (aligned with types_param) caps the jobs of each type in processing, and
-- max_per_user the jobs of one user, over all workers of all nodes. Claims that must respect
-- a limit serialize on transaction-level advisory locks, per type and then per user, each
-- set taken in sorted order so that no two claims wait for each other in a cycle. After the
-- locks, a new statement counts the running jobs again, so it sees every claim committed by
-- the previous holder of a lock.
CREATE FUNCTION claim_jobs(
    types_param text[],
    worker_param text,
    batch_size integer,
    lease_seconds double precision,
    type_limits integer[] DEFAULT NULL,
    max_per_user integer DEFAULT NULL
)
RETURNS SETOF background_jobs
LANGUAGE plpgsql AS $$
DECLARE
    candidate record;
    picked bigint[] := '{}';
    type_room jsonb := '{}';
    user_room jsonb := '{}';
    saturated text[] := '{}';
    candidate_ids bigint[];
    candidate_users text[];
BEGIN
    IF type_limits IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('jobvisor type ' || t.type, 0))
        FROM (SELECT DISTINCT u.type FROM unnest(types_param) AS u(type) ORDER BY u.type) AS t;

        SELECT coalesce(jsonb_object_agg(l.type, l.max_running - coalesce(r.running, 0)), '{}')
        INTO type_room
        FROM unnest(types_param, type_limits) AS l(type, max_running)
        LEFT JOIN (
            SELECT j.type, count(*) AS running FROM background_jobs AS j
            WHERE j.status = 'processing' AND j.type = ANY(types_param)
            GROUP BY j.type
        ) AS r ON r.type = l.type;
    END IF;

    IF max_per_user IS NOT NULL THEN
        SELECT coalesce(array_agg(j.user_id), '{}') INTO saturated
        FROM (
            SELECT user_id FROM background_jobs
            WHERE status = 'processing' AND user_id IS NOT NULL
            GROUP BY user_id HAVING count(*) >= max_per_user
        ) AS j;
    END IF;

    -- Candidates: the due heads of each group, skipping users already at their limit. A
    -- first pass without locks finds how many of the best batch_size jobs each group holds;
    -- the second locks that many rows per group, skipping rows that other claims hold, so
    -- no row is locked that this claim will not take.
    WITH heads AS (
        SELECT * FROM pending_group_heads(types_param) AS g
        WHERE g.run_at <= now() AND coalesce((type_room ->> g.type)::integer, batch_size) > 0
    ),
    preview AS (
        SELECT g.type, g.static_priority
        FROM heads AS g
        CROSS JOIN LATERAL (
            SELECT g.static_priority
                   + least(5.0, extract(epoch FROM now() - j.run_at) / 600.0) AS score,
                   j.run_at, j.id
            FROM background_jobs AS j
            WHERE j.status = 'pending'
              AND j.type = g.type
              AND j.static_priority = g.static_priority
              AND j.run_at <= now()
              AND (j.user_id IS NULL OR NOT j.user_id = ANY(saturated))
            ORDER BY j.run_at, j.id
            LIMIT batch_size
        ) AS c
        ORDER BY c.score DESC, c.run_at, c.id
        LIMIT batch_size
    ),
    quota AS (
        SELECT type, static_priority, count(*) AS rows_wanted
        FROM preview
        GROUP BY type, static_priority
    )
    SELECT coalesce(array_agg(c.id), '{}')
    INTO candidate_ids
    FROM quota AS q
    CROSS JOIN LATERAL (
        SELECT j.id, j.run_at, j.user_id,
               q.static_priority + least(5.0, extract(epoch FROM now() - j.run_at) / 600.0) AS score
        FROM background_jobs AS j
        WHERE j.status = 'pending'
          AND j.type = q.type
          AND j.static_priority = q.static_priority
          AND j.run_at <= now()
          AND (j.user_id IS NULL OR NOT j.user_id = ANY(saturated))
        ORDER BY j.run_at, j.id
        LIMIT q.rows_wanted
        FOR UPDATE SKIP LOCKED
    ) AS c;

    -- Under contention the quota of a group can land on rows that other claims hold; then
    -- take the rest from any group, still skipping locked rows.
    IF cardinality(candidate_ids) < batch_size THEN
        SELECT candidate_ids || coalesce(array_agg(c.id), '{}')
        INTO candidate_ids
        FROM pending_group_heads(types_param) AS g
        CROSS JOIN LATERAL (
            SELECT j.id
            FROM background_jobs AS j
            WHERE j.status = 'pending'
              AND j.type = g.type
              AND j.static_priority = g.static_priority
              AND j.run_at <= now()
              AND (j.user_id IS NULL OR NOT j.user_id = ANY(saturated))
              AND NOT j.id = ANY(candidate_ids)
            ORDER BY j.run_at, j.id
            LIMIT batch_size - cardinality(candidate_ids)
            FOR UPDATE SKIP LOCKED
        ) AS c
        WHERE g.run_at <= now() AND coalesce((type_room ->> g.type)::integer, batch_size) > 0;
    END IF;

    -- Order the locked candidates by score; the loop below takes them in this order.
    SELECT array_agg(j.id ORDER BY j.static_priority + least(5.0, extract(epoch FROM now() - j.run_at) / 600.0) DESC, j.run_at, j.id),
           array_agg(DISTINCT j.user_id) FILTER (WHERE j.user_id IS NOT NULL)
    INTO candidate_ids, candidate_users
    FROM background_jobs AS j
    WHERE j.id = ANY(candidate_ids);

    IF candidate_ids IS NULL THEN
        RETURN;
    END IF;

    IF max_per_user IS NOT NULL AND candidate_users IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('jobvisor user ' || u.user_id, 0))
        FROM (SELECT DISTINCT x.user_id FROM unnest(candidate_users) AS x(user_id) ORDER BY x.user_id) AS u;

        SELECT coalesce(jsonb_object_agg(u.user_id, max_per_user - coalesce(r.running, 0)), '{}')
        INTO user_room
        FROM unnest(candidate_users) AS u(user_id)
        LEFT JOIN (
            SELECT j.user_id, count(*) AS running FROM background_jobs AS j
            WHERE j.status = 'processing' AND j.user_id = ANY(candidate_users)
            GROUP BY j.user_id
        ) AS r ON r.user_id = u.user_id;
    END IF;

    FOR candidate IN
        SELECT j.id, j.type, j.user_id
        FROM unnest(candidate_ids) WITH ORDINALITY AS c(id, n)
        JOIN background_jobs AS j ON j.id = c.id
        ORDER BY c.n
    LOOP
        CONTINUE WHEN type_limits IS NOT NULL AND (type_room ->> candidate.type)::integer <= 0;
        CONTINUE WHEN max_per_user IS NOT NULL AND candidate.user_id IS NOT NULL
                      AND (user_room ->> candidate.user_id)::integer <= 0;
        picked := picked || candidate.id;
        IF type_limits IS NOT NULL THEN
            type_room := jsonb_set(type_room, ARRAY[candidate.type],
                                   to_jsonb((type_room ->> candidate.type)::integer - 1));
        END IF;
        IF max_per_user IS NOT NULL AND candidate.user_id IS NOT NULL THEN
            user_room := jsonb_set(user_room, ARRAY[candidate.user_id],
                                   to_jsonb((user_room ->> candidate.user_id)::integer - 1));
        END IF;
    END LOOP;

    -- UPDATE returns rows in no particular order; the caller runs them in candidate order.
    RETURN QUERY
    WITH claimed AS (
        UPDATE background_jobs AS j
        SET status = 'processing',
            locked_by = worker_param,
            lease_expires_at = now() + lease_seconds * interval '1 second',
            started_at = now(),
            updated_at = now(),
            progress = 0,
            current_step = NULL
        WHERE j.id = ANY(picked)
        RETURNING j.*
    )
    SELECT claimed.*
    FROM claimed
    JOIN unnest(picked) WITH ORDINALITY AS p(id, n) ON p.id = claimed.id
    ORDER BY p.n;
END;
$$;


-- Put jobs that lost their worker back to pending (or fail them when their retries are
-- spent), counting the lost attempt and recording the reason.
CREATE FUNCTION requeue_jobs(ids bigint[], reason text, count_attempt boolean DEFAULT true)
RETURNS SETOF background_jobs
LANGUAGE plpgsql AS $$
DECLARE
    job background_jobs;
BEGIN
    FOR job IN
        UPDATE background_jobs AS j
        SET status = CASE
                WHEN count_attempt AND j.retry_count >= j.max_retries THEN 'failed'::job_status
                ELSE 'pending'::job_status
            END,
            -- A job that fails here keeps retry_count = max_retries, as after a failed attempt.
            retry_count = j.retry_count
                + CASE WHEN count_attempt AND j.retry_count < j.max_retries THEN 1 ELSE 0 END,
            error = CASE WHEN count_attempt THEN reason ELSE j.error END,
            attempts = j.attempts || jsonb_build_object(
                'attempt', j.retry_count + 1,
                'error', reason,
                'worker', j.locked_by,
                'at', now()
            ),
            run_at = now(),
            locked_by = NULL,
            lease_expires_at = NULL,
            updated_at = now(),
            completed_at = CASE
                WHEN count_attempt AND j.retry_count >= j.max_retries THEN now()
            END
        WHERE j.id = ANY(ids) AND j.status = 'processing'
        RETURNING j.*
    LOOP
        IF job.status = 'pending' THEN
            PERFORM pg_notify('jobvisor_jobs', job.type);
        END IF;
        RETURN NEXT job;
    END LOOP;
END;
$$;


-- The reference design's functions, callable from psql by producers in any language.

-- Claim up to limit_param due jobs of any type for the caller (fixed to lock atomically).
CREATE FUNCTION get_next_pending_jobs(
    limit_param integer,
    worker_param text DEFAULT 'sql:' || pg_backend_pid(),
    lease_seconds double precision DEFAULT 300
)
RETURNS SETOF background_jobs
LANGUAGE plpgsql AS $$
DECLARE
    all_types text[];
BEGIN
    -- Loose index scan over the claim index: the distinct types that have pending jobs.
    WITH RECURSIVE t(type) AS (
        (SELECT type FROM background_jobs WHERE status = 'pending' ORDER BY type LIMIT 1)
        UNION ALL
        SELECT nxt.type FROM t CROSS JOIN LATERAL (
            SELECT j.type FROM background_jobs AS j
            WHERE j.status = 'pending' AND j.type > t.type
            ORDER BY j.type LIMIT 1
        ) AS nxt
    )
    SELECT coalesce(array_agg(t.type), '{}') INTO all_types FROM t;

    RETURN QUERY SELECT * FROM claim_jobs(all_types, worker_param, limit_param, lease_seconds);
END;
$$;

CREATE FUNCTION update_job_status(
    job_id_param bigint,
    status_param text,
    progress_param integer,
    current_step_param text
)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    updated_rows integer;
BEGIN
    UPDATE background_jobs
    SET status = status_param::job_status,
        progress = progress_param,
        current_step = current_step_param,
        updated_at = now(),
        started_at = CASE
            WHEN status_param = 'processing' AND started_at IS NULL THEN now()
            ELSE started_at
        END,
        -- A job in processing always has an owner and a lease; a finished one a finish time.
        locked_by = CASE
            WHEN status_param = 'processing' THEN coalesce(locked_by, 'sql:' || pg_backend_pid())
        END,
        lease_expires_at = CASE
            WHEN status_param = 'processing' THEN coalesce(lease_expires_at, now() + interval '5 minutes')
        END,
        completed_at = CASE
            WHEN status_param IN ('completed', 'failed', 'cancelled') THEN coalesce(completed_at, now())
        END
    WHERE id = job_id_param;

    GET DIAGNOSTICS updated_rows = ROW_COUNT;
    RETURN updated_rows > 0;
END;
$$;

CREATE FUNCTION complete_job(job_id_param bigint, result_data_param jsonb)
RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    updated_rows integer;
BEGIN
    UPDATE background_jobs
    SET status = 'completed',
        progress = 100,
        result_data = result_data_param,
        completed_at = now(),
        updated_at = now(),
        locked_by = NULL,
        lease_expires_at = NULL
    WHERE id = job_id_param AND status IN ('pending', 'processing');

    GET DIAGNOSTICS updated_rows = ROW_COUNT;
    RETURN updated_rows > 0;
END;
$$;

-- Delete at most batch_size finished jobs older than days_to_keep and return how many went.
-- Callers repeat the call, one transaction each, until it returns 0, so that no single
-- DELETE holds locks or writes WAL for the whole backlog.
CREATE FUNCTION cleanup_old_jobs(days_to_keep integer, batch_size integer DEFAULT 5000)
RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    deleted_rows integer;
BEGIN
    IF days_to_keep < 0 THEN
        RAISE EXCEPTION 'days_to_keep must be >= 0, got %', days_to_keep;
    END IF;

    DELETE FROM background_jobs
    WHERE id IN (
        SELECT id FROM background_jobs
        WHERE status IN ('completed', 'failed', 'cancelled')
          AND completed_at < now() - days_to_keep * interval '1 day'
        ORDER BY completed_at
        LIMIT batch_size
        FOR UPDATE SKIP LOCKED
    );

    GET DIAGNOSTICS deleted_rows = ROW_COUNT;
    RETURN deleted_rows;
END;
$$;
