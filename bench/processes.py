"""Worker processes that the bench starts, and the guarantee that it ends all of them.

Each command runs in a session of its own, so its process group contains it and everything
it forks. Stopping sends SIGTERM to the group, waits, then sends SIGKILL. Every group still
running when the bench exits, normally, by an exception or by SIGTERM, is killed.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import psutil

logger = logging.getLogger(__name__)

REPO_ROOT = Path(__file__).resolve().parent.parent
# Seconds a process group gets to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 15.0
LOG_TAIL_LINES = 20

_running: dict[int, ManagedProcess] = {}


class ManagedProcess:
    """One command started in its own session, with stdout and stderr in a log file."""

    def __init__(self, name: str, argv: Sequence[str], env: Mapping[str, str], log_path: Path):
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(log_path, "ab") as log:
            self.popen = subprocess.Popen(
                self.argv,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=REPO_ROOT,
            )
        self.pid = self.popen.pid
        _running[self.pid] = self
        logger.info("started %s (pid %d): %s", name, self.pid, " ".join(self.argv))

    def alive(self) -> bool:
        return self.popen.poll() is None

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Return the last lines of the process's log, for error messages."""
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def check_alive(self) -> None:
        """Raise RuntimeError with the log's tail if the process has exited."""
        code = self.popen.poll()
        if code is not None:
            raise RuntimeError(
                f"{self.name} (pid {self.pid}) exited with code {code}; the end of "
                f"{self.log_path}:\n{self.log_tail()}"
            )

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> int | None:
        """Send SIGTERM to the process group, then SIGKILL after ``timeout_s``.

        Returns the exit code of the started process, or None if it could not be reaped.
        """
        _signal_group(self.pid, signal.SIGTERM)
        # A group paused by pause() would not act on SIGTERM until it is continued.
        _signal_group(self.pid, signal.SIGCONT)
        deadline = time.monotonic() + timeout_s
        while self.popen.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        if self.popen.poll() is None:
            logger.warning("%s (pid %d) ignored SIGTERM for %.0f s; killing it", self.name,
                           self.pid, timeout_s)
        # Children of the group may outlive the leader, so the group always gets SIGKILL.
        _signal_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        _running.pop(self.pid, None)
        return self.popen.returncode

    def kill(self) -> None:
        """Kill the whole process group at once."""
        _signal_group(self.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.popen.wait(timeout=5)
        _running.pop(self.pid, None)


def pause(processes: Sequence[ManagedProcess], timeout_s: float = 5.0) -> None:
    """Stop every process of each group with SIGSTOP and wait until all of them are stopped."""
    for process in processes:
        _signal_group(process.pid, signal.SIGSTOP)
    deadline = time.monotonic() + timeout_s
    for process in processes:
        for member in _members(process.pid):
            while True:
                try:
                    if member.status() == psutil.STATUS_STOPPED:
                        break
                except psutil.NoSuchProcess:
                    break
                if time.monotonic() > deadline:
                    resume(processes)
                    raise TimeoutError(f"process {member.pid} of {process.name} did not stop "
                                       f"within {timeout_s:g} s of SIGSTOP")
                time.sleep(0.001)


def resume(processes: Sequence[ManagedProcess]) -> None:
    """Continue every process of each group with SIGCONT."""
    for process in processes:
        _signal_group(process.pid, signal.SIGCONT)


def _members(pid: int) -> list[psutil.Process]:
    try:
        leader = psutil.Process(pid)
        return [leader, *leader.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def _signal_group(pid: int, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def python_command(module: str, *args: str) -> list[str]:
    """Return the argv that runs ``python -m module args`` with this interpreter."""
    return [sys.executable, "-m", module, *args]


def child_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Return this process's environment for a child, with the repository on PYTHONPATH.

    jobvisor's settings variables, its DSN variables and ``JOBVISOR_HOME`` are removed, so
    a child runs with jobvisor's defaults plus ``extra``, whatever the caller's shell sets.
    """
    from jobvisor.config import ENVIRONMENT

    removed = {*ENVIRONMENT, "JOBVISOR_PROFILE", "JOBVISOR_HOME", "JOBVISOR_APP",
               "JOBVISOR_DSN", "DATABASE_URL"}
    env = {key: value for key, value in os.environ.items() if key not in removed}
    env["PYTHONPATH"] = os.pathsep.join(
        part for part in (str(REPO_ROOT), env.get("PYTHONPATH", "")) if part
    )
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def wait_until(
    condition: Callable[[], bool],
    *,
    timeout_s: float,
    what: str,
    interval_s: float = 0.05,
    processes: Sequence[ManagedProcess] = (),
) -> None:
    """Poll ``condition`` until it is true; raise TimeoutError naming ``what`` otherwise.

    A process in ``processes`` that exits meanwhile raises RuntimeError with its log.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        if condition():
            return
        for process in processes:
            process.check_alive()
        if time.monotonic() >= deadline:
            logs = "".join(f"\n--- {p.log_path}:\n{p.log_tail()}" for p in processes)
            raise TimeoutError(f"timed out after {timeout_s:g} s waiting for {what}{logs}")
        time.sleep(interval_s)


def kill_all() -> None:
    """Kill every process group that is still registered."""
    for process in list(_running.values()):
        logger.warning("killing %s (pid %d) left running", process.name, process.pid)
        process.kill()


def _on_sigterm(signum: int, frame: object) -> None:
    kill_all()
    # SystemExit unwinds the stack, so the scratch databases are dropped on the way out.
    raise SystemExit(128 + signum)


def install_cleanup() -> None:
    """Kill registered process groups at exit and on SIGTERM; call once from the CLI."""
    atexit.register(kill_all)
    signal.signal(signal.SIGTERM, _on_sigterm)
