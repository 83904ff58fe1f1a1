"""Measuring the node and the supervisor's children for the telemetry snapshot."""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING, Any

import psutil

from jobvisor.db.store import TypeBacklog

if TYPE_CHECKING:
    from jobvisor.app import App
    from jobvisor.config import Settings
    from jobvisor.supervisor.children import Child

logger = logging.getLogger(__name__)

MB = 1024 * 1024


class Observer:
    """Measures CPU over the interval between calls (not since boot) and available memory."""

    def __init__(self, app: App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self._processes: dict[int, psutil.Process] = {}
        # The first cpu_percent(None) call only starts the interval.
        psutil.cpu_percent(None)

    def forget(self, pid: int) -> None:
        self._processes.pop(pid, None)

    def snapshot(
        self,
        children: list[Child],
        backlog: dict[str, TypeBacklog],
        paused: list[str],
        started_at: float,
    ) -> dict[str, Any]:
        memory = psutil.virtual_memory()
        workers = [self._worker(child) for child in children]
        return {
            "node": {
                "hostname": socket.gethostname(),
                "supervisor_pid": os.getpid(),
                "started_at": started_at,
                "cpu_count": psutil.cpu_count(),
            },
            "metrics": {
                "cpu_percent": psutil.cpu_percent(None),
                # Used memory is total minus available, so page cache does not count as used.
                "memory_percent": round(100.0 * (memory.total - memory.available) / memory.total, 2),
                "memory_available_mb": round(memory.available / MB, 1),
                "active_jobs": sum(1 for child in children if child.busy),
                "queue_depth": sum(item.due for item in backlog.values()),
            },
            "concurrency": {
                "limit": self.settings.max_concurrent_jobs,
                "max_jobs_per_user": self.settings.max_jobs_per_user,
                "by_job_type": {
                    name: spec.concurrency for name, spec in self.app.job_types.items()
                },
                "paused_job_types": paused,
            },
            "workers": workers,
            "allocations": self._allocations(children),
        }

    def _worker(self, child: Child) -> dict[str, Any]:
        spec = self.app.job_types[child.job_type]
        rss_mb = cpu_percent = None
        process = self._processes.get(child.pid)
        with contextlib.suppress(psutil.Error):
            if process is None:
                process = self._processes[child.pid] = psutil.Process(child.pid)
                process.cpu_percent(None)
            rss_mb = round(process.memory_info().rss / MB, 1)
            cpu_percent = process.cpu_percent(None)
        if child.kill_reason:
            state = "killing"
        elif child.stop_reason:
            state = "stopping"
        else:
            state = "running" if child.busy else "idle"
        return {
            "pid": child.pid,
            "worker_id": child.worker_id,
            "job_type": child.job_type,
            "state": state,
            "job_id": child.job_id,
            "jobs_done": child.jobs_done,
            "rss_mb": rss_mb,
            "cpu_percent": cpu_percent,
            "budget": {"memory_mb": spec.memory_mb, "cpu_percent": spec.cpu_percent},
        }

    def _allocations(self, children: list[Child]) -> dict[str, Any]:
        memory_by_type: dict[str, int] = {}
        cpu_by_type: dict[str, int] = {}
        for child in children:
            if not child.busy:
                continue
            spec = self.app.job_types[child.job_type]
            memory_by_type[child.job_type] = memory_by_type.get(child.job_type, 0) + spec.memory_mb
            cpu_by_type[child.job_type] = cpu_by_type.get(child.job_type, 0) + spec.cpu_percent
        memory_total = self.settings.job_memory_limit_mb
        cpu_total = self.settings.job_cpu_limit_percent
        return {
            "memory": {
                "allocated": sum(memory_by_type.values()),
                "total": memory_total,
                "available": memory_total - sum(memory_by_type.values()),
                "by_job_type": memory_by_type,
            },
            "cpu": {
                "allocated": sum(cpu_by_type.values()),
                "total": cpu_total,
                "available": cpu_total - sum(cpu_by_type.values()),
                "by_job_type": cpu_by_type,
            },
        }
