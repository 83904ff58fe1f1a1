"""Measuring the machine and the supervisor's children, once per sample interval."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

import psutil

logger = logging.getLogger(__name__)

MB = 1024 * 1024


@dataclass(frozen=True)
class MachineUsage:
    """CPU over the last interval (not since boot) and memory of the whole machine."""

    cpu_percent: float
    # (total - available) / total, so page cache that the kernel can drop does not count.
    memory_percent: float
    memory_available_mb: float
    memory_total_mb: float


@dataclass
class ChildUsage:
    """Latest measurement of one child: RSS every interval, USS only when a check read it."""

    rss_mb: float | None = None
    uss_mb: float | None = None
    # % of one core over the last interval.
    cpu_percent: float | None = None


class Observer:
    """Measures machine CPU and memory, and each child's RSS and CPU over the interval.

    psutil's ``cpu_percent(None)`` returns the use since its previous call on the same
    object, so the observer keeps one ``psutil.Process`` per child. A child's first
    measurement starts its interval and reports no CPU figure yet.
    """

    def __init__(self) -> None:
        self._processes: dict[int, psutil.Process] = {}
        self.children: dict[int, ChildUsage] = {}
        self.machine = self._measure_machine()

    def forget(self, pid: int) -> None:
        self._processes.pop(pid, None)
        self.children.pop(pid, None)

    def measure(self, pids: list[int]) -> MachineUsage:
        """Measure the machine and every pid in ``pids``; return the machine's usage."""
        self.machine = self._measure_machine()
        for pid in pids:
            self.children[pid] = self._measure_child(pid)
        return self.machine

    def _measure_machine(self) -> MachineUsage:
        memory = psutil.virtual_memory()
        return MachineUsage(
            cpu_percent=psutil.cpu_percent(None),
            memory_percent=round(100.0 * (memory.total - memory.available) / memory.total, 2),
            memory_available_mb=round(memory.available / MB, 1),
            memory_total_mb=round(memory.total / MB, 1),
        )

    def _measure_child(self, pid: int) -> ChildUsage:
        usage = self.children.get(pid) or ChildUsage()
        try:
            process = self._processes.get(pid)
            if process is None:
                process = self._processes[pid] = psutil.Process(pid)
                process.cpu_percent(None)
                cpu_percent = None
            else:
                cpu_percent = round(process.cpu_percent(None), 1)
            rss_mb = round(process.memory_info().rss / MB, 1)
        except psutil.Error as error:
            # The child exited between the reap and this measurement; the reap cleans up.
            logger.debug("cannot measure worker process %d: %s", pid, error)
            return usage
        return ChildUsage(rss_mb=rss_mb, uss_mb=usage.uss_mb, cpu_percent=cpu_percent)

    def record_uss(self, pid: int, uss_mb: float | None) -> None:
        with contextlib.suppress(KeyError):
            self.children[pid].uss_mb = None if uss_mb is None else round(uss_mb, 1)
