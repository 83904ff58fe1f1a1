"""Resource budgets of the worker processes: reserving them and checking memory.

Memory is in MB (2**20 bytes). CPU is in percent of one core, so 150 means one and a half
cores. The supervisor reserves each worker's share in one ``ResourceBudget`` for the node
and checks each worker's memory with ``MemoryGuard``. ``jobvisor.supervisor.throttle``
limits each running job to its CPU requirement.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, Literal

import psutil

from jobvisor.errors import JobvisorError

logger = logging.getLogger(__name__)

MB = 1024 * 1024
# Sums of float requests may differ from the total by rounding error only.
_TOLERANCE = 1e-9


class AllocationError(JobvisorError, ValueError):
    """A reservation does not fit the node's budget, or its key already has one."""


def check_amount(name: str, value: float, *, positive: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{name}={value!r} is invalid: expected a finite number")
    if positive and value <= 0:
        raise ValueError(f"{name}={value!r} is invalid: it must be greater than 0")
    if value < 0:
        raise ValueError(f"{name}={value!r} is invalid: it must not be negative")


# Node budget


@dataclass(frozen=True)
class Allocation:
    """Memory (MB) and CPU (% of one core) reserved for one running job."""

    job_type: str
    memory_mb: float
    cpu_percent: float


class ResourceBudget:
    """Memory and CPU reservations of the jobs running on this node, against fixed totals.

    ``memory_total_mb`` is JOB_MEMORY_LIMIT. ``cpu_total_percent`` is in percent of one core,
    so the supervisor passes JOB_CPU_LIMIT (percent of the machine) times the CPU count.
    """

    def __init__(self, memory_total_mb: float, cpu_total_percent: float) -> None:
        check_amount("memory_total_mb", memory_total_mb, positive=True)
        check_amount("cpu_total_percent", cpu_total_percent, positive=True)
        self.memory_total_mb = memory_total_mb
        self.cpu_total_percent = cpu_total_percent
        self._allocations: dict[Hashable, Allocation] = {}

    @property
    def memory_allocated_mb(self) -> float:
        return sum(item.memory_mb for item in self._allocations.values())

    @property
    def cpu_allocated_percent(self) -> float:
        return sum(item.cpu_percent for item in self._allocations.values())

    @property
    def memory_available_mb(self) -> float:
        return self.memory_total_mb - self.memory_allocated_mb

    @property
    def cpu_available_percent(self) -> float:
        return self.cpu_total_percent - self.cpu_allocated_percent

    def __contains__(self, key: Hashable) -> bool:
        return key in self._allocations

    def __len__(self) -> int:
        return len(self._allocations)

    def can_allocate(self, memory_mb: float, cpu_percent: float) -> bool:
        """Return whether both amounts fit what is still available.

        A request larger than a whole total never fits, so the caller must not wait for it.
        """
        check_amount("memory_mb", memory_mb, positive=False)
        check_amount("cpu_percent", cpu_percent, positive=False)
        return (
            memory_mb <= self.memory_available_mb + _TOLERANCE
            and cpu_percent <= self.cpu_available_percent + _TOLERANCE
        )

    def allocate(self, key: Hashable, job_type: str, memory_mb: float, cpu_percent: float) -> None:
        """Reserve the amounts under ``key`` (for example a job id or a pid).

        Raises AllocationError if ``key`` already has a reservation or the amounts do not
        fit, and ValueError for a negative or non-finite amount.
        """
        if key in self._allocations:
            reservation = self._allocations[key]
            raise AllocationError(
                f"key {key!r} already has a reservation of {reservation.memory_mb:g} MB and "
                f"{reservation.cpu_percent:g} % CPU for job type {reservation.job_type!r}; "
                "release it before allocating again"
            )
        if not self.can_allocate(memory_mb, cpu_percent):
            raise AllocationError(
                f"job type {job_type!r} requests {memory_mb:g} MB and {cpu_percent:g} % CPU, "
                f"but only {self.memory_available_mb:g} of {self.memory_total_mb:g} MB and "
                f"{self.cpu_available_percent:g} of {self.cpu_total_percent:g} % CPU are "
                "available; check can_allocate() first"
            )
        self._allocations[key] = Allocation(job_type, memory_mb, cpu_percent)

    def release(self, key: Hashable) -> None:
        """Drop the reservation of ``key``; a key without one is ignored."""
        self._allocations.pop(key, None)

    def as_dict(self) -> dict[str, dict[str, Any]]:
        """Return the totals in the layout of the telemetry snapshot's ``allocations``."""
        memory_by_type: dict[str, float] = {}
        cpu_by_type: dict[str, float] = {}
        for item in self._allocations.values():
            memory_by_type[item.job_type] = memory_by_type.get(item.job_type, 0) + item.memory_mb
            cpu_by_type[item.job_type] = cpu_by_type.get(item.job_type, 0) + item.cpu_percent
        return {
            "memory": {
                "allocated": self.memory_allocated_mb,
                "total": self.memory_total_mb,
                "available": self.memory_available_mb,
                "by_job_type": memory_by_type,
            },
            "cpu": {
                "allocated": self.cpu_allocated_percent,
                "total": self.cpu_total_percent,
                "available": self.cpu_available_percent,
                "by_job_type": cpu_by_type,
            },
        }


# Memory


def private_memory_mb(pid: int) -> float:
    """Return the private memory (USS: Private_Clean + Private_Dirty) of ``pid`` in MB.

    Reads /proc/PID/smaps_rollup (Linux 4.14 and later), which costs far less than psutil's
    full smaps walk. When that file cannot be read or lacks the fields, this falls back to
    ``psutil.Process(pid).memory_full_info().uss``. Raises psutil.NoSuchProcess when the
    process is gone, and psutil.AccessDenied or psutil.ZombieProcess as psutil does.
    """
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
            text = file.read()
    except OSError:
        # psutil classifies the failure: a gone process raises NoSuchProcess there too.
        return float(psutil.Process(pid).memory_full_info().uss) / MB

    private_kb = 0
    found = False
    for line in text.splitlines():
        if line.startswith((b"Private_Clean:", b"Private_Dirty:")):
            private_kb += int(line.split()[1])
            found = True
    if not found:
        # The rollup is empty for a zombie or a process that is exiting.
        return float(psutil.Process(pid).memory_full_info().uss) / MB
    return private_kb / 1024


@dataclass(frozen=True)
class MemoryVerdict:
    """Outcome of a memory check: the action for the worker, its USS and the reason.

    ``private_mb`` is the measured USS, or None when RSS was low enough to skip reading it.
    """

    action: Literal["ok", "recycle", "kill"]
    private_mb: float | None = None
    reason: str | None = None


class MemoryGuard:
    """Compares a worker's memory with its job type's budget.

    RSS is cheap but counts the pages a forked worker still shares with the supervisor, so
    the guard reads the private memory (USS) only once RSS reaches ``near_fraction`` of the
    budget. USS over the budget means "recycle" (stop the worker after its current job), USS
    over ``hard_factor`` times the budget means "kill".
    """

    def __init__(
        self,
        hard_factor: float = 2.0,
        near_fraction: float = 0.8,
        *,
        read_private_mb: Callable[[int], float] = private_memory_mb,
    ) -> None:
        check_amount("hard_factor", hard_factor, positive=True)
        check_amount("near_fraction", near_fraction, positive=True)
        if hard_factor < 1:
            raise ValueError(
                f"hard_factor={hard_factor!r} is invalid: the kill limit must be at least the "
                "budget, so use 1 or more"
            )
        if near_fraction > 1:
            raise ValueError(
                f"near_fraction={near_fraction!r} is invalid: use a fraction of the budget "
                "between 0 and 1"
            )
        self.hard_factor = hard_factor
        self.near_fraction = near_fraction
        self._read_private_mb = read_private_mb
        # Number of USS reads so far, each one a /proc read of the worker's memory map.
        self.private_reads = 0

    def check(self, pid: int, budget_mb: float, rss_mb: float) -> MemoryVerdict:
        """Return the verdict for worker ``pid`` with budget ``budget_mb`` and RSS ``rss_mb``.

        Errors of ``private_memory_mb`` (psutil.NoSuchProcess for a gone worker) propagate.
        """
        check_amount("budget_mb", budget_mb, positive=True)
        if rss_mb < self.near_fraction * budget_mb:
            return MemoryVerdict("ok")

        self.private_reads += 1
        private_mb = self._read_private_mb(pid)
        if private_mb > self.hard_factor * budget_mb:
            return MemoryVerdict("kill", private_mb, _exceeded(private_mb, budget_mb))
        if private_mb > budget_mb:
            reason = f"{_exceeded(private_mb, budget_mb)}; recycling after the current job"
            return MemoryVerdict("recycle", private_mb, reason)
        return MemoryVerdict("ok", private_mb)


def _exceeded(private_mb: float, budget_mb: float) -> str:
    # Rounding up keeps 100.2 MB over a 100 MB budget from reading "100 MB > 100 MB".
    return f"memory budget exceeded: {math.ceil(private_mb)} MB > {budget_mb:g} MB"
