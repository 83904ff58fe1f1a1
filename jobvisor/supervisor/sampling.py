"""The node's telemetry: samples in the shared-memory ring, worker slots and snapshot files.

Once per sample interval the supervisor measures the machine and its children, adds the
statistics of recently finished attempts and the queue depth, and appends one row to the
ring. Every snapshot interval it writes the snapshot file from the latest measurements.
"""

from __future__ import annotations

import logging
import math
import os
import socket
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import psutil

from jobvisor.db.store import TypeBacklog
from jobvisor.supervisor.observe import Observer
from jobvisor.telemetry import shm
from jobvisor.telemetry.health import evaluate as evaluate_health
from jobvisor.telemetry.shm import SlotState, TelemetryBlock
from jobvisor.telemetry.trends import DEFAULT_WINDOW, trends
from jobvisor.telemetry.window import CompletionWindow, WindowStats

if TYPE_CHECKING:
    from jobvisor.app import App
    from jobvisor.config import Settings
    from jobvisor.supervisor.children import Child

logger = logging.getLogger(__name__)

# Rows of the ring copied into each snapshot, for plots without access to the ring.
SNAPSHOT_WINDOW_ROWS = 120
# Series whose slopes the snapshot reports.
TREND_FIELDS = (
    "cpu_percent",
    "memory_percent",
    "queue_depth",
    "active_jobs",
    "throughput_per_min",
    "latency_p95_s",
)


