-- Running limits count workers, not rows.
--
-- A worker runs the jobs it holds one after another, so a claimed batch of jobs of one type
-- (or one user) adds one running job, not one per row. Counting rows capped every batch at
-- the type's limit: a type with limit 4 could never be claimed more than 4 jobs at a time.
-- claim_jobs now counts the distinct workers that hold jobs of a type (or user) in
-- processing, and jobs of a type or user that the claiming worker already holds need no room.

CREATE OR REPLACE FUNCTION claim_jobs(
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
    held_types text[] := '{}';
    held_users text[] := '{}';
    candidate_ids bigint[];
    candidate_users text[];
BEGIN
    -- Types and users this worker already holds jobs of: more of them add no running job.
    IF type_limits IS NOT NULL OR max_per_user IS NOT NULL THEN
        SELECT coalesce(array_agg(DISTINCT j.type), '{}'),
               coalesce(array_agg(DISTINCT j.user_id) FILTER (WHERE j.user_id IS NOT NULL), '{}')
        INTO held_types, held_users
        FROM background_jobs AS j
        WHERE j.status = 'processing' AND j.locked_by = worker_param;
    END IF;

    IF type_limits IS NOT NULL THEN
        PERFORM pg_advisory_xact_lock(hashtextextended('jobvisor type ' || t.type, 0))
        FROM (SELECT DISTINCT u.type FROM unnest(types_param) AS u(type) ORDER BY u.type) AS t;

        SELECT coalesce(jsonb_object_agg(l.type, l.max_running - coalesce(r.running, 0)), '{}')
        INTO type_room
        FROM unnest(types_param, type_limits) AS l(type, max_running)
        LEFT JOIN (
            SELECT j.type, count(DISTINCT j.locked_by) AS running FROM background_jobs AS j
            WHERE j.status = 'processing' AND j.type = ANY(types_param)
            GROUP BY j.type
        ) AS r ON r.type = l.type;
    END IF;

    IF max_per_user IS NOT NULL THEN
        SELECT coalesce(array_agg(j.user_id), '{}') INTO saturated
        FROM (
            SELECT user_id FROM background_jobs
            WHERE status = 'processing' AND user_id IS NOT NULL
            GROUP BY user_id HAVING count(DISTINCT locked_by) >= max_per_user
        ) AS j
        WHERE NOT j.user_id = ANY(held_users);
    END IF;

    -- Candidates: the due heads of each group, skipping users already at their limit. A
    -- first pass without locks finds how many of the best batch_size jobs each group holds;
    -- the second locks that many rows per group, skipping rows that other claims hold, so
    -- no row is locked that this claim will not take.
    WITH heads AS (
        SELECT * FROM pending_group_heads(types_param) AS g
        WHERE g.run_at <= now() AND (coalesce((type_room ->> g.type)::integer, batch_size) > 0 OR g.type = ANY(held_types))
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
        WHERE g.run_at <= now() AND (coalesce((type_room ->> g.type)::integer, batch_size) > 0 OR g.type = ANY(held_types));
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
            SELECT j.user_id, count(DISTINCT j.locked_by) AS running FROM background_jobs AS j
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
        CONTINUE WHEN type_limits IS NOT NULL AND NOT candidate.type = ANY(held_types)
                      AND (type_room ->> candidate.type)::integer <= 0;
        CONTINUE WHEN max_per_user IS NOT NULL AND candidate.user_id IS NOT NULL
                      AND NOT candidate.user_id = ANY(held_users)
                      AND (user_room ->> candidate.user_id)::integer <= 0;
        picked := picked || candidate.id;
        IF type_limits IS NOT NULL AND NOT candidate.type = ANY(held_types) THEN
            type_room := jsonb_set(type_room, ARRAY[candidate.type],
                                   to_jsonb((type_room ->> candidate.type)::integer - 1));
            held_types := held_types || candidate.type;
        END IF;
        IF max_per_user IS NOT NULL AND candidate.user_id IS NOT NULL
           AND NOT candidate.user_id = ANY(held_users) THEN
            user_room := jsonb_set(user_room, ARRAY[candidate.user_id],
                                   to_jsonb((user_room ->> candidate.user_id)::integer - 1));
            held_users := held_users || candidate.user_id;
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
