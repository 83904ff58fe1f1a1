-- Index only the jobs that have a user.
--
-- Per-user queries (the running-limit checks of claim_jobs, a user's jobs) always name a
-- user, so rows without one never need this index. Many workloads enqueue most jobs
-- without a user, and indexing them cost about 15 % of the time of a 100,000-row insert.
DROP INDEX background_jobs_user_created_idx;

CREATE INDEX background_jobs_user_created_idx
    ON background_jobs (user_id, created_at)
    WHERE user_id IS NOT NULL;
