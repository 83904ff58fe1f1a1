"""PNG charts of the results, drawn with matplotlib's Agg backend."""

from __future__ import annotations

from pathlib import Path
from typing import Any

COLORS = {
    "floor": "#7f7f7f",
    "jobvisor": "#1f77b4",
    "pgqueuer-asyncpg": "#2ca02c",
    "pgqueuer-psycopg": "#98df8a",
    "procrastinate": "#d62728",
}


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _plain_numbers(*, minor: bool = False) -> Any:
    """Return a tick formatter that writes 3, 20 or 1,000 instead of powers of ten.

    With ``minor``, only the ticks at 2, 3 and 5 times a power of ten get a label.
    """
    import math

    from matplotlib.ticker import FuncFormatter

    def label(value: float, position: int) -> str:
        if value <= 0:
            return ""
        if minor:
            leading = round(value / 10 ** math.floor(math.log10(value)))
            if leading not in (2, 3, 5):
                return ""
        return f"{value:,.0f}" if value >= 1 else f"{value:g}"

    return FuncFormatter(label)


def throughput_bars(results: list[dict[str, Any]], path: Path, *, title: str) -> Path:
    """Grouped bars of median jobs/s per system and W, with min-max whiskers.

    Each bar is labelled with its median and with jobvisor's median divided by it. The
    y axis is logarithmic, because the systems differ by orders of magnitude.
    """
    plt = _pyplot()
    workers = sorted({r["workers"] for r in results})
    systems = list(dict.fromkeys(r["system"] for r in results))
    width = 0.8 / len(systems)
    figure, axes = plt.subplots(figsize=(11, 6))
    for index, system in enumerate(systems):
        for group, count in enumerate(workers):
            match = [r for r in results if r["system"] == system and r["workers"] == count]
            if not match:
                continue
            summary = match[0]["summary"]
            jobvisor = [r for r in results if r["system"] == "jobvisor" and r["workers"] == count]
            x = group + (index - (len(systems) - 1) / 2) * width
            median = summary["median"]
            axes.bar(x, median, width, color=COLORS.get(system, "#bcbd22"),
                     label=system if group == 0 else None)
            axes.errorbar(x, median, yerr=[[median - summary["min"]], [summary["max"] - median]],
                          fmt="none", ecolor="black", capsize=3, linewidth=1)
            label = f"{median:,.0f}"
            if jobvisor and system != "jobvisor":
                label += f"\njv {jobvisor[0]['summary']['median'] / median:.2f}×"
            axes.annotate(label, (x, summary["max"]), textcoords="offset points", xytext=(0, 3),
                          ha="center", va="bottom", fontsize=7)
    axes.set_yscale("log")
    low, high = axes.get_ylim()
    axes.set_ylim(low, high * 2)
    axes.yaxis.set_major_formatter(_plain_numbers())
    axes.set_xticks(range(len(workers)), [f"W = {count}" for count in workers])
    axes.set_ylabel("jobs per second (log scale)")
    axes.set_title(f"{title}\nlabels: median, and jobvisor's median / this system's (jv)")
    axes.legend(loc="upper center", bbox_to_anchor=(0.5, -0.07), ncol=len(systems), fontsize=8)
    axes.grid(axis="y", which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def latency_cdf(latencies: dict[str, list[float]], path: Path) -> Path:
    """Cumulative distribution of enqueue-to-start latency per system, log x axis."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(10, 6))
    for system, values in latencies.items():
        if not values:
            continue
        ordered = sorted(values)
        fractions = [(i + 1) / len(ordered) for i in range(len(ordered))]
        axes.step(ordered, fractions, where="post", color=COLORS.get(system), label=system)
    for fraction, style in ((0.5, ":"), (0.95, "--"), (0.99, "-.")):
        axes.axhline(fraction, color="grey", linestyle=style, linewidth=0.8)
    axes.set_xscale("log")
    axes.xaxis.set_major_formatter(_plain_numbers())
    axes.xaxis.set_minor_formatter(_plain_numbers(minor=True))
    axes.set_xlabel("enqueue to handler start, ms (log scale)")
    axes.set_ylabel("fraction of jobs")
    axes.set_title("pickup latency with idle workers (lines: p50, p95, p99)")
    axes.legend(loc="lower right")
    axes.grid(which="both", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def depth_bars(cases: list[dict[str, Any]], path: Path) -> Path:
    """Bars of jobvisor's median jobs/s per backlog case, with min-max whiskers and ratios."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(9, 6))
    baseline = cases[0]["summary"]["median"] if cases else None

    for index, case in enumerate(cases):
        summary = case["summary"]
        median = summary["median"]
        axes.bar(index, median, 0.6, color=COLORS["jobvisor"])
        axes.errorbar(index, median, yerr=[[median - summary["min"]], [summary["max"] - median]],
                      fmt="none", ecolor="black", capsize=4)
        label = f"{median:,.0f} jobs/s"
        if baseline:
            label += f"\n{median / baseline:.0%} of first"
        axes.annotate(label, (index, summary["max"]), textcoords="offset points",
                      xytext=(0, 3), ha="center", va="bottom", fontsize=8)

    if baseline:
        axes.axhline(0.8 * baseline, color="red", linestyle="--", linewidth=1,
                     label="target: 80 % of the first")
        axes.legend(loc="lower right")

    low, high = axes.get_ylim()
    axes.set_ylim(low, high * 1.12)
    axes.yaxis.set_major_formatter(_plain_numbers())
    axes.set_xticks(range(len(cases)), [case["label"] for case in cases], fontsize=8)
    axes.set_ylabel("jobs per second")
    axes.set_title("jobvisor throughput by table size (median of repetitions)")
    axes.grid(axis="y", alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def overhead_bars(modes: list[dict[str, Any]], path: Path) -> Path:
    """Bars of the supervisor's CPU, in % of one core, per telemetry setting."""
    plt = _pyplot()
    figure, axes = plt.subplots(figsize=(7, 5))
    for index, mode in enumerate(modes):
        value = mode["supervisor_cpu_percent"]
        axes.bar(index, value, 0.6, color=COLORS["jobvisor"])
        axes.annotate(f"{value:.2f} %", (index, value), textcoords="offset points",
                      xytext=(0, 3), ha="center", va="bottom")
    axes.axhline(2.0, color="red", linestyle="--", linewidth=1, label="target: 2 % of one core")
    axes.set_xticks(range(len(modes)), [mode["label"] for mode in modes])
    axes.set_ylabel("supervisor CPU, % of one core")
    axes.set_title("supervisor CPU with 16 sleeping children")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
