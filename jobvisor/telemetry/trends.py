"""Least-squares trends of the telemetry columns over the last few samples.

A trend is the slope of the ordinary least-squares line through the last ``k`` samples
(default 5), with the sample timestamps in seconds as x. All columns are fitted at once with
the closed form ``sum(dx * dy) / sum(dx * dx)`` on centred data, which equals
``numpy.polyfit(x, y, 1)[0]`` and stays accurate with epoch timestamps as x.

Missing data: a column with NaN (or an infinity) in the window gets a NaN slope, and the
other columns are fitted as usual. A window with fewer than ``k`` rows, fewer than two
distinct timestamps or a non-finite timestamp gives NaN for every column.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
from numpy.typing import ArrayLike

DEFAULT_WINDOW = 5  # samples per trend
TIME_FIELD = "timestamp"


class SampleSource(Protocol):
    """Anything with a sample ring, such as :class:`jobvisor.telemetry.shm.TelemetryBlock`."""

    @property
    def sample_fields(self) -> tuple[str, ...]: ...

    def latest(self, n: int | None = None) -> np.ndarray: ...


def slopes(x: ArrayLike, y: ArrayLike) -> np.ndarray:
    """Return the least-squares slope of each column of ``y`` against ``x``.

    ``x`` has shape (k,) and ``y`` shape (k, m); the result has shape (m,), in y units per
    x unit.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 1 or y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"x must have shape (k,) and y (k, m); got {x.shape} and {y.shape}")
    return _column_slopes(x, y)


def slope(x: ArrayLike, y: ArrayLike) -> float:
    """Return the least-squares slope of one series ``y`` (shape (k,)) against ``x``."""
    return float(slopes(x, np.asarray(y, dtype=np.float64)[:, np.newaxis])[0])


def _column_slopes(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    nan = np.full(y.shape[1], np.nan)
    if x.shape[0] < 2 or not np.all(np.isfinite(x)):
        return nan
    dx = x - x.mean()
    sxx = dx @ dx
    if sxx == 0.0:
        return nan
    # Centring y as well makes the rounding error of x.mean() cancel out of the numerator.
    with np.errstate(invalid="ignore"):
        dy = y - y.mean(axis=0)
        result = (dx @ dy) / sxx
    result[~np.isfinite(result)] = np.nan
    return result


def window_slopes(samples: np.ndarray, k: int = DEFAULT_WINDOW, time_column: int = 0) -> np.ndarray:
    """Return the slope per second of every column over the last ``k`` rows of ``samples``.

    ``samples`` is a 2-D array of rows, oldest first, as ``TelemetryBlock.latest`` returns;
    column ``time_column`` contains the timestamps in seconds (its own slope is 1).
    """
    if k < 2:
        raise ValueError(f"a trend needs a window of at least 2 samples, got k={k}")
    samples = np.asarray(samples, dtype=np.float64)
    if samples.ndim != 2:
        raise ValueError(f"samples must be a 2-D array of rows, got shape {samples.shape}")
    if samples.shape[0] < k:
        return np.full(samples.shape[1], np.nan)
    window = samples[-k:]
    return _column_slopes(window[:, time_column], window)


def per_minute(slopes_per_second: np.ndarray) -> np.ndarray:
    """Convert slopes per second to slopes per minute."""
    return slopes_per_second * 60.0


def trends(
    samples: np.ndarray,
    fields: Sequence[str],
    k: int = DEFAULT_WINDOW,
    *,
    time_field: str = TIME_FIELD,
    unit_seconds: float = 1.0,
) -> dict[str, float]:
    """Map each column name except ``time_field`` to its slope over the last ``k`` rows.

    Slopes are per ``unit_seconds`` of time: 1 for per second, 60 for per minute.
    """
    if len(fields) != np.shape(samples)[-1]:
        raise ValueError(
            f"got {len(fields)} field names for {np.shape(samples)[-1]} sample columns; "
            "pass one name per column"
        )
    if time_field not in fields:
        raise ValueError(f"time field {time_field!r} is not among the fields {list(fields)}")
    time_column = list(fields).index(time_field)
    values = window_slopes(samples, k, time_column) * unit_seconds
    return {name: float(values[i]) for i, name in enumerate(fields) if i != time_column}


def source_trends(
    source: SampleSource, k: int = DEFAULT_WINDOW, *, unit_seconds: float = 1.0
) -> dict[str, float]:
    """Return :func:`trends` over the last ``k`` samples of a ring such as a TelemetryBlock."""
    return trends(source.latest(k), source.sample_fields, k, unit_seconds=unit_seconds)
