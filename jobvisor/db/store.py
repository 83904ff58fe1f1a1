"""The job store: every read and write of ``background_jobs`` goes through here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import psycopg

from jobvisor.db.queries import query


@dataclass(frozen=True)
class NewJob:
    """A validated job, ready to insert; ``input_data`` is already JSON text."""

    type: str
    input_data: str
    user_id: str | None
    user_type: str | None
    priority: int
    max_retries: int
    delay_s: float


# Rows per INSERT statement of enqueue_many.
ENQUEUE_CHUNK = 10_000


def _chunks(items: Iterable[NewJob], size: int) -> Iterator[list[NewJob]]:
    chunk: list[NewJob] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


@dataclass
class ClaimedJob:
    """A job that a worker holds under lease."""

    id: int
    type: str
    input_data: Any
    user_id: str | None
    user_type: str | None
    retry_count: int
    max_retries: int
    created_at: dt.datetime
    run_at: dt.datetime


@dataclass(frozen=True)
class TypeBacklog:
    """Backlog of one job type: due jobs, the next run_at and the best claim score."""

    type: str
    due: int
    next_run_at: dt.datetime | None
    # Seconds from now (database clock) to next_run_at; negative when a job is due.
    next_due_in_s: float | None
    head_score: float | None


class JobStore:
    """Job operations over one connection in autocommit mode."""

    def __init__(self, conn: psycopg.Connection[Any]) -> None:
        self.conn = conn

    # Producers

    def enqueue(self, job: NewJob) -> int:
        row = self.conn.execute(
            query("enqueue_one"),
            {
                "type": job.type,
                "input_data": job.input_data,
                "user_id": job.user_id,
                "user_type": job.user_type,
                "priority": job.priority,
                "max_retries": job.max_retries,
                "delay": job.delay_s,
            },
        ).fetchone()
        assert row is not None
        return int(row["id"])

    def enqueue_many(self, jobs: Iterable[NewJob]) -> list[int]:
        """Insert ``jobs`` in one transaction and return their ids in order.

        Jobs go out in statements of ENQUEUE_CHUNK rows over a pipeline, so the server
        inserts one chunk while the caller validates the next. An exception from ``jobs``
        (an invalid row) rolls back every chunk.
        """
        cursors = []
        with self.conn.transaction(), self.conn.pipeline():
            for chunk in _chunks(jobs, ENQUEUE_CHUNK):
                cursor = self.conn.cursor()
                cursor.execute(
                    query("enqueue_many"),
                    {
                        "types": [job.type for job in chunk],
                        "input_data": [job.input_data for job in chunk],
                        "user_ids": [job.user_id for job in chunk],
                        "user_types": [job.user_type for job in chunk],
                        "priorities": [job.priority for job in chunk],
                        "max_retries": [job.max_retries for job in chunk],
                        "delays": [job.delay_s for job in chunk],
                    },
                )
                cursors.append(cursor)
        return [int(row["id"]) for cursor in cursors for row in cursor.fetchall()]

    # Workers

    def claim(
        self,
        types: Sequence[str],
        worker: str,
        batch_size: int,
        lease_seconds: float,
        *,
        type_limits: Sequence[int] | None = None,
        max_per_user: int | None = None,
    ) -> list[ClaimedJob]:
        """Claim due jobs in priority order within the running-job limits over all nodes.

        ``type_limits`` is aligned with ``types``; None for either limit means no limit.
        """
        rows = self.conn.execute(
            query("claim"),
            {
                "types": list(types),
                "worker": worker,
                "batch_size": batch_size,
                "lease_seconds": lease_seconds,
                "type_limits": None if type_limits is None else list(type_limits),
                "max_per_user": max_per_user,
            },
        ).fetchall()
        return [ClaimedJob(**row) for row in rows]

    def complete_many(self, worker: str, results: Sequence[tuple[int, str]]) -> set[int]:
        """Store results (JSON text) of jobs the worker holds; return the ids it still held."""
        if not results:
            return set()
        rows = self.conn.execute(
            query("complete_many"),
            {
                "ids": [job_id for job_id, _ in results],
                "results": [result for _, result in results],
                "worker": worker,
            },
        ).fetchall()
        return {int(row["id"]) for row in rows}

    def postpone(self, job_id: int, worker: str, delay_s: float, reason: str) -> bool:
        """Return a held job to pending for ``delay_s`` seconds without counting an attempt.

        ``reason`` is kept in the job's ``error`` column, so that `jobvisor status` shows it.
        """
        row = self.conn.execute(
            query("postpone_job"),
            {"id": job_id, "worker": worker, "delay": delay_s, "reason": reason},
        ).fetchone()
        return row is not None

    def fail_attempt(
        self, job_id: int, worker: str, error: str, traceback: str | None, retry_delay_s: float
    ) -> dict[str, Any] | None:
        """Record a failed attempt; return the job's new status, or None if it was lost."""
        return self.conn.execute(
            query("fail_attempt"),
            {
                "id": job_id,
                "worker": worker,
                "error": error,
                "traceback": traceback,
                "retry_delay": retry_delay_s,
            },
        ).fetchone()

    def report_progress(self, job_id: int, worker: str, progress: int, step: str | None) -> bool:
        cursor = self.conn.execute(
            query("report_progress"),
            {"id": job_id, "worker": worker, "progress": progress, "step": step},
        )
        return cursor.rowcount > 0

    def requeue_unstarted(
        self, worker: str, job_ids: Iterable[int], reason: str
    ) -> list[dict[str, Any]]:
        """Give back jobs a worker claimed but did not start; the attempt does not count."""
        return self.conn.execute(
            query("requeue_jobs"),
            {"ids": list(job_ids), "worker": worker, "reason": reason, "count_attempt": False},
        ).fetchall()

    # Supervisors

    def renew_leases(self, workers: Sequence[str], lease_seconds: float) -> int:
        if not workers:
            return 0
        cursor = self.conn.execute(
            query("renew_leases"), {"workers": list(workers), "lease_seconds": lease_seconds}
        )
        return cursor.rowcount

    def requeue_workers(
        self, workers: Sequence[str], reason: str, *, count_attempt: bool = True
    ) -> list[dict[str, Any]]:
        """Requeue what the given workers held; a counted attempt may fail the job instead."""
        if not workers:
            return []
        return self.conn.execute(
            query("requeue_workers"),
            {"workers": list(workers), "reason": reason, "count_attempt": count_attempt},
        ).fetchall()

    def requeue_expired(self) -> list[dict[str, Any]]:
        return self.conn.execute(query("requeue_expired")).fetchall()

    def pending_summary(self, types: Sequence[str], cap: int) -> dict[str, TypeBacklog]:
        rows = self.conn.execute(
            query("pending_summary"), {"types": list(types), "cap": cap}
        ).fetchall()
        return {
            row["type"]: TypeBacklog(
                type=row["type"],
                due=int(row["due"]),
                next_run_at=row["next_run_at"],
                next_due_in_s=None if row["next_due_in_s"] is None else float(row["next_due_in_s"]),
                head_score=None if row["head_score"] is None else float(row["head_score"]),
            )
            for row in rows
        }

    def processing_count(self, types: Sequence[str]) -> int:
        row = self.conn.execute(query("processing_count"), {"types": list(types)}).fetchone()
        return int(row["processing"]) if row else 0

    # Operators

    def status_counts(self) -> list[dict[str, Any]]:
        return self.conn.execute(query("status_counts")).fetchall()

    def get_job(self, job_id: int) -> dict[str, Any] | None:
        return self.conn.execute(query("get_job"), {"id": job_id}).fetchone()

    def cleanup_batch(self, days: int, batch_size: int) -> int:
        row = self.conn.execute(
            query("cleanup_batch"), {"days": days, "batch_size": batch_size}
        ).fetchone()
        return int(row["deleted"]) if row else 0

    def job_outcomes(self, job_ids: Sequence[int]) -> list[dict[str, Any]]:
        return self.conn.execute(query("job_outcomes"), {"ids": list(job_ids)}).fetchall()
