"""Health checks of telemetry snapshots: thresholds, skipped checks, crash loops, staleness."""

from __future__ import annotations

from typing import Any

import pytest

from jobvisor.telemetry.health import (
    CRASH_LOOPS,
    DEFAULT_SNAPSHOT_INTERVAL_S,
    SNAPSHOT_AGE,
    SUPERVISOR_STATE,
    TARGETS,
    evaluate,
    overall_status,
    staleness_check,
)

NOW = 1_750_000_000.0
CHECK_KEYS = {"name", "value", "unit", "status", "target", "warning", "critical", "message"}
HEALTHY_METRICS: dict[str, Any] = {
    "cpu_percent": 40.0,
    "memory_percent": 50.0,
    "memory_available_mb": 4096.0,
    "active_jobs": 2,
    "queue_depth": 3,
    "throughput_per_min": 12.0,
    "latency_p50_s": 4.0,
    "latency_p95_s": 9.0,
    "processing_avg_s": 60.0,
    "error_rate": 0.01,
    "efficiency": 0.8,
    "window_s": 60.0,
}


def snapshot_with(paused: list[str] | None = None, **metrics: Any) -> dict[str, Any]:
    """Return a snapshot with healthy metrics, changed by ``metrics``."""
    return {
        "written_at": NOW,
        "node": {"state": "running", "snapshot_interval_s": 5.0},
        "metrics": {**HEALTHY_METRICS, **metrics},
        "concurrency": {"paused_job_types": paused or []},
    }


def check_named(result: dict[str, Any], name: str) -> dict[str, Any]:
    matches = [check for check in result["checks"] if check["name"] == name]
    assert len(matches) == 1, f"expected one check {name!r} in {result['checks']}"
    return matches[0]


# Metric, value in the metric's own unit, expected status. Each threshold is tested exactly at
# its value and just past it on both sides: a value at a threshold has not passed it.
BOUNDARIES: list[tuple[str, float, str]] = [
    ("throughput_per_min", 25.0, "ok"),
    ("throughput_per_min", 10.01, "ok"),
    ("throughput_per_min", 10.0, "watch"),
    ("throughput_per_min", 7.0, "watch"),
    ("throughput_per_min", 5.0, "watch"),
    ("throughput_per_min", 4.99, "warning"),
    ("throughput_per_min", 1.0, "warning"),
    ("throughput_per_min", 0.99, "critical"),
    ("throughput_per_min", 0.0, "critical"),
    ("processing_avg_s", 0.0, "ok"),
    ("processing_avg_s", 179.9, "ok"),
    ("processing_avg_s", 180.0, "watch"),
    ("processing_avg_s", 300.0, "watch"),
    ("processing_avg_s", 300.1, "warning"),
    ("processing_avg_s", 600.0, "warning"),
    ("processing_avg_s", 600.1, "critical"),
    ("queue_depth", 0, "ok"),
    ("queue_depth", 9, "ok"),
    ("queue_depth", 10, "watch"),
    ("queue_depth", 20, "watch"),
    ("queue_depth", 21, "warning"),
    ("queue_depth", 50, "warning"),
    ("queue_depth", 51, "critical"),
    ("cpu_percent", 69.9, "ok"),
    ("cpu_percent", 70.0, "watch"),
    ("cpu_percent", 80.0, "watch"),
    ("cpu_percent", 80.1, "warning"),
    ("cpu_percent", 90.0, "warning"),
    ("cpu_percent", 90.1, "critical"),
    ("cpu_percent", 100.0, "critical"),
    ("memory_percent", 69.9, "ok"),
    ("memory_percent", 70.0, "watch"),
    ("memory_percent", 85.0, "watch"),
    ("memory_percent", 85.1, "warning"),
    ("memory_percent", 95.0, "warning"),
    ("memory_percent", 95.1, "critical"),
    ("error_rate", 0.0, "ok"),
    ("error_rate", 0.049, "ok"),
    ("error_rate", 0.05, "watch"),
    ("error_rate", 0.07, "watch"),  # 0.07 × 100 is 7.000000000000001 in binary floats
    ("error_rate", 0.1, "watch"),
    ("error_rate", 0.101, "warning"),
    ("error_rate", 0.2, "warning"),
    ("error_rate", 0.201, "critical"),
    ("error_rate", 1.0, "critical"),
]
TARGET_BY_METRIC = {target.metric: target for target in TARGETS}


