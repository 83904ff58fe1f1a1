"""Forking worker processes and tracking what each one is doing."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from jobvisor.app import App
    from jobvisor.config import Settings
    from jobvisor.telemetry.shm import TelemetryBlock

logger = logging.getLogger(__name__)

# Exit code of a child that failed before its claim loop started (for example, no database).
EXIT_BOOT_FAILURE = 3
_SUPERVISOR_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP}


@dataclass(frozen=True)
class Attempt:
    """One finished job attempt as a worker reported it. Times are in seconds."""

    job_id: int
    ok: bool
    # From the job's creation to the end of the attempt, by the worker's clock.
    latency_s: float
    processing_s: float
    finished_at: float


@dataclass
class Child:
    """One forked worker process, as the supervisor tracks it."""

    pid: int
    job_type: str
    worker_id: str
    status_fd: int
    # Index of the child's slot in the telemetry block, or None without a free slot.
    slot: int | None = None
    started_at: float = field(default_factory=time.monotonic)
    # Set while the child runs a job: its id, when it started (monotonic) and its timeout.
    job_id: int | None = None
    job_started_at: float | None = None
    job_timeout_s: float | None = None
    jobs_done: int = 0
    # Why the supervisor asked this child to stop or killed it, if it did.
    stop_reason: str | None = None
    kill_reason: str | None = None
    # Set when the child exceeds its memory budget: it is stopped once its job ends.
    recycle_reason: str | None = None
    # Attempts reported since the supervisor last collected them.
    attempts: list[Attempt] = field(default_factory=list)
    _buffer: bytes = b""

    @property
    def busy(self) -> bool:
        return self.job_id is not None

    def read_status(self) -> bool:
        """Read what the child wrote to its status pipe; False once the pipe is closed."""
        try:
            chunk = os.read(self.status_fd, 65536)
        except BlockingIOError:
            return True
        except OSError:
            return False
        if not chunk:
            return False
        self._buffer += chunk
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._apply(line.decode(errors="replace").split())
        return True

    def _apply(self, words: list[str]) -> None:
        if len(words) == 3 and words[0] == "S":
            self.job_id = int(words[1])
            self.job_started_at = time.monotonic()
            self.job_timeout_s = float(words[2])
        elif len(words) == 5 and words[0] == "D":
            self.attempts.append(
                Attempt(
                    job_id=int(words[1]),
                    ok=words[2] == "ok",
                    latency_s=float(words[3]),
                    processing_s=float(words[4]),
                    finished_at=time.time(),
                )
            )
            self.job_id = None
            self.job_started_at = None
            self.job_timeout_s = None
            self.jobs_done += 1
        else:
            logger.warning("child %d wrote an unknown status line %r", self.pid, " ".join(words))

    def signal(self, signum: int) -> None:
        """Send ``signum``; after SIGTERM also SIGCONT, so a throttled child acts on it."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signum)
            if signum == signal.SIGTERM:
                os.kill(self.pid, signal.SIGCONT)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self.status_fd)


def spawn_child(
    app: App,
    job_type: str,
    settings: Settings,
    *,
    close_fds: list[int],
    node: str,
    telemetry: tuple[TelemetryBlock, int] | None = None,
) -> Child:
    """Fork a worker process for ``job_type`` and return its handle.

    Signals are blocked around fork() so that the child cannot run the supervisor's
    handlers before it installs its own.
    """
    from jobvisor.workers.worker import Worker

    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    token = f"{random.getrandbits(32):08x}"
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SUPERVISOR_SIGNALS)
    try:
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child, measured by the tests' outcomes
            code = EXIT_BOOT_FAILURE
            try:
                os.close(read_fd)
                for fd in close_fds:
                    with contextlib.suppress(OSError):
                        os.close(fd)
                os.set_blocking(write_fd, False)
                random.seed()
                worker = Worker(
                    app,
                    [job_type],
                    worker_id=f"{node}:{os.getpid()}:{token}",
                    settings=settings,
                    status_fd=write_fd,
                    telemetry=telemetry,
                    max_jobs=settings.max_jobs_per_worker,
                )
                _install_child_signals(worker)
                signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
                code = worker.run()
            except BaseException:
                logger.exception("worker for %s (pid %d) failed", job_type, os.getpid())
                code = code or 1
            finally:
                logging.shutdown()
                os._exit(code)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
    os.close(write_fd)
    worker_id = f"{node}:{pid}:{token}"
    logger.info("started worker %s for %s", worker_id, job_type)
    slot = None if telemetry is None else telemetry[1]
    return Child(pid=pid, job_type=job_type, worker_id=worker_id, status_fd=read_fd, slot=slot)


def _install_child_signals(worker: object) -> None:
    from jobvisor.workers.worker import Worker

    assert isinstance(worker, Worker)
    signal.set_wakeup_fd(-1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    # Ctrl-C and a closed terminal's SIGHUP reach the whole process group; the supervisor
    # decides what the workers do.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, lambda signum, frame: worker.stop())
