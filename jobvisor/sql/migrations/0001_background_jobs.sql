-- The job table, its status type and the indexes that the claim, lease and cleanup queries use.

CREATE TYPE job_status AS ENUM ('pending', 'processing', 'completed', 'failed', 'cancelled');

CREATE TABLE background_jobs (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    type             text        NOT NULL,
    user_id          text,
    user_type        text,
    status           job_status  NOT NULL DEFAULT 'pending',
    progress         smallint    NOT NULL DEFAULT 0 CHECK (progress BETWEEN 0 AND 100),
    current_step     text,
    input_data       jsonb       NOT NULL DEFAULT '{}',
    result_data      jsonb,
    error            text,
    retry_count      integer     NOT NULL DEFAULT 0 CHECK (retry_count >= 0),
    max_retries      integer     NOT NULL DEFAULT 3 CHECK (max_retries >= 0),
    -- Base priority of the job: its type's default unless the producer chose one.
    priority         smallint    NOT NULL DEFAULT 0 CHECK (priority BETWEEN -10 AND 10),
    -- The part of the claim score that does not change while the job waits:
    -- base priority, user tier bonus (premium +3, admin +5) and +0.5 per retry.
    -- The claim adds the aging bonus, min(5, minutes waited / 10), at claim time.
    static_priority  real GENERATED ALWAYS AS (
        priority
        + CASE user_type WHEN 'premium' THEN 3 WHEN 'admin' THEN 5 ELSE 0 END
        + 0.5 * retry_count
    ) STORED,
    -- Earliest time the job may start: creation time, a requested delay, or a retry backoff.
    run_at           timestamptz NOT NULL DEFAULT now(),
    locked_by        text,
    lease_expires_at timestamptz,
    -- One object per failed or lost attempt: attempt, error, traceback, worker, at.
    attempts         jsonb       NOT NULL DEFAULT '[]',
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,

    CONSTRAINT background_jobs_lease_check CHECK (
        (status = 'processing') = (locked_by IS NOT NULL AND lease_expires_at IS NOT NULL)
    ),
    CONSTRAINT background_jobs_completed_at_check CHECK (
        (status IN ('completed', 'failed', 'cancelled')) = (completed_at IS NOT NULL)
    )
);

-- Claim order: within one (type, static_priority) group the job that became due first (then
-- the lower id) has the highest score, so the claim reads only the head of each group.
CREATE INDEX background_jobs_claim_idx
    ON background_jobs (type, static_priority, run_at, id)
    WHERE status = 'pending';

-- Lease renewal, lease expiry and requeueing a dead worker's jobs.
CREATE INDEX background_jobs_processing_idx
    ON background_jobs (locked_by)
    WHERE status = 'processing';

-- Cleanup of finished jobs.
CREATE INDEX background_jobs_finished_idx
    ON background_jobs (completed_at)
    WHERE status IN ('completed', 'failed', 'cancelled');

-- A user's jobs, newest first.
CREATE INDEX background_jobs_user_created_idx
    ON background_jobs (user_id, created_at);
