"""floor: the maximum rate of claims and completions that this server does on jobvisor's table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import plots
from bench.context import Context, Outcome
from bench.report import fmt, markdown_table
from bench.scenarios.drains import drains_for
from bench.systems.floor import BATCH

NAME = "floor"
SUMMARY = "bare-SQL claim and complete in batches of 100 from W processes"


def run(ctx: Context) -> Outcome:
    results = [drains_for(ctx, "floor", workers) for workers in ctx.sizes.workers]
    rows = [_row(result) for result in results]
    table = markdown_table(
        ["W", "median jobs/s", "min", "max", "IQR (q1-q3)", "measured drains"], rows
    )
    settings = {
        "jobs_per_drain": ctx.sizes.throughput_jobs,
        "workers": list(ctx.sizes.workers),
        "warmups": ctx.sizes.warmups,
        "repetitions": ctx.sizes.repetitions,
        "batch": BATCH,
    }
    data = {"results": results}

    def plot(stem: Path) -> list[Path]:
        return [plots.throughput_bars(data["results"], stem.with_suffix(".png"),
                                      title="floor: bare SQL on jobvisor's table")]

    return Outcome(settings=settings, data=data, targets=[], tables=[table], plot=plot)


def _row(result: dict[str, Any]) -> list[str]:
    summary = result["summary"]
    return [
        str(result["workers"]),
        fmt(summary["median"]),
        fmt(summary["min"]),
        fmt(summary["max"]),
        f"{fmt(summary['q1'])}-{fmt(summary['q3'])}",
        str(summary["n"]),
    ]
