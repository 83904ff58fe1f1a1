"""Procrastinate: W worker processes of asyncio sub-workers, jobs deferred in one batch."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.processes import ManagedProcess, child_environment, python_command
from bench.stamps import STAMP_FILE_VARIABLE
from bench.systems.base import QueueSystem
from bench.workers.procrastinate_worker import make_app

# Jobs that one worker process runs at once. Procrastinate's documentation ("Execute
# multiple jobs at the same time") suggests several worker processes and, for asynchronous
# tasks, a worker concurrency (its example uses 30). The bench's tasks are async; 10 with
# one connection each keeps 4 processes at 44 connections, within the default
# max_connections of 100.
CONCURRENCY = 10
# Connections per worker process: one for LISTEN and one per concurrent job.
POOL_SIZE = CONCURRENCY + 1


class ProcrastinateSystem(QueueSystem):
    """Procrastinate with its PsycopgConnector."""

    name = "procrastinate"
    tables = ("procrastinate_jobs CASCADE",)
    unfinished_sql = (
        "SELECT EXISTS (SELECT 1 FROM procrastinate_jobs "
        "WHERE status IN ('todo', 'doing')) AS busy"
    )
    unfinished_count_sql = (
        "SELECT count(*) AS jobs FROM procrastinate_jobs WHERE status IN ('todo', 'doing')"
    )

    def __init__(self, dsn: str, workdir: Path, *, concurrency: int = CONCURRENCY,
                 pool_size: int = POOL_SIZE) -> None:
        super().__init__(dsn, workdir)
        self.concurrency = concurrency
        self.pool_size = pool_size
        self.workers = 0
        self._loop = asyncio.new_event_loop()
        self._app = make_app(dsn, application_name="bench-producer", pool_size=2)
        self._opened = False

    def settings(self) -> dict[str, Any]:
        return {
            "processes": self.workers,
            "concurrency": self.concurrency,
            "pool_size": self.pool_size,
            "connector": "PsycopgConnector",
            "listen_notify": True,
            "delete_jobs": "never",
            "task": "async def, no work",
            "enqueue": "Task.batch_defer_async (one statement)",
        }

    def _run(self, coroutine: Any) -> Any:
        if not self._opened:
            self._loop.run_until_complete(self._app.open_async())
            self._opened = True
        return self._loop.run_until_complete(coroutine)

    def install(self) -> None:
        self._run(self._app.schema_manager.apply_schema_async())

    def start(self, workers: int, kind: str) -> None:
        self.workers = workers
        env = child_environment({STAMP_FILE_VARIABLE: str(self.workdir / "stamps.txt")})
        for index in range(workers):
            name = f"bench-procrastinate-{index}"
            argv = python_command(
                "bench.workers.procrastinate_worker", "--dsn", self.dsn, "--name", name,
                "--concurrency", str(self.concurrency), "--pool-size", str(self.pool_size),
            )
            self.processes.append(
                ManagedProcess(name, argv, env, self.workdir / f"{name}.log")
            )
        self.wait_for_connections("bench-procrastinate-", workers, distinct=True)
        self.prime(workers)

    def enqueue_noop(self, count: int) -> None:
        deferrer = self._app.configure_task(name="noop")
        ids = self._run(deferrer.batch_defer_async(*({} for _ in range(count))))
        if len(ids) != count:
            raise RuntimeError(f"procrastinate deferred {len(ids)} of {count} jobs")

    def enqueue_stamp(self, seq: int) -> None:
        self._run(self._app.configure_task(name="stamp").defer_async(seq=seq))

    def stop(self) -> None:
        super().stop()
        if self._opened:
            self._loop.run_until_complete(self._app.close_async())
            self._opened = False
        self._loop.close()
