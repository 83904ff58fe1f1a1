"""Summary statistics of repeated measurements and ratios between systems."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any


def percentile(values: Sequence[float], q: float) -> float:
    """Return the ``q``-th percentile (0..100) by linear interpolation between ranks.

    This is the method NumPy calls ``linear``, the default of ``numpy.percentile``.
    """
    if not values:
        raise ValueError("percentile of an empty sequence; measure at least one value")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q={q!r} is out of range; use 0 to 100")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = math.floor(position)
    high = min(low + 1, len(ordered) - 1)
    fraction = position - low
    return ordered[low] + (ordered[high] - ordered[low]) * fraction


def summarize(values: Sequence[float]) -> dict[str, Any]:
    """Return n, median, mean, min, max, q1 and q3 of ``values``."""
    if not values:
        raise ValueError("summary of an empty sequence; measure at least one value")
    return {
        "n": len(values),
        "median": percentile(values, 50),
        "mean": sum(values) / len(values),
        "min": min(values),
        "max": max(values),
        "q1": percentile(values, 25),
        "q3": percentile(values, 75),
    }


def latency_summary(values_ms: Sequence[float]) -> dict[str, Any]:
    """Return n, p50, p95, p99, mean, min and max of latencies in milliseconds."""
    if not values_ms:
        raise ValueError("latency summary of no samples; no job reported its start")
    return {
        "n": len(values_ms),
        "p50_ms": percentile(values_ms, 50),
        "p95_ms": percentile(values_ms, 95),
        "p99_ms": percentile(values_ms, 99),
        "mean_ms": sum(values_ms) / len(values_ms),
        "min_ms": min(values_ms),
        "max_ms": max(values_ms),
    }


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return numerator / denominator, or None when either is missing or the divisor is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator
