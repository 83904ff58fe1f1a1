-- name: enqueue_one
-- Insert one job; run_at is now() plus the requested delay.
INSERT INTO background_jobs (type, input_data, user_id, user_type, priority, max_retries, run_at)
VALUES (
    %(type)s, %(input_data)s::jsonb, %(user_id)s, %(user_type)s, %(priority)s, %(max_retries)s,
    now() + %(delay)s * interval '1 second'
)
RETURNING id

-- name: enqueue_many
-- Insert many jobs in one statement: all of them or, on any error, none.
INSERT INTO background_jobs (type, input_data, user_id, user_type, priority, max_retries, run_at)
SELECT r.type, r.input_data::jsonb, r.user_id, r.user_type, r.priority, r.max_retries,
       now() + r.delay * interval '1 second'
FROM unnest(
    %(types)b::text[], %(input_data)b::text[], %(user_ids)b::text[], %(user_types)b::text[],
    %(priorities)b::smallint[], %(max_retries)b::integer[], %(delays)b::double precision[]
) WITH ORDINALITY AS r(type, input_data, user_id, user_type, priority, max_retries, delay, n)
ORDER BY r.n
RETURNING id

-- name: claim
-- Claim up to batch_size due jobs of the given types for one worker, in priority order.
SELECT id, type, input_data, user_id, user_type, retry_count, max_retries, created_at, run_at
FROM claim_jobs(
    %(types)s::text[], %(worker)s, %(batch_size)s, %(lease_seconds)s,
    %(type_limits)s::integer[], %(max_per_user)s
)

-- name: complete_many
-- Mark jobs completed with their results, only while the given worker still holds them.
UPDATE background_jobs AS j
SET status = 'completed',
    progress = 100,
    result_data = r.result::jsonb,
    error = NULL,
    completed_at = now(),
    updated_at = now(),
    locked_by = NULL,
    lease_expires_at = NULL
FROM unnest(%(ids)s::bigint[], %(results)s::text[]) AS r(id, result)
WHERE j.id = r.id AND j.locked_by = %(worker)s AND j.status = 'processing'
RETURNING j.id

-- name: fail_attempt
-- Record a failed attempt: back to pending after retry_delay seconds while retries remain,
-- else failed. Only while the given worker still holds the job.
UPDATE background_jobs
SET status = CASE WHEN retry_count < max_retries THEN 'pending' ELSE 'failed' END::job_status,
    retry_count = CASE WHEN retry_count < max_retries THEN retry_count + 1 ELSE retry_count END,
    run_at = CASE
        WHEN retry_count < max_retries THEN now() + %(retry_delay)s * interval '1 second'
        ELSE run_at
    END,
    completed_at = CASE WHEN retry_count < max_retries THEN NULL ELSE now() END,
    error = %(error)s,
    attempts = attempts || jsonb_build_object(
        'attempt', retry_count + 1,
        'error', %(error)s::text,
        'traceback', %(traceback)s::text,
        'worker', locked_by,
        'at', now()
    ),
    locked_by = NULL,
    lease_expires_at = NULL,
    updated_at = now()
WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'processing'
RETURNING id, status, retry_count, run_at

-- name: report_progress
-- Store a running job's progress and current step.
UPDATE background_jobs
SET progress = %(progress)s, current_step = %(step)s, updated_at = now()
WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'processing'

-- name: renew_leases
-- Extend the leases of every job held by the given live workers.
UPDATE background_jobs
SET lease_expires_at = now() + %(lease_seconds)s * interval '1 second'
WHERE status = 'processing' AND locked_by = ANY(%(workers)s::text[])

-- name: requeue_workers
-- Requeue (or fail, when retries are spent) the jobs that the given workers held.
SELECT id, type, status, retry_count
FROM requeue_jobs(
    ARRAY(
        SELECT id FROM background_jobs
        WHERE status = 'processing' AND locked_by = ANY(%(workers)s::text[])
        ORDER BY id
        FOR UPDATE
    ),
    %(reason)s,
    %(count_attempt)s
)

