"""The floor: bare SQL claims and completions on jobvisor's table, with no job framework.

Each of W processes (multiprocessing, spawn) opens one psycopg connection and repeats two
autocommit statements until a claim returns nothing:

* claim: ``UPDATE ... WHERE id IN (SELECT id ... FOR UPDATE SKIP LOCKED LIMIT 100)
  RETURNING id``, setting the columns that the table's constraints require of a job in
  processing (``locked_by``, ``lease_expires_at``);
* complete: ``UPDATE ... SET status = 'completed' ... WHERE id = ANY(ids)``.

No Python work happens between them, so this is about the most that the server can do with
this table on this machine.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import queue
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import jobvisor_rows
from bench.systems.base import DRAIN_TIMEOUT_S, READY_TIMEOUT_S, Drain, Progress, QueueSystem
from bench.systems.jobvisor_system import JobvisorSystem

BATCH = 100
CLAIM = """
UPDATE background_jobs
SET status = 'processing', locked_by = %(worker)s,
    lease_expires_at = now() + interval '60 seconds', started_at = now(), updated_at = now()
WHERE id IN (
    SELECT id FROM background_jobs
    WHERE status = 'pending'
    LIMIT %(batch)s
    FOR UPDATE SKIP LOCKED
)
RETURNING id
"""
COMPLETE = """
UPDATE background_jobs
SET status = 'completed', completed_at = now(), updated_at = now(),
    locked_by = NULL, lease_expires_at = NULL
WHERE id = ANY(%(ids)s)
"""


def floor_worker(dsn: str, index: int, barrier: Any, results: Any) -> None:
    """Claim and complete batches until none is left; put (index, jobs, finished_at)."""
    worker = f"floor-{index}"
    done = 0
    with psycopg.connect(dsn, autocommit=True, application_name=f"bench-floor-{index}") as conn:
        barrier.wait(timeout=READY_TIMEOUT_S)
        while True:
            ids = [row[0] for row in conn.execute(CLAIM, {"worker": worker, "batch": BATCH})]
            if not ids:
                break
            conn.execute(COMPLETE, {"ids": ids})
            done += len(ids)
        results.put((index, done, time.time()))


class FloorSystem(QueueSystem):
    """Bare SQL on jobvisor's table: the reference that the other systems are divided by."""

    name = "floor"
    tables = JobvisorSystem.tables
    unfinished_sql = JobvisorSystem.unfinished_sql
    unfinished_count_sql = JobvisorSystem.unfinished_count_sql

    def __init__(self, dsn: str, workdir: Path) -> None:
        super().__init__(dsn, workdir)
        self.workers = 1

    def settings(self) -> dict[str, Any]:
        return {"batch": BATCH, "processes": self.workers, "claim_sql": CLAIM.strip(),
                "complete_sql": COMPLETE.strip()}

    def install(self) -> None:
        JobvisorSystem(self.dsn, self.workdir).install()

    def start(self, workers: int, kind: str) -> None:
        if kind != "noop":
            raise ValueError(f"the floor runs only no-op jobs, not {kind!r}")
        self.workers = workers

    def prime(self, workers: int) -> None:
        """Nothing to prime: the processes of each drain connect before the clock starts."""

    def enqueue_noop(self, count: int) -> None:
        jobvisor_rows.insert_pending(self.monitor, count)

    def enqueue_stamp(self, seq: int) -> None:
        raise NotImplementedError("the floor has no handlers, so it has no start latency")

    def drain(self, count: int, progress: Progress | None = None) -> Drain:
        """Insert ``count`` jobs, then time W processes that claim and complete all of them.

        The clock starts when every process has connected and passed a barrier, and stops
        at the latest finish time that a process reports.
        """
        jobvisor_rows.insert_pending(self.monitor, count)
        context = multiprocessing.get_context("spawn")
        barrier = context.Barrier(self.workers + 1)
        results = context.Queue()
        processes = [
            context.Process(target=floor_worker, args=(self.dsn, i, barrier, results), daemon=True)
            for i in range(self.workers)
        ]
        try:
            for process in processes:
                process.start()
            barrier.wait(timeout=READY_TIMEOUT_S)
            started = time.time()
            reports = []
            deadline = time.monotonic() + DRAIN_TIMEOUT_S
            while len(reports) < self.workers:
                try:
                    reports.append(results.get(timeout=0.5))
                except queue.Empty:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"floor did not finish {count} jobs in "
                                           f"{DRAIN_TIMEOUT_S:g} s") from None
                    dead = [p for p in processes if p.exitcode not in (None, 0)]
                    if dead:
                        raise RuntimeError(
                            f"floor process exited with code {dead[0].exitcode}"
                        ) from None
                if progress is not None:
                    progress(sum(report[1] for report in reports))
        finally:
            for process in processes:
                if process.pid is None:
                    continue
                process.join(timeout=5)
                if process.is_alive():
                    process.kill()
                    process.join(timeout=5)
        done = sum(report[1] for report in reports)
        if done != count or self.unfinished():
            raise RuntimeError(f"floor completed {done} of {count} jobs")
        if progress is not None:
            progress(count)
        finished = max(report[2] for report in reports)
        return Drain(jobs=count, seconds=finished - started,
                     extra={"per_process": sorted(report[1] for report in reports)})

    def stop(self) -> None:
        with contextlib.suppress(Exception):
            super().stop()
