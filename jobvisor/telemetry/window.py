"""Statistics over the jobs a node finished recently: throughput, latency, errors, efficiency.

Workers report each finished attempt to their supervisor (see ``Child``), which records it
here. Attempts live in fixed numpy arrays used as a ring, so memory stays bounded at any
throughput: at more than ``capacity`` attempts per window, percentiles come from the latest
``capacity`` attempts, while throughput and error rate still count every attempt through
per-second counters.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

DEFAULT_WINDOW_S = 60.0
DEFAULT_CAPACITY = 16_384


@dataclass(frozen=True)
class WindowStats:
    """Finished attempts of the last ``window_s`` seconds. Times are in seconds."""

    window_s: float
    finished: int
    failed: int
    throughput_per_min: float
    # Creation of the job to the end of the attempt; None when nothing finished.
    latency_p50_s: float | None
    latency_p95_s: float | None
    # Handler run time per attempt.
    processing_avg_s: float | None
    # Failed attempts / finished attempts, 0..1.
    error_rate: float | None
    # Handler time / time since creation, summed over attempts, 0..1.
    efficiency: float | None


class CompletionWindow:
    """Ring of recent finished attempts plus per-second counts of finished and failed ones."""

    def __init__(self, window_s: float = DEFAULT_WINDOW_S, capacity: int = DEFAULT_CAPACITY) -> None:
        if window_s <= 0 or capacity < 1:
            raise ValueError(f"window_s must be > 0 and capacity >= 1, got {window_s} and {capacity}")
        self.window_s = window_s
        self.capacity = capacity
        self._finished_at = np.full(capacity, -math.inf)
        self._latency = np.zeros(capacity)
        self._processing = np.zeros(capacity)
        self._next = 0
        # Counts per whole second, indexed by second % buckets. _bucket_second records which
        # second a bucket counts, so stale buckets read as empty.
        self._buckets = int(math.ceil(window_s)) + 1
        self._bucket_second = np.full(self._buckets, -1, dtype=np.int64)
        self._bucket_finished = np.zeros(self._buckets, dtype=np.int64)
        self._bucket_failed = np.zeros(self._buckets, dtype=np.int64)

    def record(self, finished_at: float, latency_s: float, processing_s: float, ok: bool) -> None:
        """Add one finished attempt; ``finished_at`` is Unix time in seconds."""
        index = self._next % self.capacity
        self._finished_at[index] = finished_at
        self._latency[index] = max(0.0, latency_s)
        self._processing[index] = max(0.0, processing_s)
        self._next += 1

        second = int(finished_at)
        bucket = second % self._buckets
        if self._bucket_second[bucket] != second:
            self._bucket_second[bucket] = second
            self._bucket_finished[bucket] = 0
            self._bucket_failed[bucket] = 0
        self._bucket_finished[bucket] += 1
        if not ok:
            self._bucket_failed[bucket] += 1

    def stats(self, now: float) -> WindowStats:
        """Return the statistics of the attempts that finished in (now - window_s, now]."""
        start = now - self.window_s
        live = self._bucket_second > int(start)
        finished = int(self._bucket_finished[live].sum())
        failed = int(self._bucket_failed[live].sum())
        recent = self._finished_at > start
        latency = self._latency[recent]
        processing = self._processing[recent]

        latency_p50 = latency_p95 = processing_avg = efficiency = None
        if latency.size:
            latency_p50, latency_p95 = (float(v) for v in np.percentile(latency, [50, 95]))
            processing_avg = float(processing.mean())
            total = float(latency.sum())
            efficiency = min(1.0, float(processing.sum()) / total) if total > 0 else 1.0
        return WindowStats(
            window_s=self.window_s,
            finished=finished,
            failed=failed,
            throughput_per_min=finished * 60.0 / self.window_s,
            latency_p50_s=latency_p50,
            latency_p95_s=latency_p95,
            processing_avg_s=processing_avg,
            error_rate=failed / finished if finished else None,
            efficiency=efficiency,
        )