-- name: requeue_jobs
-- Requeue the given jobs of one worker that it claimed but will not run.
SELECT id, type, status, retry_count
FROM requeue_jobs(
    ARRAY(
        SELECT id FROM background_jobs
        WHERE id = ANY(%(ids)s::bigint[]) AND status = 'processing' AND locked_by = %(worker)s
        ORDER BY id
        FOR UPDATE
    ),
    %(reason)s,
    %(count_attempt)s
)

-- name: requeue_expired
-- Requeue jobs whose lease expired: their node stopped renewing them.
SELECT id, type, status, retry_count
FROM requeue_jobs(
    ARRAY(
        SELECT id FROM background_jobs
        WHERE status = 'processing' AND lease_expires_at < now()
        ORDER BY id
        LIMIT 1000
        FOR UPDATE SKIP LOCKED
    ),
    'lease expired: the worker''s node stopped renewing it',
    true
)

-- name: pending_summary
-- Per job type: due pending jobs (counted up to cap), the earliest run_at of any pending job,
-- seconds until then (negative when due), and the best claim score among the due ones.
WITH heads AS (
    SELECT * FROM pending_group_heads(%(types)s::text[])
)
SELECT t.type,
       (SELECT count(*) FROM (
            SELECT 1 FROM background_jobs AS j
            WHERE j.status = 'pending' AND j.type = t.type AND j.run_at <= now()
            LIMIT %(cap)s
        ) AS due_rows) AS due,
       (SELECT min(h.run_at) FROM heads AS h WHERE h.type = t.type) AS next_run_at,
       (SELECT extract(epoch FROM min(h.run_at) - now())
        FROM heads AS h WHERE h.type = t.type) AS next_due_in_s,
       (SELECT max(h.static_priority + least(5.0, extract(epoch FROM now() - h.run_at) / 600.0))
        FROM heads AS h
        WHERE h.type = t.type AND h.run_at <= now()) AS head_score
FROM unnest(%(types)s::text[]) AS t(type)

-- name: processing_count
-- Jobs of the given types that some worker holds.
SELECT count(*) AS processing
FROM background_jobs
WHERE status = 'processing' AND type = ANY(%(types)s::text[])

-- name: status_counts
-- Number of jobs per status and type.
SELECT status::text AS status, type, count(*) AS jobs
FROM background_jobs
GROUP BY status, type
ORDER BY type, status

-- name: get_job
-- One job with everything that is known of it.
SELECT id, type, status::text AS status, user_id, user_type, priority, static_priority,
       progress, current_step, input_data, result_data, error, attempts, retry_count,
       max_retries, run_at, locked_by, lease_expires_at, created_at, started_at, updated_at,
       completed_at
FROM background_jobs
WHERE id = %(id)s

-- name: cleanup_batch
-- Delete one batch of finished jobs older than the given number of days.
SELECT cleanup_old_jobs(%(days)s, %(batch_size)s) AS deleted

-- name: job_outcomes
-- Outcome and latency (creation to completion, seconds) of the given jobs.
SELECT id, type, status::text AS status, retry_count,
       extract(epoch FROM completed_at - created_at) AS latency_s
FROM background_jobs
WHERE id = ANY(%(ids)s::bigint[])

-- name: postpone_job
-- Give a held job back to pending until run_at = now + delay, without counting an attempt:
-- the job did not fail, a service it needs refused calls (its circuit breaker is open).
UPDATE background_jobs
SET status = 'pending',
    locked_by = NULL,
    lease_expires_at = NULL,
    run_at = now() + %(delay)s * interval '1 second',
    progress = 0,
    current_step = NULL,
    error = %(reason)s,
    updated_at = now()
WHERE id = %(id)s AND locked_by = %(worker)s AND status = 'processing'
RETURNING id, run_at
