"""throughput: no-op jobs drained by W worker processes of each system, against the floor."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench import plots
from bench.context import Context, Outcome
from bench.report import Target, fmt, fmt_ratio, markdown_table
from bench.scenarios.drains import drains_for
from bench.stats import ratio

NAME = "throughput"
SUMMARY = "pre-enqueued no-op jobs drained by W worker processes, per system"
SYSTEMS = ("floor", "jobvisor", "pgqueuer-asyncpg", "pgqueuer-psycopg", "procrastinate")
PGQUEUER = ("pgqueuer-asyncpg", "pgqueuer-psycopg")
# The targets apply at this number of worker processes, or at the largest one measured.
TARGET_WORKERS = 4


def run(ctx: Context) -> Outcome:
    results: list[dict[str, Any]] = []
    for workers in ctx.sizes.workers:
        for name in SYSTEMS:
            results.append(drains_for(ctx, name, workers))

    ratios = {str(w): ratios_at(results, w) for w in ctx.sizes.workers}
    target_workers = TARGET_WORKERS if TARGET_WORKERS in ctx.sizes.workers else max(
        ctx.sizes.workers)
    at_target = ratios[str(target_workers)]
    targets = [
        Target(f"jobvisor / floor, W={target_workers}", at_target["jobvisor/floor"], ">=", 0.5,
               ""),
        Target(f"jobvisor / faster PgQueuer driver, W={target_workers}",
               at_target["jobvisor/pgqueuer-best"], ">=", 3.0, ""),
        Target(f"jobvisor / Procrastinate, W={target_workers}",
               at_target["jobvisor/procrastinate"], ">=", 20.0, ""),
    ]
    settings = {
        "jobs_per_drain": ctx.sizes.throughput_jobs,
        "procrastinate_jobs_per_drain": min(ctx.sizes.throughput_jobs,
                                            ctx.sizes.procrastinate_jobs),
        "workers": list(ctx.sizes.workers),
        "warmups": ctx.sizes.warmups,
        "repetitions": ctx.sizes.repetitions,
        "systems": {f"{r['system']} W={r['workers']}": r["settings"] for r in results},
    }
    data = {"results": results, "ratios": ratios}

    def plot(stem: Path) -> list[Path]:
        return [plots.throughput_bars(results, stem.with_suffix(".png"),
                                      title="no-op throughput (median of measured drains)")]

    return Outcome(settings=settings, data=data, targets=targets,
                   tables=[results_table(results), ratios_table(ratios)], plot=plot)


def medians_at(results: list[dict[str, Any]], workers: int) -> dict[str, float]:
    return {r["system"]: r["summary"]["median"] for r in results if r["workers"] == workers}


def ratios_at(results: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """Return jobvisor's median divided by each other system's, at ``workers`` processes."""
    medians = medians_at(results, workers)
    jobvisor = medians.get("jobvisor")
    drivers = {name: medians[name] for name in PGQUEUER if name in medians}
    best = max(drivers, key=drivers.__getitem__) if drivers else None
    return {
        "jobvisor/floor": ratio(jobvisor, medians.get("floor")),
        "jobvisor/pgqueuer-best": ratio(jobvisor, drivers.get(best) if best else None),
        "pgqueuer_best_driver": best,
        "jobvisor/pgqueuer-asyncpg": ratio(jobvisor, medians.get("pgqueuer-asyncpg")),
        "jobvisor/pgqueuer-psycopg": ratio(jobvisor, medians.get("pgqueuer-psycopg")),
        "jobvisor/procrastinate": ratio(jobvisor, medians.get("procrastinate")),
    }


def results_table(results: list[dict[str, Any]]) -> str:
    """Return one row per system and W: median, spread, share of the floor, jobvisor's ratio."""
    rows = []
    for result in results:
        summary = result["summary"]
        medians = medians_at(results, result["workers"])
        rows.append([
            result["system"],
            str(result["workers"]),
            f"{result['jobs_per_drain']:,}",
            fmt(summary["median"]),
            f"{fmt(summary['min'])}-{fmt(summary['max'])}",
            f"{fmt(summary['q1'])}-{fmt(summary['q3'])}",
            fmt_ratio(ratio(summary["median"], medians.get("floor"))),
            fmt_ratio(ratio(medians.get("jobvisor"), summary["median"])),
        ])
    return markdown_table(
        ["system", "W", "jobs per drain", "median jobs/s", "min-max", "IQR", "of floor",
         "jobvisor / system"],
        rows,
    )


def ratios_table(ratios: dict[str, dict[str, Any]]) -> str:
    rows = []
    for workers, values in ratios.items():
        rows.append([
            workers,
            fmt_ratio(values["jobvisor/floor"]),
            f"{fmt_ratio(values['jobvisor/pgqueuer-best'])} ({values['pgqueuer_best_driver']})",
            fmt_ratio(values["jobvisor/procrastinate"]),
        ])
    return markdown_table(
        ["W", "jobvisor / floor", "jobvisor / faster PgQueuer", "jobvisor / Procrastinate"],
        rows,
    )
