"""Least-squares trends: agreement with numpy.polyfit, windows and missing data."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import pytest

from jobvisor.telemetry.shm import SAMPLE_FIELDS, TelemetryBlock, create
from jobvisor.telemetry.trends import (
    per_minute,
    slope,
    slopes,
    source_trends,
    trends,
    window_slopes,
)

EPOCH = 1.75e9  # a timestamp in 2025, in seconds


def _random_window(rng: np.random.Generator, start: float) -> tuple[np.ndarray, np.ndarray]:
    k = int(rng.integers(2, 40))
    x = start + np.cumsum(rng.uniform(0.2, 3.0, k))
    scale = 10.0 ** rng.uniform(-3, 4, 13)
    level = rng.uniform(-1, 1, 13) * scale
    slope = rng.normal(0, 1, 13) * scale / 10
    y = level + np.outer(x - x[0], slope) + rng.normal(0, 1, (k, 13)) * scale
    return x, y


def _assert_close_to_polyfit(actual: np.ndarray, x: np.ndarray, y: np.ndarray) -> None:
    # polyfit on x - x[0]: the same slope, without the ill-conditioning of raw epoch seconds.
    expected = np.polyfit(x - x[0], y, 1)[0]
    spread = np.ptp(y, axis=0) / np.ptp(x)
    assert np.all(np.abs(actual - expected) <= 1e-9 * (np.abs(expected) + spread))


def test_slopes_match_polyfit_small_x() -> None:
    rng = np.random.default_rng(20240501)
    for _ in range(2000):
        x, y = _random_window(rng, start=float(rng.uniform(0, 1000)))
        expected = np.polyfit(x, y, 1)[0]
        spread = np.ptp(y, axis=0) / np.ptp(x)
        actual = slopes(x, y)
        assert np.all(np.abs(actual - expected) <= 1e-9 * (np.abs(expected) + spread))


def test_slopes_match_polyfit_epoch_x() -> None:
    rng = np.random.default_rng(7)
    for _ in range(2000):
        x, y = _random_window(rng, start=EPOCH + float(rng.uniform(0, 1e8)))
        _assert_close_to_polyfit(slopes(x, y), x, y)


def test_slopes_exact_line() -> None:
    x = EPOCH + np.arange(5.0)
    y = np.column_stack([3.0 * (x - EPOCH) + 7.0, -0.5 * (x - EPOCH), np.full(5, 42.0)])
    np.testing.assert_allclose(slopes(x, y), [3.0, -0.5, 0.0], atol=1e-12)


def test_slope_one_series() -> None:
    result = slope([0.0, 1.0, 2.0], [1.0, 3.0, 5.0])
    assert isinstance(result, float)
    assert result == pytest.approx(2.0, rel=1e-12)


def test_slopes_nan_column_only() -> None:
    rng = np.random.default_rng(3)
    x = EPOCH + np.arange(5.0)
    y = rng.normal(size=(5, 4))
    y[2, 1] = np.nan
    y[0, 3] = np.inf
    result = slopes(x, y)
    assert math.isnan(result[1])
    assert math.isnan(result[3])
    _assert_close_to_polyfit(result[[0, 2]], x, y[:, [0, 2]])


def test_slopes_degenerate_x() -> None:
    y = np.ones((5, 3))
    assert np.all(np.isnan(slopes(np.full(5, EPOCH), y)))
    x_with_nan = EPOCH + np.array([0.0, 1.0, np.nan, 3.0, 4.0])
    assert np.all(np.isnan(slopes(x_with_nan, y)))
    assert np.all(np.isnan(slopes([EPOCH], np.ones((1, 3)))))


def test_slopes_shape_mismatch() -> None:
    with pytest.raises(ValueError, match="shape"):
        slopes(np.arange(5.0), np.ones((4, 2)))
    with pytest.raises(ValueError, match="shape"):
        slopes(np.arange(5.0), np.ones(5))


def test_window_slopes_last_k_rows() -> None:
    t = EPOCH + np.arange(12.0)
    value = np.where(np.arange(12) < 7, 100.0 - 9.0 * np.arange(12), 2.0 * np.arange(12))
    samples = np.column_stack([t, value])
    result = window_slopes(samples, k=5)
    assert result[0] == pytest.approx(1.0, rel=1e-12)
    assert result[1] == pytest.approx(2.0, rel=1e-12)


def test_window_slopes_short_window() -> None:
    samples = np.column_stack([EPOCH + np.arange(4.0), np.arange(4.0)])
    assert np.all(np.isnan(window_slopes(samples, k=5)))
    with pytest.raises(ValueError, match="at least 2"):
        window_slopes(samples, k=1)


def test_trends_names_and_units() -> None:
    fields = ("timestamp", "cpu_percent", "queue_depth")
    t = EPOCH + 2.0 * np.arange(6.0)  # one sample every 2 s
    samples = np.column_stack([t, 50.0 + 0.5 * (t - EPOCH), 30.0 - 0.1 * (t - EPOCH)])
    per_second = trends(samples, fields)
    assert list(per_second) == ["cpu_percent", "queue_depth"]
    assert per_second["cpu_percent"] == pytest.approx(0.5, rel=1e-12)
    assert per_second["queue_depth"] == pytest.approx(-0.1, rel=1e-12)
    minute = trends(samples, fields, unit_seconds=60.0)
    assert minute["cpu_percent"] == pytest.approx(30.0, rel=1e-12)
    assert per_minute(np.array([0.5]))[0] == pytest.approx(30.0)
    with pytest.raises(ValueError, match="time field"):
        trends(samples[:, 1:], fields[1:])


@pytest.fixture
def block() -> Iterator[TelemetryBlock]:
    telemetry = create(ring_capacity=8, slot_count=1, breaker_count=1)
    yield telemetry
    telemetry.unlink()
    telemetry.close()


def test_source_trends_block(block: TelemetryBlock) -> None:
    for i in range(10):  # wraps the 8-row ring
        row = dict.fromkeys(SAMPLE_FIELDS, 0.0)
        row.update(timestamp=EPOCH + i, cpu_percent=10.0 + 3.0 * i, queue_depth=50.0 - i * i)
        block.append(row)
    result = source_trends(block)
    assert set(result) == set(SAMPLE_FIELDS) - {"timestamp"}
    assert result["cpu_percent"] == pytest.approx(3.0, rel=1e-12)
    # Last 5 samples are i = 5..9: the least-squares slope of -i**2 there is -14.
    assert result["queue_depth"] == pytest.approx(-14.0, rel=1e-12)
    assert result["error_rate"] == 0.0
    assert os.path.exists(f"/dev/shm/{block.name}")