class NodeTelemetry:
    """Owns the shared-memory block of one supervisor and everything it measures."""

    def __init__(self, app: App, settings: Settings) -> None:
        self.app = app
        self.settings = settings
        self.started_at = time.time()
        self.observer = Observer()
        self.attempts = CompletionWindow()
        self.stats: WindowStats = self.attempts.stats(self.started_at)
        self.queue_depth_by_type: dict[str, int] = {}
        self.block: TelemetryBlock | None = None
        for name in shm.remove_stale_segments():
            logger.warning("removed telemetry segment %s left by a supervisor that died", name)
        try:
            self.block = shm.create()
        except OSError as error:
            # Sampling still feeds the concurrency manager and the snapshot file.
            logger.error("cannot create the telemetry block in /dev/shm, running without it: %s", error)

    # Workers

    def attach_child(self, child: Child) -> None:
        """Write the supervisor part of the child's slot, claimed by :meth:`free_slot`."""
        if self.block is None or child.slot is None:
            return
        spec = self.app.job_types[child.job_type]
        self.block.write_slot_supervisor(
            child.slot,
            pid=child.pid,
            started_at=time.time(),
            memory_budget_mb=spec.memory_mb,
            cpu_budget_percent=spec.cpu_percent,
            job_type=child.job_type[: shm.JOB_TYPE_BYTES],
        )

    def free_slot(self, taken: set[int]) -> int | None:
        """Return a free slot index not in ``taken``, or None when the block is full or absent."""
        if self.block is None:
            return None
        for index in range(self.block.slot_count):
            if index in taken:
                continue
            try:
                record = self.block.read_slot(index)
            except shm.TornReadError:
                continue  # left mid-write by a dead child and not reset yet
            if not record.pid and record.state == SlotState.EMPTY:
                return index
        logger.warning("all %d telemetry slots are in use; a worker runs without one", self.block.slot_count)
        return None

    def detach_child(self, child: Child) -> None:
        self.observer.forget(child.pid)
        if self.block is not None and child.slot is not None:
            self.block.reset_slot(child.slot)

    def record_attempts(self, child: Child) -> None:
        for attempt in child.attempts:
            self.attempts.record(attempt.finished_at, attempt.latency_s, attempt.processing_s, attempt.ok)
        child.attempts.clear()

    # Sampling

    def sample(
        self,
        children: list[Child],
        backlog: Mapping[str, TypeBacklog],
        limit: int,
        allocations: Mapping[str, Any],
        throttled: set[int],
    ) -> dict[str, float]:
        """Measure the node, append a row to the ring and return that row."""
        now = time.time()
        machine = self.observer.measure([child.pid for child in children])
        self.stats = stats = self.attempts.stats(now)
        self.queue_depth_by_type = {name: item.due for name, item in backlog.items()}
        row = {
            "timestamp": now,
            "cpu_percent": machine.cpu_percent,
            "memory_percent": machine.memory_percent,
            "active_jobs": sum(1 for child in children if child.busy),
            "queue_depth": sum(self.queue_depth_by_type.values()),
            "throughput_per_min": stats.throughput_per_min,
            "latency_p50_s": _or_nan(stats.latency_p50_s),
            "latency_p95_s": _or_nan(stats.latency_p95_s),
            "error_rate": _or_nan(stats.error_rate),
            "efficiency": _or_nan(stats.efficiency),
            "processing_s": _or_nan(stats.processing_avg_s),
            "concurrency_limit": limit,
            "memory_allocated_mb": allocations["memory"]["allocated"],
            "cpu_allocated_percent": allocations["cpu"]["allocated"],
        }
        if self.block is not None:
            self.block.append(row)
            for child in children:
                self._write_usage(child, now, throttled)
        return row

    def _write_usage(self, child: Child, now: float, throttled: set[int]) -> None:
        assert self.block is not None
        if child.slot is None:
            return
        usage = self.observer.children.get(child.pid)
        if usage is None:
            return
        if child.kill_reason or child.stop_reason:
            control = SlotState.STOPPING
        elif child.pid in throttled:
            control = SlotState.PAUSED
        else:
            control = SlotState.EMPTY
        self.block.write_slot_supervisor(
            child.slot,
            rss_mb=_or_nan(usage.rss_mb),
            uss_mb=_or_nan(usage.uss_mb),
            cpu_percent=_or_nan(usage.cpu_percent),
            measured_at=now,
            control_state=control,
        )

    # Snapshot

    def snapshot(
        self,
        *,
        state: str,
        children: list[Child],
        concurrency: dict[str, Any],
        allocations: dict[str, Any],
        throttled: set[int],
        cpu_throttle: str,
    ) -> dict[str, Any]:
        """Return the snapshot document without ``schema`` and ``written_at``."""
        machine = self.observer.machine
        stats = self.stats
        document: dict[str, Any] = {
            "node": {
                "hostname": socket.gethostname(),
                "supervisor_pid": os.getpid(),
                "started_at": self.started_at,
                "cpu_count": psutil.cpu_count() or 1,
                "memory_total_mb": machine.memory_total_mb,
                "state": state,
                "sample_interval_s": self.settings.sample_interval_s,
                "snapshot_interval_s": self.settings.snapshot_interval_s,
                "telemetry_segment": None if self.block is None else self.block.name,
                "cpu_throttle": cpu_throttle,
            },
            "metrics": {
                "cpu_percent": machine.cpu_percent,
                "memory_percent": machine.memory_percent,
                "memory_available_mb": machine.memory_available_mb,
                "active_jobs": sum(1 for child in children if child.busy),
                "queue_depth": sum(self.queue_depth_by_type.values()),
                "queue_depth_by_job_type": dict(self.queue_depth_by_type),
                "throughput_per_min": round(stats.throughput_per_min, 3),
                "latency_p50_s": _rounded(stats.latency_p50_s),
                "latency_p95_s": _rounded(stats.latency_p95_s),
                "processing_avg_s": _rounded(stats.processing_avg_s),
                "error_rate": _rounded(stats.error_rate),
                "efficiency": _rounded(stats.efficiency),
                "window_s": stats.window_s,
            },
            "trends": self._trends(),
            "concurrency": concurrency,
            "workers": [self._worker(child, throttled) for child in children],
            "allocations": {**allocations, "usage": self._usage(children)},
            "breakers": self._breakers(),
            "window": self._window(),
        }
        document["health"] = evaluate_health(document)
        return document

    def _worker(self, child: Child, throttled: set[int]) -> dict[str, Any]:
        spec = self.app.job_types[child.job_type]
        usage = self.observer.children.get(child.pid)
        if child.kill_reason:
            state = "killing"
        elif child.stop_reason:
            state = "stopping"
        elif child.pid in throttled:
            state = "throttled"
        else:
            state = "running" if child.busy else "idle"
        return {
            "pid": child.pid,
            "worker_id": child.worker_id,
            "job_type": child.job_type,
            "state": state,
            "job_id": child.job_id,
            "jobs_done": child.jobs_done,
            "rss_mb": None if usage is None else usage.rss_mb,
            "uss_mb": None if usage is None else usage.uss_mb,
            "cpu_percent": None if usage is None else usage.cpu_percent,
            "budget": {"memory_mb": spec.memory_mb, "cpu_percent": spec.cpu_percent},
        }

    def _usage(self, children: list[Child]) -> dict[str, dict[str, float]]:
        memory: dict[str, float] = {}
        cpu: dict[str, float] = {}
        for child in children:
            usage = self.observer.children.get(child.pid)
            if usage is None:
                continue
            # Private memory when a check measured it; RSS overstates it by the shared pages.
            used = usage.uss_mb if usage.uss_mb is not None else usage.rss_mb
            if used is not None:
                memory[child.job_type] = round(memory.get(child.job_type, 0.0) + used, 1)
            if usage.cpu_percent is not None:
                cpu[child.job_type] = round(cpu.get(child.job_type, 0.0) + usage.cpu_percent, 1)
        return {"memory_mb_by_job_type": memory, "cpu_percent_by_job_type": cpu}

    def _trends(self) -> dict[str, Any]:
        result: dict[str, Any] = {"samples": DEFAULT_WINDOW, "per": "minute"}
        values: dict[str, float] = {}
        if self.block is not None and self.block.rows_written >= DEFAULT_WINDOW:
            rows = self.block.latest(DEFAULT_WINDOW)
            values = trends(rows, self.block.sample_fields, DEFAULT_WINDOW, unit_seconds=60.0)
        for name in TREND_FIELDS:
            value = values.get(name, 0.0)
            result[name] = round(value, 4) if math.isfinite(value) else 0.0
        return result

    def _breakers(self) -> list[dict[str, Any]]:
        if self.block is None:
            return []
        try:
            records = self.block.read_breakers()
        except shm.TornReadError as error:
            logger.warning("breaker states left out of the snapshot: %s", error)
            return []
        return [
            {
                "name": record.name,
                "state": record.state.name.lower(),
                "failures": record.failures,
                "opened_at": record.opened_at or None,
                "probes": record.half_open_probes_in_flight,
            }
            for record in records
        ]

    def _window(self) -> dict[str, Any]:
        if self.block is None:
            return {"fields": list(shm.SAMPLE_FIELDS), "rows": []}
        rows = self.block.latest(SNAPSHOT_WINDOW_ROWS)
        cleaned = np.where(np.isfinite(rows), rows, np.nan).round(4).tolist()
        return {
            "fields": list(self.block.sample_fields),
            "rows": [[None if math.isnan(value) else value for value in row] for row in cleaned],
        }

    def close(self) -> None:
        """Unlink and unmap the block; readers that mapped it keep their copy."""
        if self.block is None:
            return
        self.block.unlink()
        self.block.close()
        self.block = None


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _rounded(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(value, digits)
