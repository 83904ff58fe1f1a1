"""PNG charts of telemetry samples over time, drawn with matplotlib's Agg renderer.

matplotlib is an optional dependency (the ``plot`` extra). It is imported only when a chart
is drawn, and only through its object-oriented API, so drawing a chart never changes the
pyplot backend of the calling process.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

TIME_FIELD = "timestamp"
INSTALL_HINT = "install it with: pip install 'jobvisor[plot]'"

# Each panel: y-axis label, whether it shows counts, then the (column, legend label) pairs.
# Counts are drawn as steps with whole-number ticks, because they hold their value until
# the next sample.
PANELS: tuple[tuple[str, bool, tuple[tuple[str, str], ...]], ...] = (
    ("queue depth (jobs)", True, (("queue_depth", "due jobs"),)),
    ("throughput (jobs/min)", False, (("throughput_per_min", "finished jobs per minute"),)),
    ("utilization (%)", False, (("cpu_percent", "CPU"), ("memory_percent", "memory"))),
    ("jobs", True, (("concurrency_limit", "concurrency limit"), ("active_jobs", "active jobs"))),
)
FEW_SAMPLES = 30  # up to this many samples, each one is drawn as a marker too
MIN_SPAN_S = 60.0  # the x axis covers at least this many seconds
FIGURE_SIZE_IN = (10.0, 10.0)
DPI = 100


def columns_from_window(window: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Convert a snapshot's ``window`` ({"fields": [...], "rows": [[...], ...]}) to columns.

    Null values become NaN. Raises ValueError when a row's length differs from the number
    of fields.
    """
    fields: Sequence[str] = window["fields"]
    rows = window["rows"]
    for number, row in enumerate(rows):
        if len(row) != len(fields):
            raise ValueError(
                f"window row {number} has {len(row)} values for {len(fields)} fields; "
                "the snapshot is malformed, so let the supervisor rewrite it"
            )
    data = np.array(rows, dtype=np.float64).reshape(len(rows), len(fields))
    return {name: data[:, index].copy() for index, name in enumerate(fields)}


def plot_window(columns: Mapping[str, np.ndarray], path: Path, title: str) -> Path:
    """Draw four stacked panels of ``columns`` against their timestamps and save a PNG.

    The panels show the queue depth; the throughput in jobs per minute; CPU and memory in %;
    the concurrency limit and the active jobs. ``columns`` maps sample field names, as in
    ``jobvisor.telemetry.shm.SAMPLE_FIELDS``, to equal-length arrays and must contain
    ``timestamp`` (Unix seconds). Missing columns leave their lines out. Rows with a
    non-finite timestamp are dropped and the rest are drawn in time order.

    Returns ``path``. Raises ValueError when no row has a finite timestamp, and ImportError
    when matplotlib is not installed.
    """
    if TIME_FIELD not in columns:
        raise ValueError(f"columns {sorted(columns)} have no {TIME_FIELD!r} column to plot against")
    timestamps = np.asarray(columns[TIME_FIELD], dtype=np.float64)
    kept = np.flatnonzero(np.isfinite(timestamps))
    if kept.size == 0:
        raise ValueError("there are no samples with a timestamp to plot")
    order = kept[np.argsort(timestamps[kept], kind="stable")]

    figure_class, canvas_class, dates, ticker = _import_matplotlib()
    local_zone = dt.datetime.now().astimezone().tzinfo
    times = [dt.datetime.fromtimestamp(t, tz=local_zone) for t in timestamps[order]]

    figure = figure_class(figsize=FIGURE_SIZE_IN, dpi=DPI, layout="constrained")
    canvas_class(figure)
    axes = figure.subplots(len(PANELS), 1, sharex=True)
    for ax, (label, counts, lines) in zip(axes, PANELS):
        drawn = 0
        for field, legend in lines:
            if field not in columns:
                continue
            values = np.asarray(columns[field], dtype=np.float64)[order]
            drawstyle = "steps-post" if counts else "default"
            # A marker keeps a lone sample, which draws no line segment, visible.
            marker = "o" if order.size <= FEW_SAMPLES else ""
            ax.plot(times, values, label=legend, linewidth=1.2, drawstyle=drawstyle,
                    marker=marker, markersize=3)  # fmt: skip
            drawn += 1
        if counts:
            ax.yaxis.set_major_locator(ticker.MaxNLocator(integer=True))
        if drawn == 0:
            ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center")
        else:
            ax.legend(loc="upper left", fontsize="small")
        ax.set_ylabel(label)
        ax.set_ylim(bottom=0)
        ax.grid(True, alpha=0.3)
    locator = dates.AutoDateLocator(tz=local_zone)
    axes[-1].xaxis.set_major_locator(locator)
    axes[-1].xaxis.set_major_formatter(dates.ConciseDateFormatter(locator, tz=local_zone))
    axes[-1].set_xlabel(f"local time ({times[-1].tzname()})")
    span = timestamps[order[-1]] - timestamps[order[0]]
    if span < MIN_SPAN_S:
        middle = times[0] + (times[-1] - times[0]) / 2
        half = dt.timedelta(seconds=MIN_SPAN_S / 2)
        axes[-1].set_xlim(middle - half, middle + half)
    noun = "sample" if order.size == 1 else "samples"
    figure.suptitle(f"{title}\n{order.size} {noun} over {span:.0f} s")

    path = Path(path)
    figure.savefig(path, format="png")
    return path


def _import_matplotlib() -> tuple[Any, Any, Any, Any]:
    try:
        from matplotlib import dates, ticker
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        message = f"plotting needs matplotlib, which is not installed; {INSTALL_HINT}"
        raise ImportError(message) from error
    return Figure, FigureCanvasAgg, dates, ticker
