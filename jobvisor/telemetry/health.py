"""Health checks of a telemetry snapshot against fixed targets.

Each check compares one metric with three thresholds: the target, the warning level and the
critical level. Its status is ``ok`` when the value meets the target, ``watch`` when it misses
the target but has not passed the warning level, ``warning`` past the warning level and
``critical`` past the critical level. A value exactly at a threshold has not passed it. A check
whose value is null, or that does not apply, is ``skipped``. The overall status is the worst
status of the checks that were not skipped, and ``ok`` when all of them were.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

OK = "ok"
WATCH = "watch"
WARNING = "warning"
CRITICAL = "critical"
SKIPPED = "skipped"
STATUSES: tuple[str, ...] = (OK, WATCH, WARNING, CRITICAL)  # from best to worst

STALE_INTERVALS = 3  # a snapshot older than this many snapshot intervals is stale
DEFAULT_SNAPSHOT_INTERVAL_S = 5.0  # for snapshots that lack node.snapshot_interval_s
NOT_APPLICABLE = "-"  # threshold text of a check that has no such level


@dataclass(frozen=True)
class Target:
    """Thresholds of one health check, all in ``unit``.

    ``scale`` converts the metric's value into ``unit``: 100 for a 0..1 ratio shown in %,
    1/60 for seconds shown in minutes.
    """

    name: str
    metric: str  # key in snapshot["metrics"]
    unit: str
    higher_is_better: bool
    target: float
    warning: float
    critical: float
    scale: float = 1.0

    def describe(self, threshold: float, *, meets: bool) -> str:
        """Return the condition text for ``threshold``, such as ``"> 10 jobs/min"``.

        ``meets`` selects the side that meets the threshold (the target) instead of the
        side that passes it (the warning and critical levels).
        """
        above = self.higher_is_better == meets
        return f"{'>' if above else '<'} {format_number(threshold)} {self.unit}"

    def classify(self, value: float) -> str:
        """Return the status of ``value`` (already in ``unit``)."""
        if self.higher_is_better:
            if value < self.critical:
                return CRITICAL
            if value < self.warning:
                return WARNING
            return OK if value > self.target else WATCH
        if value > self.critical:
            return CRITICAL
        if value > self.warning:
            return WARNING
        return OK if value < self.target else WATCH


TARGETS: tuple[Target, ...] = (
    Target("throughput", "throughput_per_min", "jobs/min", True, 10, 5, 1),
    Target("average processing time", "processing_avg_s", "min", False, 3, 5, 10, scale=1 / 60),
    Target("queue depth", "queue_depth", "jobs", False, 10, 20, 50),
    Target("CPU utilization", "cpu_percent", "%", False, 70, 80, 90),
    Target("memory utilization", "memory_percent", "%", False, 70, 85, 95),
    Target("error rate", "error_rate", "%", False, 5, 10, 20, scale=100),
)

CRASH_LOOPS = "crash loops"
SNAPSHOT_AGE = "snapshot age"
SUPERVISOR_STATE = "supervisor state"


def evaluate(snapshot: Mapping[str, Any]) -> dict[str, Any]:
    """Check the snapshot's metrics and paused job types against :data:`TARGETS`.

    Returns ``{"status": overall status, "checks": [check, ...]}`` with one check per target
    and a ``crash loops`` check last. Throughput is skipped while the node has no due and no
    running job, because an idle node finishes no jobs. Missing metrics count as null.
    """
    metrics = snapshot.get("metrics") or {}
    checks = [_metric_check(target, metrics) for target in TARGETS]
    paused = (snapshot.get("concurrency") or {}).get("paused_job_types") or []
    checks.append(_crash_loop_check(list(paused)))
    return {"status": overall_status(checks), "checks": checks}


def overall_status(checks: Iterable[Mapping[str, Any]]) -> str:
    """Return the worst status among ``checks`` that were not skipped, or ``ok``."""
    ranks = [STATUSES.index(check["status"]) for check in checks if check["status"] != SKIPPED]
    return STATUSES[max(ranks, default=0)]


def staleness_check(snapshot: Mapping[str, Any], now: float) -> dict[str, Any] | None:
    """Return a check when the snapshot cannot describe the node at ``now`` (Unix seconds).

    A stopped supervisor gives a ``warning`` check. A running or stopping supervisor whose
    snapshot is older than ``STALE_INTERVALS`` snapshot intervals gives a ``critical`` check,
    because a live supervisor would have rewritten it. Returns None for a fresh snapshot.
    """
    node = snapshot.get("node") or {}
    age = now - float(snapshot["written_at"])
    interval = node.get("snapshot_interval_s") or DEFAULT_SNAPSHOT_INTERVAL_S
    limit = STALE_INTERVALS * float(interval)
    if node.get("state") == "stopped":
        return _check(
            SUPERVISOR_STATE, age, "s", WARNING,
            target="running", warning="stopped", critical=NOT_APPLICABLE,
            message=(
                f"the supervisor stopped {format_number(age)} s ago, so no jobs run on this "
                "node; start it with `jobvisor run`"
            ),
        )  # fmt: skip
    if age <= limit:
        return None
    limit_text = format_number(limit)
    return _check(
        SNAPSHOT_AGE, age, "s", CRITICAL,
        target=f"<= {limit_text} s", warning=NOT_APPLICABLE, critical=f"> {limit_text} s",
        message=f"snapshot is {age:.0f} s old; is the supervisor running?",
    )  # fmt: skip


def _metric_check(target: Target, metrics: Mapping[str, Any]) -> dict[str, Any]:
    raw = metrics.get(target.metric)
    thresholds = {
        "target": target.describe(target.target, meets=True),
        "warning": target.describe(target.warning, meets=False),
        "critical": target.describe(target.critical, meets=False),
    }
    if raw is None or not math.isfinite(float(raw)):
        message = f"{target.name} skipped: the snapshot has no value for metrics.{target.metric}"
        return _check(target.name, None, target.unit, SKIPPED, message=message, **thresholds)
    if target.metric == "throughput_per_min" and not _has_work(metrics):
        message = f"{target.name} skipped: the node has no due and no running jobs"
        return _check(target.name, None, target.unit, SKIPPED, message=message, **thresholds)

    # Rounding removes the float error of scaling: 0.07 × 100 is 7.000000000000001 unrounded.
    value = round(float(raw) * target.scale, 9)
    status = target.classify(value)
    value_text = f"{format_number(value)} {target.unit}"
    if status == OK:
        message = f"{target.name} is {value_text}, meeting the target of {thresholds['target']}"
    elif status == WATCH:
        message = f"{target.name} is {value_text}, missing the target of {thresholds['target']}"
    else:
        message = f"{target.name} is {value_text}, past the {status} level of {thresholds[status]}"
    return _check(target.name, value, target.unit, status, message=message, **thresholds)


def _has_work(metrics: Mapping[str, Any]) -> bool:
    return (metrics.get("queue_depth") or 0) > 0 or (metrics.get("active_jobs") or 0) > 0


def _crash_loop_check(paused: list[str]) -> dict[str, Any]:
    thresholds = {"target": "none paused", "warning": NOT_APPLICABLE, "critical": "any paused"}
    if not paused:
        message = "no job type is paused after a crash loop"
        return _check(CRASH_LOOPS, 0, "job types", OK, message=message, **thresholds)
    names = ", ".join(sorted(paused))
    subject = "1 job type is" if len(paused) == 1 else f"{len(paused)} job types are"
    message = (
        f"{subject} paused after repeated worker crashes: {names}; "
        "read the supervisor log for the crash errors"
    )
    return _check(CRASH_LOOPS, len(paused), "job types", CRITICAL, message=message, **thresholds)


def _check(
    name: str,
    value: float | None,
    unit: str,
    status: str,
    *,
    target: str,
    warning: str,
    critical: str,
    message: str,
) -> dict[str, Any]:
    return {
        "name": name,
        "value": None if value is None else float(value),
        "unit": unit,
        "status": status,
        "target": target,
        "warning": warning,
        "critical": critical,
        "message": message,
    }


def format_number(value: float) -> str:
    """Format ``value`` with at most two decimals and no trailing zeros, as in ``"12.5"``."""
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return "0" if text == "-0" else text
