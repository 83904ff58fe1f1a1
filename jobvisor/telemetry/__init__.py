"""Telemetry of a supervisor: the shared-memory block and trends over its sample ring."""

from __future__ import annotations

from jobvisor.telemetry.shm import (
    SAMPLE_FIELDS,
    BreakerRecord,
    BreakerState,
    LayoutError,
    SlotRecord,
    SlotState,
    TelemetryBlock,
    TornReadError,
    attach,
    create,
    remove_stale_segments,
)
from jobvisor.telemetry.trends import (
    per_minute,
    slope,
    slopes,
    source_trends,
    trends,
    window_slopes,
)

__all__ = [
    "SAMPLE_FIELDS",
    "BreakerRecord",
    "BreakerState",
    "LayoutError",
    "SlotRecord",
    "SlotState",
    "TelemetryBlock",
    "TornReadError",
    "attach",
    "create",
    "per_minute",
    "remove_stale_segments",
    "slope",
    "slopes",
    "source_trends",
    "trends",
    "window_slopes",
]
