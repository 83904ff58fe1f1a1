"""Starting test applications as supervisor processes, and watching them from a test.

Each supervisor runs in its own session, so its process group contains it and every worker it
forks, and ``kill_tree`` can end all of them even after the supervisor itself is gone.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

# Settings for every supervisor under test: 4 jobs at once, a fixed limit unless a test
# turns adaptive concurrency on. Leases last 3 s (renewed every 1 s), the drain timeout is
# 20 s, and idle workers poll every 1000 ms besides LISTEN/NOTIFY.
SUPERVISOR_ENV = {
    "MAX_CONCURRENT_JOBS": "4",
    "JOBVISOR_ADAPTIVE_CONCURRENCY": "0",
    "JOBVISOR_LEASE_SECONDS": "3",
    "JOBVISOR_DRAIN_TIMEOUT": "20",
    "JOB_PROCESSING_INTERVAL": "1000",
}

STARTED_WORKER = re.compile(
    r"^(?P<time>\d+\.\d+) .* started worker (?P<worker>\S+) for (?P<type>\S+)$"
)


@dataclass
class WorkerStart:
    """One "started worker" log line: when (Unix time), the worker's pid and its job type."""

    time: float
    pid: int
    job_type: str
    worker_id: str


@dataclass
class SupervisorProcess:
    """A supervisor subprocess whose stderr and stdout go to ``log_path``."""

    name: str
    process: subprocess.Popen[bytes]
    log_path: Path
    known_children: set[int] = field(default_factory=set)

    @property
    def pid(self) -> int:
        return self.process.pid

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 40) -> str:
        tail = self.log().splitlines()[-lines:]
        return f"--- last {len(tail)} log lines of {self.name} (pid {self.pid}) ---\n" + "\n".join(
            tail
        )

    def worker_starts(self, job_type: str | None = None) -> list[WorkerStart]:
        """Return the workers this supervisor logged as started, oldest first."""
        starts = []
        for line in self.log().splitlines():
            match = STARTED_WORKER.match(line)
            if match is None or (job_type is not None and match["type"] != job_type):
                continue
            # A worker id is "host:supervisor_pid:worker_pid:token".
            pid = int(match["worker"].split(":")[-2])
            starts.append(WorkerStart(float(match["time"]), pid, match["type"], match["worker"]))
        return starts

    def worker_pids(self) -> set[int]:
        return {start.pid for start in self.worker_starts()}

    def children(self) -> list[psutil.Process]:
        """Return the supervisor's live child processes (and remember their pids)."""
        try:
            found = psutil.Process(self.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return []
        self.known_children.update(child.pid for child in found)
        return found

    def running(self) -> bool:
        return self.process.poll() is None

    def wait_exit(self, timeout: float) -> int:
        """Wait up to ``timeout`` seconds for the supervisor to exit and return its exit code."""
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"supervisor {self.name} (pid {self.pid}) did not exit within {timeout:g} s\n{self.log_tail()}"
            ) from None

    def send(self, signum: int) -> None:
        os.kill(self.pid, signum)

    def kill_tree(self) -> None:
        """SIGKILL the supervisor and every process of its group, then reap the supervisor."""
        self.children()
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        for pid in self.known_children:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=10)


class SupervisorLauncher:
    """Launcher of test applications as supervisors. ``cleanup`` kills whatever is left."""

    def __init__(self, env: dict[str, str], log_dir: Path) -> None:
        self.env = {**env, **SUPERVISOR_ENV}
        self.log_dir = log_dir
        self.started: list[SupervisorProcess] = []

    def start(
        self,
        module: str,
        *,
        name: str | None = None,
        exit_when_idle: bool = False,
        env: dict[str, str] | None = None,
    ) -> SupervisorProcess:
        """Run ``python -m apps.MODULE`` as a supervisor in a new session."""
        name = name or f"{module}-{len(self.started) + 1}"
        log_path = self.log_dir / f"{name}.log"
        args = [sys.executable, "-m", f"apps.{module}"]
        if exit_when_idle:
            args.append("--exit-when-idle")
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                args,
                env={**self.env, **(env or {})},
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        supervisor = SupervisorProcess(name, process, log_path)
        self.started.append(supervisor)
        return supervisor

    def logs(self) -> str:
        return "\n".join(s.log_tail() for s in self.started)

    def cleanup(self) -> None:
        for supervisor in self.started:
            supervisor.kill_tree()


def wait_until(
    condition: Callable[[], Any],
    timeout: float,
    describe: str | Callable[[], str],
    *,
    interval: float = 0.05,
) -> Any:
    """Poll ``condition`` until it returns a true value, and return that value.

    Raises AssertionError with ``describe`` (a text, or a function that builds one from the
    state at the deadline) when ``timeout`` seconds pass first.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            message = describe() if callable(describe) else describe
            raise AssertionError(f"timed out after {timeout:g} s: {message}")
        time.sleep(interval)


def process_gone(pid: int) -> bool:
    """Return whether ``pid`` has exited (a zombie waiting for its parent counts as exited)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def job_rows(db: Any, ids: list[int] | None = None) -> list[dict[str, Any]]:
    """Return jobs (all, or the given ids) ordered by id, with status as text."""
    sql = (
        "SELECT id, type, status::text AS status, retry_count, max_retries, error, attempts, "
        "locked_by, started_at, completed_at FROM background_jobs"
    )
    if ids is None:
        return db.execute(sql + " ORDER BY id").fetchall()
    return db.execute(sql + " WHERE id = ANY(%s) ORDER BY id", (ids,)).fetchall()


def status_counts(db: Any) -> dict[str, int]:
    rows = db.execute(
        "SELECT status::text AS status, count(*) AS n FROM background_jobs GROUP BY 1"
    ).fetchall()
    return {row["status"]: row["n"] for row in rows}


def runs(db: Any, job_id: int | None = None) -> list[dict[str, Any]]:
    """Return handler_runs rows (all, or one job's) in start order."""
    if job_id is None:
        return db.execute("SELECT * FROM handler_runs ORDER BY started_at, job_id").fetchall()
    return db.execute(
        "SELECT * FROM handler_runs WHERE job_id = %s ORDER BY started_at", (job_id,)
    ).fetchall()


def wait_for_runs(
    db: Any, count: int, supervisor: SupervisorProcess, timeout: float = 30
) -> list[dict[str, Any]]:
    """Wait until handler_runs has at least ``count`` rows and return them."""

    def enough() -> list[dict[str, Any]] | None:
        rows = runs(db)
        return rows if len(rows) >= count else None

    return wait_until(
        enough,
        timeout,
        lambda: (
            f"{count} jobs should start, handler_runs has {len(runs(db))} rows\n{supervisor.log_tail()}"
        ),
    )


def wait_for_status(
    db: Any, job_ids: list[int], status: str, timeout: float, logs: Callable[[], str]
) -> list[dict[str, Any]]:
    """Wait until every job in ``job_ids`` has ``status`` and return their rows."""

    def reached() -> list[dict[str, Any]] | None:
        rows = job_rows(db, job_ids)
        return rows if all(row["status"] == status for row in rows) else None

    return wait_until(
        reached,
        timeout,
        lambda: (
            f"jobs should be {status}: {[(r['id'], r['status']) for r in job_rows(db, job_ids)]}\n{logs()}"
        ),
        interval=0.1,
    )


@contextlib.contextmanager
def launcher(env: dict[str, str], log_dir: Path) -> Iterator[SupervisorLauncher]:
    log_dir.mkdir(parents=True, exist_ok=True)
    started = SupervisorLauncher(env, log_dir)
    try:
        yield started
    finally:
        started.cleanup()