@pytest.mark.parametrize(("metric", "value", "expected"), BOUNDARIES)
def test_check_boundaries(metric: str, value: float, expected: str) -> None:
    target = TARGET_BY_METRIC[metric]
    result = evaluate(snapshot_with(**{metric: value}))
    check = check_named(result, target.name)
    assert check["status"] == expected
    assert check["unit"] == target.unit
    assert check["value"] == pytest.approx(value * target.scale)


def test_every_target_has_boundary_cases() -> None:
    tested = {metric for metric, _, _ in BOUNDARIES}
    assert tested == set(TARGET_BY_METRIC)
    for metric in TARGET_BY_METRIC:
        statuses = {expected for name, _, expected in BOUNDARIES if name == metric}
        assert statuses == {"ok", "watch", "warning", "critical"}, metric


def test_threshold_texts() -> None:
    result = evaluate(snapshot_with())
    texts = {
        check["name"]: (check["target"], check["warning"], check["critical"])
        for check in result["checks"]
    }
    assert texts["throughput"] == ("> 10 jobs/min", "< 5 jobs/min", "< 1 jobs/min")
    assert texts["average processing time"] == ("< 3 min", "> 5 min", "> 10 min")
    assert texts["queue depth"] == ("< 10 jobs", "> 20 jobs", "> 50 jobs")
    assert texts["CPU utilization"] == ("< 70 %", "> 80 %", "> 90 %")
    assert texts["memory utilization"] == ("< 70 %", "> 85 %", "> 95 %")
    assert texts["error rate"] == ("< 5 %", "> 10 %", "> 20 %")


def test_checks_have_contract_keys() -> None:
    result = evaluate(snapshot_with(processing_avg_s=None, paused=["resize"]))
    assert set(result) == {"status", "checks"}
    assert [check["name"] for check in result["checks"]] == [
        *(target.name for target in TARGETS),
        CRASH_LOOPS,
    ]
    for check in result["checks"]:
        assert set(check) == CHECK_KEYS
        assert isinstance(check["message"], str) and check["message"]


def test_messages_state_value_and_level() -> None:
    result = evaluate(snapshot_with(cpu_percent=95.5, queue_depth=15, error_rate=0.25))
    cpu = check_named(result, "CPU utilization")
    queue = check_named(result, "queue depth")
    errors = check_named(result, "error rate")
    assert cpu["message"] == "CPU utilization is 95.5 %, past the critical level of > 90 %"
    assert queue["message"] == "queue depth is 15 jobs, missing the target of < 10 jobs"
    assert errors["message"] == "error rate is 25 %, past the critical level of > 20 %"
    assert errors["value"] == 25.0


def test_scaled_value_rounded() -> None:
    errors = check_named(evaluate(snapshot_with(error_rate=0.07)), "error rate")
    processing_snapshot = snapshot_with(processing_avg_s=200.0)
    processing = check_named(evaluate(processing_snapshot), "average processing time")
    assert errors["value"] == 7.0
    assert processing["value"] == 3.333333333
    assert processing["message"].startswith("average processing time is 3.33 min,")


@pytest.mark.parametrize(
    "metric", ["processing_avg_s", "error_rate", "throughput_per_min", "cpu_percent"]
)
def test_null_metric_skipped(metric: str) -> None:
    target = TARGET_BY_METRIC[metric]
    check = check_named(evaluate(snapshot_with(**{metric: None})), target.name)
    assert check["status"] == "skipped"
    assert check["value"] is None
    assert metric in check["message"]


def test_missing_and_nan_metrics_skipped() -> None:
    snapshot = snapshot_with(error_rate=float("nan"))
    del snapshot["metrics"]["processing_avg_s"]
    result = evaluate(snapshot)
    assert check_named(result, "error rate")["status"] == "skipped"
    assert check_named(result, "average processing time")["status"] == "skipped"


@pytest.mark.parametrize(
    ("queue_depth", "active_jobs", "expected"),
    [(0, 0, "skipped"), (0, 1, "critical"), (4, 0, "critical"), (4, 3, "critical")],
)
def test_throughput_applies_only_with_work(
    queue_depth: int, active_jobs: int, expected: str
) -> None:
    snapshot = snapshot_with(
        throughput_per_min=0.0, queue_depth=queue_depth, active_jobs=active_jobs
    )
    result = evaluate(snapshot)
    assert check_named(result, "throughput")["status"] == expected


