"""Bulk rows in jobvisor's ``background_jobs`` format, inserted by ``generate_series``.

The columns follow ``jobvisor/sql/migrations/0001_background_jobs.sql``. A pending row needs
only its type and input data, and the defaults fill in the rest. A finished row also sets
``completed_at``, because the table's check constraint requires it for finished statuses.
"""

from __future__ import annotations

from typing import Any

import psycopg

INSERT_PENDING = """
INSERT INTO background_jobs (type, input_data, max_retries)
SELECT %(type)s, '{}'::jsonb, 0
FROM generate_series(1, %(count)s)
"""

# Finished a day ago and earlier, one millisecond apart, so cleanup-by-age has a spread.
INSERT_COMPLETED = """
INSERT INTO background_jobs (
    type, status, progress, input_data, result_data, max_retries,
    run_at, created_at, started_at, updated_at, completed_at
)
SELECT %(type)s, 'completed', 100, '{}'::jsonb, 'null'::jsonb, 0, t, t, t, t, t
FROM (
    SELECT now() - interval '1 day' - n * interval '1 millisecond' AS t
    FROM generate_series(1, %(count)s) AS n
) AS finished
"""


def insert_pending(conn: psycopg.Connection[Any], count: int, job_type: str = "noop") -> None:
    """Insert ``count`` due pending jobs of ``job_type`` in one statement."""
    conn.execute(INSERT_PENDING, {"type": job_type, "count": count})


def insert_completed(conn: psycopg.Connection[Any], count: int, job_type: str = "noop") -> None:
    """Insert ``count`` completed jobs of ``job_type`` in one statement."""
    conn.execute(INSERT_COMPLETED, {"type": job_type, "count": count})
