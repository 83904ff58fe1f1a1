"""PgQueuer: W worker processes, each one QueueManager on one connection of a driver."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from bench.processes import ManagedProcess, child_environment, python_command
from bench.stamps import STAMP_FILE_VARIABLE
from bench.systems.base import QueueSystem
from bench.workers.pgqueuer_worker import open_connection, queries_for

# Jobs per dequeue. PgQueuer's performance guide advises raising batch_size (default 10)
# for jobs shorter than a second; 100 matches the floor's and jobvisor's largest batch.
BATCH_SIZE = 100


class PgQueuerSystem(QueueSystem):
    """PgQueuer with the asyncpg or the psycopg driver."""

    tables = ("pgqueuer", "pgqueuer_log", "pgqueuer_statistics")
    unfinished_sql = "SELECT EXISTS (SELECT 1 FROM pgqueuer) AS busy"
    unfinished_count_sql = "SELECT count(*) AS jobs FROM pgqueuer"

    def __init__(self, dsn: str, workdir: Path, *, driver: str,
                 batch_size: int = BATCH_SIZE) -> None:
        super().__init__(dsn, workdir)
        self.driver = driver
        self.name = f"pgqueuer-{driver}"
        self.batch_size = batch_size
        self.workers = 0
        self._loop = asyncio.new_event_loop()
        self._connection: Any = None
        self._queries: Any = None
        self.autovacuum_tuned = False

    def settings(self) -> dict[str, Any]:
        return {
            "processes": self.workers,
            "driver": self.driver,
            "batch_size": self.batch_size,
            "max_concurrent_tasks": None,
            "durability": "durable (default)",
            "autovacuum": ("Queries.optimize_autovacuum (pgq autovac)" if self.autovacuum_tuned
                           else "server defaults (this PgQueuer has no optimize_autovacuum)"),
            "entrypoint": "async def, no work; concurrency_limit 0 (no limit)",
            "enqueue": "Queries.enqueue with lists (one statement)",
        }

    def _run(self, coroutine: Any) -> Any:
        return self._loop.run_until_complete(coroutine)

    def _open(self) -> Any:
        if self._queries is None:
            self._connection = self._run(
                open_connection(self.dsn, self.driver, "bench-producer")
            )
            self._queries = queries_for(self._connection, self.driver)
        return self._queries

    def install(self) -> None:
        queries = self._open()
        self._run(queries.install())
        # PgQueuer's performance guide lists `pgq autovac` for high-churn queue tables.
        self.autovacuum_tuned = hasattr(queries, "optimize_autovacuum")
        if self.autovacuum_tuned:
            self._run(queries.optimize_autovacuum())

    def start(self, workers: int, kind: str) -> None:
        self.workers = workers
        env = child_environment({STAMP_FILE_VARIABLE: str(self.workdir / "stamps.txt")})
        for index in range(workers):
            name = f"bench-{self.name}-{index}"
            argv = python_command(
                "bench.workers.pgqueuer_worker", "--dsn", self.dsn, "--driver", self.driver,
                "--name", name, "--batch-size", str(self.batch_size),
            )
            self.processes.append(ManagedProcess(name, argv, env, self.workdir / f"{name}.log"))
        self.wait_for_connections(f"bench-{self.name}-", workers, distinct=True)
        self.prime(workers)

    def enqueue_noop(self, count: int) -> None:
        queries = self._open()
        ids = self._run(queries.enqueue(["noop"] * count, [None] * count, [0] * count))
        if len(ids) != count:
            raise RuntimeError(f"{self.name} enqueued {len(ids)} of {count} jobs")

    def enqueue_stamp(self, seq: int) -> None:
        self._run(self._open().enqueue("stamp", str(seq).encode()))

    def stop(self) -> None:
        super().stop()
        if self._connection is not None:
            self._run(self._connection.close())
            self._connection = None
            self._queries = None
        self._loop.close()
