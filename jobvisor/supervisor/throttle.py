"""Holding each running job to its CPU budget: cgroup v2 ``cpu.max`` or SIGSTOP/SIGCONT.

CPU is in percent of one core, so 150 means one and a half cores.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import psutil

from jobvisor.supervisor.budgets import check_amount

logger = logging.getLogger(__name__)


# CPU: cgroup v2


CGROUP_ROOT = Path("/sys/fs/cgroup")
PROC_ROOT = Path("/proc")
CGROUP_PERIOD_US = 100_000
# The kernel rejects a cpu.max quota below 1 ms.
_CGROUP_MIN_QUOTA_US = 1_000


def detect_cgroup_cpu_controller(
    *, proc: Path = PROC_ROOT, root: Path = CGROUP_ROOT
) -> Path | None:
    """Return this process's cgroup v2 directory if it can contain CPU-limited child cgroups.

    This requires a cgroup2 file system mounted at ``root`` (a v1 or hybrid layout does not
    count), the ``cpu`` controller in the directory's cgroup.controllers, and write access to
    the directory and its cgroup.subtree_control. Returns None otherwise. The result and
    the reason are logged at INFO.
    """
    directory, reason = _find_cgroup_cpu_directory(proc, root)
    if directory is None:
        logger.info("no cgroup v2 cpu controller for CPU budgets: %s", reason)
    else:
        logger.info("cgroup v2 cpu controller available in %s", directory)
    return directory


def _find_cgroup_cpu_directory(proc: Path, root: Path) -> tuple[Path | None, str]:
    if not _is_cgroup2_mount(proc / "mounts", root):
        return None, f"{root} is not a cgroup2 mount (cgroup v1 or a v1/v2 hybrid layout)"

    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError as error:
        return None, f"cannot read {proc / 'self' / 'cgroup'}: {error}"
    relative = next((line[3:] for line in lines if line.startswith("0::")), None)
    if relative is None:
        return None, f"{proc / 'self' / 'cgroup'} has no cgroup v2 entry (0::/path)"
    directory = root / relative.strip().lstrip("/")

    try:
        controllers = (directory / "cgroup.controllers").read_text().split()
    except OSError as error:
        return None, f"cannot read the controllers of {directory}: {error}"
    if "cpu" not in controllers:
        listed = " ".join(controllers) or "none"
        return None, f"the cpu controller is not delegated to {directory} (controllers: {listed})"

    subtree_control = directory / "cgroup.subtree_control"
    if not (os.access(directory, os.W_OK) and os.access(subtree_control, os.W_OK)):
        return None, f"{directory} or its cgroup.subtree_control is not writable by this user"
    return directory, "ok"


def _is_cgroup2_mount(mounts: Path, root: Path) -> bool:
    try:
        lines = mounts.read_text().splitlines()
    except OSError:
        return (root / "cgroup.controllers").is_file()
    fstype = None
    for line in lines:
        fields = line.split()
        # The last mount on a mount point hides the earlier ones.
        if len(fields) >= 3 and _unescape_mount_path(fields[1]) == str(root):
            fstype = fields[2]
    return fstype == "cgroup2"


def _unescape_mount_path(path: str) -> str:
    # /proc/mounts writes space, tab, newline and backslash as octal escapes (\040 and so on).
    parts = path.split("\\")
    decoded = [parts[0]]
    for part in parts[1:]:
        if len(part) >= 3 and all(char in "01234567" for char in part[:3]):
            decoded.append(chr(int(part[:3], 8)) + part[3:])
        else:
            decoded.append("\\" + part)
    return "".join(decoded)


class CgroupCpuLimiter:
    """Limits each worker's CPU with its own cgroup v2 child ``<base>/jobvisor-<pid>``.

    NOTE: untested against a real cgroup v2 hierarchy with the cpu controller, because the
    development machines have a v1/v2 hybrid layout. The tests only check the files it writes
    in a plain directory.
    """

    def __init__(self, base: Path, period_us: int = CGROUP_PERIOD_US) -> None:
        if period_us < _CGROUP_MIN_QUOTA_US:
            raise ValueError(f"period_us={period_us!r} is invalid: use at least 1000 µs")
        self.base = base
        self.period_us = period_us
        self._prepared = False
        # Worker cgroups that were still populated at release(); prune() retries them.
        self._stale: set[Path] = set()

    def prepare(self) -> None:
        """Enable the cpu controller for the children of ``base``.

        A non-root cgroup that contains processes cannot enable controllers for its children
        (EBUSY), so on EBUSY this moves the calling process into ``<base>/jobvisor-supervisor``
        and retries. Processes of other programs in ``base`` still make it fail. Raises
        OSError when the controller cannot be enabled.
        """
        if self._prepared:
            return
        subtree_control = self.base / "cgroup.subtree_control"
        if "cpu" not in subtree_control.read_text().split():
            try:
                subtree_control.write_text("+cpu")
            except OSError as error:
                if error.errno != errno.EBUSY:
                    raise
                leaf = self.base / "jobvisor-supervisor"
                leaf.mkdir(exist_ok=True)
                (leaf / "cgroup.procs").write_text(str(os.getpid()))
                subtree_control.write_text("+cpu")
        self._prepared = True

    def cgroup_of(self, pid: int) -> Path:
        return self.base / f"jobvisor-{pid}"

    def limit(self, pid: int, percent: float) -> None:
        """Move ``pid`` into its own cgroup with cpu.max set to ``percent`` % of one core.

        Raises ProcessLookupError when the process is gone, and OSError for other failures.
        """
        check_amount("percent", percent, positive=True)
        self.prepare()
        quota_us = max(_CGROUP_MIN_QUOTA_US, round(self.period_us * percent / 100))
        directory = self.cgroup_of(pid)
        directory.mkdir(exist_ok=True)
        try:
            (directory / "cpu.max").write_text(f"{quota_us} {self.period_us}")
            (directory / "cgroup.procs").write_text(str(pid))
        except OSError:
            self._remove(directory)
            raise
        logger.debug("worker %d limited to %g %% CPU in %s", pid, percent, directory)

    def release(self, pid: int) -> None:
        """Remove the cgroup of ``pid``; a pid without one is ignored.

        While the process is still inside, the kernel rejects the removal, so the limit is
        lifted instead (cpu.max = "max") and ``prune()`` removes the cgroup later.
        """
        directory = self.cgroup_of(pid)
        if not directory.is_dir():
            return
        if self._remove(directory):
            return
        with contextlib.suppress(OSError):
            (directory / "cpu.max").write_text(f"max {self.period_us}")
        self._stale.add(directory)

    def prune(self) -> None:
        """Retry removing the worker cgroups that release() could not remove."""
        for directory in list(self._stale):
            if self._remove(directory):
                self._stale.discard(directory)

    @property
    def has_stale(self) -> bool:
        return bool(self._stale)

    def _remove(self, directory: Path) -> bool:
        try:
            directory.rmdir()
        except FileNotFoundError:
            return True
        except OSError as error:
            logger.debug("cannot remove cgroup %s yet: %s", directory, error)
            return False
        return True


# CPU: SIGSTOP/SIGCONT duty cycle


_CLOCK_TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
_HAS_PROC_STAT = os.path.exists("/proc/self/stat")
# Shortest wait between two checks of a paused worker (s), so float rounding cannot spin.
_MIN_WAIT_S = 0.005


def _cpu_seconds(pid: int) -> float:
    """Return the user + system CPU time of ``pid`` in seconds.

    Raises ProcessLookupError when the process is gone or a zombie.
    """
    if not _HAS_PROC_STAT:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            raise ProcessLookupError(pid) from None
        return float(times.user + times.system)
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            data = file.read()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessLookupError(pid) from None
    # The command name (field 2) may contain spaces and parentheses, so split after its ")".
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] == b"Z":
        raise ProcessLookupError(pid)
    # Fields 14 and 15 of /proc/PID/stat are utime and stime in clock ticks.
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


@dataclass
class _Throttled:
    """A tracked worker's CPU allowance.

    ``balance`` (CPU seconds) grows by ``rate`` (cores) per second of wall time up to
    ``capacity`` and shrinks by the CPU time the worker uses while active.
    """

    pid: int
    rate: float
    capacity: float
    balance: float
    updated_at: float
    active: bool = False
    paused: bool = False
    # CPU time at updated_at, sampled only while active.
    cpu_s: float = 0.0
    # Monotonic time of the next check.
    due: float = 0.0


class SignalThrottler:
    """Holds workers to a CPU budget by stopping (SIGSTOP) and continuing (SIGCONT) them.

    Each worker has a token bucket of CPU seconds: it fills at the budget rate (0.2 s per
    second for 20 %) up to the budget over ``window_s``, and drains by the CPU time the
    worker uses while active. A worker is stopped when the bucket is empty and continued
    when it has refilled, so its long-run average is the budget. While it runs, the worker is
    checked every ``period_s``, so the CPU time it uses past an empty bucket is at most about
    ``period_s`` per busy core, if the caller ticks on time.

    Only active workers (running a handler) are ever stopped, because an inactive worker may
    be inside a database transaction and would hold its locks while stopped. Pids must be
    untracked before the supervisor reaps them, because a reaped pid can be reused by an
    unrelated process.
    """

    def __init__(
        self,
        period_s: float = 0.1,
        window_s: float = 1.0,
        may_pause: Callable[[int], bool] | None = None,
    ) -> None:
        check_amount("period_s", period_s, positive=True)
        check_amount("window_s", window_s, positive=True)
        self.period_s = period_s
        self.window_s = window_s
        # Called right before each SIGSTOP. False leaves the worker running until the next
        # check. The supervisor reads the worker's own slot in shared memory, which is
        # fresher than the state last passed to set_active().
        self.may_pause = may_pause
        self._tracked: dict[int, _Throttled] = {}

    def track(self, pid: int, budget_percent: float) -> None:
        """Start tracking ``pid`` as inactive, with ``budget_percent`` % of one core.

        Tracking a pid again changes its budget and keeps its state.
        """
        check_amount("budget_percent", budget_percent, positive=True)
        rate = budget_percent / 100
        capacity = rate * self.window_s
        entry = self._tracked.get(pid)
        if entry is not None:
            entry.rate = rate
            entry.capacity = capacity
            entry.balance = min(entry.balance, capacity)
            return
        self._tracked[pid] = _Throttled(
            pid=pid, rate=rate, capacity=capacity, balance=capacity, updated_at=time.monotonic()
        )

    def untrack(self, pid: int) -> None:
        """Forget ``pid``, continuing it first if it is stopped; an unknown pid is ignored."""
        entry = self._tracked.pop(pid, None)
        if entry is not None and entry.paused:
            self._continue(entry)

    def set_active(
        self, pid: int, active: bool, *, since: tuple[float, float] | None = None
    ) -> None:
        """Mark ``pid`` as running a handler (True) or not (False).

        ``since`` is the handler's start as (monotonic time, the worker's CPU seconds then).
        With it, the CPU time used since that start is charged, however late the caller
        noticed the job; without it, charging starts now. Going inactive continues a stopped
        worker at once, then charges the CPU time it used since the last check. An unknown
        pid is ignored, because it may have been forgotten after its process ended.
        """
        entry = self._tracked.get(pid)
        if entry is None or entry.active == active:
            return
        now = time.monotonic()
        try:
            if active:
                start, start_cpu_s = since if since is not None else (now, _cpu_seconds(pid))
                start = min(max(start, entry.updated_at), now)
                entry.balance = min(
                    entry.capacity, entry.balance + entry.rate * (start - entry.updated_at)
                )
                entry.updated_at = start
                entry.cpu_s = start_cpu_s
                entry.active = True
                entry.due = now
                return
            if entry.paused:
                self._continue(entry)
            self._charge(entry, now)
            entry.active = False
        except (ProcessLookupError, psutil.NoSuchProcess):
            self._forget_gone(pid)

    def tick(self, now: float) -> float | None:
        """Check the active workers that are due, stopping or continuing them.

        ``now`` is ``time.monotonic()``. Returns the monotonic time of the next check, or None
        when no tracked worker is active. Calling it early only checks the workers that are
        due, so it is cheap to call on every loop iteration.
        """
        next_due: float | None = None
        for entry in list(self._tracked.values()):
            if not entry.active:
                continue
            if entry.due <= now:
                try:
                    self._charge(entry, now)
                    self._enforce(entry, now)
                except (ProcessLookupError, psutil.NoSuchProcess):
                    self._forget_gone(entry.pid)
                    continue
            next_due = entry.due if next_due is None else min(next_due, entry.due)
        return next_due

    def is_paused(self, pid: int) -> bool:
        entry = self._tracked.get(pid)
        return entry is not None and entry.paused

    def paused_pids(self) -> list[int]:
        return sorted(pid for pid, entry in self._tracked.items() if entry.paused)

    def resume_all(self) -> None:
        """Continue every stopped worker.

        The workers stay tracked, so a later tick() may stop an active one again. Call
        untrack() to end throttling of a worker for good.
        """
        for entry in list(self._tracked.values()):
            if entry.paused:
                self._continue(entry)

    def _charge(self, entry: _Throttled, now: float) -> None:
        cpu_s = _cpu_seconds(entry.pid)
        used_s = cpu_s - entry.cpu_s
        elapsed_s = max(0.0, now - entry.updated_at)
        entry.balance = min(entry.capacity, entry.balance + entry.rate * elapsed_s - used_s)
        entry.cpu_s = cpu_s
        entry.updated_at = now

    def _enforce(self, entry: _Throttled, now: float) -> None:
        if entry.balance < 0:
            if not entry.paused:
                if self.may_pause is not None and not self.may_pause(entry.pid):
                    entry.due = now + self.period_s
                    return
                os.kill(entry.pid, signal.SIGSTOP)
                entry.paused = True
                logger.debug(
                    "paused worker %d: %.3f s of CPU over its %g %% budget",
                    entry.pid, -entry.balance, entry.rate * 100,
                )
            # The bucket refills at entry.rate, so this is when it is no longer empty.
            entry.due = now + max(_MIN_WAIT_S, -entry.balance / entry.rate)
            return
        if entry.paused:
            self._continue(entry)
        entry.due = now + self.period_s

    def _continue(self, entry: _Throttled) -> None:
        entry.paused = False
        try:
            os.kill(entry.pid, signal.SIGCONT)
        except ProcessLookupError:
            logger.debug("worker %d ended while paused", entry.pid)
            return
        logger.debug("resumed worker %d", entry.pid)

    def _forget_gone(self, pid: int) -> None:
        self._tracked.pop(pid, None)
        logger.debug("worker %d ended; no longer throttling it", pid)


# CPU: facade


class CpuThrottle:
    """Holds each worker to its CPU budget with cgroup v2 cpu.max or with signals.

    ``method`` is "cgroup" or "signals". A cgroup limit applies for the worker's whole life,
    so ``set_active`` only matters for signals, and the kernel bounds each throttled stretch
    by the 100 ms cpu.max period.
    """

    def __init__(self, backend: CgroupCpuLimiter | SignalThrottler) -> None:
        self.backend = backend
        self.method: Literal["cgroup", "signals"] = (
            "cgroup" if isinstance(backend, CgroupCpuLimiter) else "signals"
        )

    @classmethod
    def create(
        cls,
        period_s: float = 0.1,
        window_s: float = 1.0,
        may_pause: Callable[[int], bool] | None = None,
    ) -> CpuThrottle:
        """Return a throttle that uses cgroup v2 when this process may, else signals.

        ``period_s``, ``window_s`` and ``may_pause`` configure the SignalThrottler. The
        choice is logged at INFO.
        """
        base = detect_cgroup_cpu_controller()
        if base is not None:
            limiter = CgroupCpuLimiter(base)
            try:
                limiter.prepare()
            except OSError as error:
                logger.warning(
                    "failed to enable the cgroup v2 cpu controller in %s (%s), so CPU "
                    "budgets fall back to SIGSTOP/SIGCONT",
                    base, error,
                )
            else:
                logger.info("CPU budgets enforced with cgroup v2 cpu.max under %s", base)
                return cls(limiter)
        logger.info(
            "CPU budgets enforced with SIGSTOP/SIGCONT, checked every %g s while a job runs",
            period_s,
        )
        return cls(SignalThrottler(period_s, window_s, may_pause))

    def track(self, pid: int, budget_percent: float) -> None:
        """Start limiting ``pid`` to ``budget_percent`` % of one core.

        A cgroup failure is logged as a warning and leaves the worker unlimited, because the
        supervisor must keep running.
        """
        if isinstance(self.backend, SignalThrottler):
            self.backend.track(pid, budget_percent)
            return
        try:
            self.backend.limit(pid, budget_percent)
        except ProcessLookupError:
            logger.debug("worker %d ended before its CPU limit was set", pid)
        except OSError as error:
            logger.warning(
                "failed to limit the CPU of worker %d with cgroup v2, so it runs unlimited: %s",
                pid, error,
            )

    def untrack(self, pid: int) -> None:
        if isinstance(self.backend, SignalThrottler):
            self.backend.untrack(pid)
        else:
            self.backend.release(pid)

    def set_active(
        self, pid: int, active: bool, *, since: tuple[float, float] | None = None
    ) -> None:
        if isinstance(self.backend, SignalThrottler):
            self.backend.set_active(pid, active, since=since)

    def tick(self, now: float) -> float | None:
        """Run the due checks; return the monotonic time of the next one, or None."""
        if isinstance(self.backend, SignalThrottler):
            return self.backend.tick(now)
        if not self.backend.has_stale:
            return None
        self.backend.prune()
        return now + 1.0 if self.backend.has_stale else None

    def is_paused(self, pid: int) -> bool:
        return isinstance(self.backend, SignalThrottler) and self.backend.is_paused(pid)

    def paused_pids(self) -> list[int]:
        if isinstance(self.backend, SignalThrottler):
            return self.backend.paused_pids()
        return []

    def resume_all(self) -> None:
        """Continue every stopped worker; call it before SIGTERM or SIGKILL and at exit."""
        if isinstance(self.backend, SignalThrottler):
            self.backend.resume_all()
