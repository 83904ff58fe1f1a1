"""jobvisor: a supervisor started with ``jobvisor run``, and jobs enqueued with its App."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path
from typing import Any

from bench.processes import ManagedProcess, child_environment, python_command
from bench.stamps import STAMP_FILE_VARIABLE
from bench.systems.base import QueueSystem
from jobvisor import App, Settings
from jobvisor.db.connection import connect as jobvisor_connect
from jobvisor.db.migrations import migrate

logger = logging.getLogger(__name__)

# Settings of the supervisor under test: the node runs exactly the requested number of
# workers (adaptive concurrency off), memory budgets never stop a worker from starting,
# and workers are not recycled during a run.
BASE_ENVIRONMENT = {
    "JOBVISOR_ADAPTIVE_CONCURRENCY": "0",
    "JOB_MEMORY_LIMIT": "4096",
    "JOBVISOR_MAX_JOBS_PER_WORKER": "1000000000",
}
APPS = {"noop": "bench.apps:noop_app", "stamp": "bench.apps:stamp_app",
        "sleep": "bench.apps:sleep_app"}


class JobvisorSystem(QueueSystem):
    """jobvisor at the commit in this repository."""

    name = "jobvisor"
    tables = ("background_jobs",)
    unfinished_sql = (
        "SELECT EXISTS (SELECT 1 FROM background_jobs "
        "WHERE status IN ('pending', 'processing')) AS busy"
    )
    unfinished_count_sql = (
        "SELECT count(*) AS jobs FROM background_jobs WHERE status IN ('pending', 'processing')"
    )

    def __init__(self, dsn: str, workdir: Path, environment: dict[str, str] | None = None):
        super().__init__(dsn, workdir)
        self.extra_environment = environment or {}
        self.environment: dict[str, str] = {}
        self._app: App | None = None
        self.supervisor: ManagedProcess | None = None
        self.home = workdir / "home"

    def settings(self) -> dict[str, Any]:
        return {
            "runner": "python -m jobvisor run --app bench.apps:<app>",
            "environment": self.environment,
            "claim_batch_max": Settings.claim_batch_max,
        }

    def install(self) -> None:
        with contextlib.closing(jobvisor_connect(self.dsn, application_name="bench-setup")) as conn:
            migrate(conn)

    def app(self) -> App:
        """Return the producer App, which registers the job types of bench.apps."""
        if self._app is None:
            from bench.apps import producer_app

            self._app = producer_app(self.dsn)
        return self._app

    def start(self, workers: int, kind: str) -> None:
        """Start a supervisor for ``kind`` with ``workers`` workers and wait for its workers.

        The supervisor starts one idle worker at once and forks the others when jobs arrive,
        so for noop a priming drain brings all of them up before measuring.
        """
        self.start_supervisor(
            APPS[kind],
            {
                **BASE_ENVIRONMENT,
                "MAX_CONCURRENT_JOBS": str(workers),
                "BENCH_CONCURRENCY": str(workers),
                **self.extra_environment,
            },
        )
        if kind == "sleep":
            return
        self.wait_for_connections(f"jobvisor-worker {kind}", 1)
        if kind == "noop":
            self.prime(workers)
            self.wait_for_connections(f"jobvisor-worker {kind}", workers)

    def start_supervisor(
        self, app: str, environment: dict[str, str], *, exit_when_idle: bool = False
    ) -> ManagedProcess:
        """Start ``jobvisor run --app APP`` with ``environment`` on top of this process's.

        ``JOBVISOR_HOME`` defaults to ``home`` in the work directory, so the telemetry
        snapshot and the shared memory block belong to this run only.
        """
        self.environment = {
            "JOBVISOR_HOME": str(self.home),
            STAMP_FILE_VARIABLE: str(self.workdir / "stamps.txt"),
            **environment,
        }
        argv = python_command("jobvisor", "--dsn", self.dsn, "run", "--app", app)
        if exit_when_idle:
            argv.append("--exit-when-idle")
        name = app.rsplit(":", 1)[-1]
        self.supervisor = ManagedProcess(
            f"jobvisor supervisor ({app})", argv, child_environment(self.environment),
            self.workdir / f"jobvisor-{name}.log",
        )
        self.processes.append(self.supervisor)
        return self.supervisor

    def enqueue_noop(self, count: int) -> None:
        ids = self.app().enqueue_many({"job_type": "noop", "data": {}} for _ in range(count))
        if len(ids) != count:
            raise RuntimeError(f"jobvisor enqueue_many stored {len(ids)} of {count} jobs")

    def enqueue_stamp(self, seq: int) -> None:
        self.app().enqueue("stamp", {"seq": seq})

    def stop(self) -> None:
        super().stop()
        if self._app is not None:
            self._app.close()
            self._app = None
        self._remove_leaked_segment()

    def _remove_leaked_segment(self) -> None:
        """Unlink the telemetry block of a supervisor that was killed before it could."""
        snapshot = self.home / "telemetry" / "snapshot.json"
        try:
            segment = json.loads(snapshot.read_text())["node"]["telemetry_segment"]
        except (OSError, ValueError, KeyError, TypeError):
            return
        if not segment:
            return
        path = Path("/dev/shm") / segment
        if path.exists():
            logger.warning("removing telemetry block %s that a killed supervisor left", path)
            with contextlib.suppress(OSError):
                path.unlink()
