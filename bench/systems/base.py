"""The interface of a compared system, and the drain measurement that most systems share."""

from __future__ import annotations

import abc
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, LiteralString

import psycopg

from bench import database
from bench.processes import ManagedProcess, pause, resume, wait_until

# Seconds between checks for unfinished jobs while a drain runs (one EXISTS query each), and
# between counts for the progress bar.
FINISH_POLL_S = 0.01
PROGRESS_POLL_S = 0.5
# Maximum wait for worker processes to connect and for a drain to finish (seconds).
READY_TIMEOUT_S = 60.0
DRAIN_TIMEOUT_S = 1800.0

Progress = Callable[[int], None]


@dataclass
class Drain:
    """One measured drain: ``jobs`` released at once and finished after ``seconds``."""

    jobs: int
    seconds: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def jobs_per_s(self) -> float:
        return self.jobs / self.seconds


class QueueSystem(abc.ABC):
    """A job system under test in one scratch database.

    ``start`` launches its worker processes, ``drain`` measures one release of no-op jobs,
    ``enqueue_stamp`` enqueues one latency job, and ``stop`` ends every process.
    """

    name: str
    # Tables that hold this system's jobs, which reset() empties between repetitions.
    tables: tuple[str, ...] = ()
    # Queries that return whether any job is unfinished (column busy) and how many (jobs).
    unfinished_sql: LiteralString = "SELECT false AS busy"
    unfinished_count_sql: LiteralString = "SELECT 0 AS jobs"

    def __init__(self, dsn: str, workdir: Path) -> None:
        self.dsn = dsn
        self.workdir = workdir
        self.processes: list[ManagedProcess] = []
        self._monitor: psycopg.Connection[Any] | None = None

    @property
    def monitor(self) -> psycopg.Connection[Any]:
        """The bench's own connection to the scratch database, for counts and resets."""
        if self._monitor is None or self._monitor.closed:
            self._monitor = database.connect(self.dsn, application_name="bench-monitor")
        return self._monitor

    def settings(self) -> dict[str, Any]:
        """Describe how this system is configured, for the result file."""
        return {}

    @abc.abstractmethod
    def install(self) -> None:
        """Create the system's schema in the scratch database."""

    @abc.abstractmethod
    def start(self, workers: int, kind: str) -> None:
        """Start ``workers`` worker processes for jobs of ``kind`` (noop or stamp)."""

    @abc.abstractmethod
    def enqueue_noop(self, count: int) -> None:
        """Enqueue ``count`` no-op jobs in one transaction."""

    @abc.abstractmethod
    def enqueue_stamp(self, seq: int) -> None:
        """Enqueue one job whose handler records its start time under ``seq``."""

    def unfinished(self) -> bool:
        row = self.monitor.execute(self.unfinished_sql).fetchone()
        return bool(row and row["busy"])

    def unfinished_count(self) -> int:
        row = self.monitor.execute(self.unfinished_count_sql).fetchone()
        return int(row["jobs"]) if row else 0

    def reset(self) -> None:
        """Empty the job tables between repetitions, so each starts from the same state."""
        if self.tables:
            names = ", ".join(self.tables)
            self.monitor.execute(f"TRUNCATE {names}")  # type: ignore[arg-type]

    def drain(self, count: int, progress: Progress | None = None) -> Drain:
        """Release ``count`` no-op jobs at once to idle workers and time them until done.

        The worker processes are paused with SIGSTOP while the jobs are enqueued, and the
        clock starts when SIGCONT resumes them. So neither the insert nor the time that the
        bench takes to read the enqueue call's result counts, and every worker can claim the
        new jobs from the same moment. The clock stops at the start of the first check that finds
        no unfinished job; checks run every FINISH_POLL_S.
        """
        pause(self.processes)
        try:
            self.enqueue_noop(count)
        finally:
            released = time.time()
            resume(self.processes)
        next_progress = 0.0
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while True:
            checked = time.time()
            if not self.unfinished():
                break
            if progress is not None and time.monotonic() >= next_progress:
                progress(count - self.unfinished_count())
                next_progress = time.monotonic() + PROGRESS_POLL_S
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{self.name}: {self.unfinished_count()} of {count} jobs still unfinished "
                    f"after {DRAIN_TIMEOUT_S:g} s"
                )
            for process in self.processes:
                process.check_alive()
            time.sleep(FINISH_POLL_S)
        if progress is not None:
            progress(count)
        return Drain(jobs=count, seconds=checked - released)

    def prime(self, workers: int) -> None:
        """Run a small drain so that every worker process is up before measuring."""
        self.drain(max(200 * workers, 200))
        self.reset()

    def wait_for_connections(
        self, prefix: str, count: int, *, distinct: bool = False,
        timeout_s: float = READY_TIMEOUT_S,
    ) -> None:
        """Wait until ``count`` backends whose application_name starts with ``prefix`` exist.

        With ``distinct``, ``count`` different application names must be connected, for
        systems that give each worker process a name of its own.
        """
        def ready() -> bool:
            names = database.application_names(self.dsn, prefix)
            return len(set(names) if distinct else names) >= count

        wait_until(
            ready,
            timeout_s=timeout_s,
            what=f"{count} {self.name} worker connections ({prefix}*)",
            interval_s=0.1,
            processes=self.processes,
        )

    def stop(self) -> None:
        """Stop every worker process and close the bench's connections."""
        for process in self.processes:
            process.stop()
        self.processes = []
        if self._monitor is not None:
            self._monitor.close()
            self._monitor = None