def test_idle_node_is_ok() -> None:
    result = evaluate(snapshot_with(throughput_per_min=0.0, queue_depth=0, active_jobs=0))
    assert result["status"] == "ok"
    assert "no due and no running jobs" in check_named(result, "throughput")["message"]


def test_crash_loops_critical() -> None:
    result = evaluate(snapshot_with(paused=["story", "cartoonize"]))
    check = check_named(result, CRASH_LOOPS)
    assert check["status"] == "critical"
    assert check["value"] == 2
    assert check["message"].startswith(
        "2 job types are paused after repeated worker crashes: cartoonize, story;"
    )
    assert result["status"] == "critical"


def test_no_crash_loops_ok() -> None:
    check = check_named(evaluate(snapshot_with()), CRASH_LOOPS)
    assert check["status"] == "ok"
    assert check["value"] == 0


@pytest.mark.parametrize(
    ("metrics", "expected"),
    [
        ({}, "ok"),
        ({"queue_depth": 12}, "watch"),
        ({"queue_depth": 12, "memory_percent": 90.0}, "warning"),
        ({"queue_depth": 12, "memory_percent": 90.0, "cpu_percent": 99.0}, "critical"),
        ({"processing_avg_s": None, "error_rate": None, "cpu_percent": 75.0}, "watch"),
    ],
)
def test_overall_is_worst(metrics: dict[str, Any], expected: str) -> None:
    assert evaluate(snapshot_with(**metrics))["status"] == expected


def test_overall_ignores_skipped() -> None:
    checks = [
        {"status": "skipped"},
        {"status": "watch"},
        {"status": "skipped"},
    ]
    assert overall_status(checks) == "watch"
    assert overall_status([{"status": "skipped"}]) == "ok"
    assert overall_status([]) == "ok"


def test_all_metrics_missing_is_ok() -> None:
    result = evaluate({"metrics": {}, "concurrency": {"paused_job_types": []}})
    statuses = [check["status"] for check in result["checks"]]
    assert statuses == ["skipped"] * len(TARGETS) + ["ok"]
    assert result["status"] == "ok"


# -- staleness ---------------------------------------------------------------------------


def aged_snapshot(age_s: float, state: str = "running", interval_s: float = 5.0) -> dict[str, Any]:
    snapshot = snapshot_with()
    snapshot["written_at"] = NOW - age_s
    snapshot["node"] = {"state": state, "snapshot_interval_s": interval_s}
    return snapshot


@pytest.mark.parametrize("age_s", [0.0, 4.0, 14.9, 15.0])
def test_fresh_snapshot_has_no_staleness(age_s: float) -> None:
    assert staleness_check(aged_snapshot(age_s), NOW) is None


@pytest.mark.parametrize("state", ["running", "stopping"])
def test_old_snapshot_critical(state: str) -> None:
    check = staleness_check(aged_snapshot(42.0, state=state), NOW)
    assert check is not None
    assert set(check) == CHECK_KEYS
    assert check["name"] == SNAPSHOT_AGE
    assert check["status"] == "critical"
    assert check["value"] == pytest.approx(42.0)
    assert check["message"] == "snapshot is 42 s old; is the supervisor running?"
    assert check["critical"] == "> 15 s"


def test_stale_limit_scales_with_interval() -> None:
    assert staleness_check(aged_snapshot(50.0, interval_s=20.0), NOW) is None
    check = staleness_check(aged_snapshot(61.0, interval_s=20.0), NOW)
    assert check is not None
    assert check["status"] == "critical"


def test_missing_interval_uses_default() -> None:
    snapshot = aged_snapshot(3 * DEFAULT_SNAPSHOT_INTERVAL_S + 1)
    del snapshot["node"]["snapshot_interval_s"]
    check = staleness_check(snapshot, NOW)
    assert check is not None
    assert check["status"] == "critical"


@pytest.mark.parametrize("age_s", [1.0, 3600.0])
def test_stopped_supervisor_warning(age_s: float) -> None:
    check = staleness_check(aged_snapshot(age_s, state="stopped"), NOW)
    assert check is not None
    assert set(check) == CHECK_KEYS
    assert check["name"] == SUPERVISOR_STATE
    assert check["status"] == "warning"
    assert "supervisor stopped" in check["message"]
    assert overall_status([check]) == "warning"
