"""Repeated drains of no-op jobs: the measurement behind the floor and throughput scenarios."""

from __future__ import annotations

from typing import Any

from bench.context import Context
from bench.stats import summarize


def measure_drains(ctx: Context, name: str, workers: int) -> dict[str, Any]:
    """Start ``name`` with ``workers`` processes and drain the configured jobs repeatedly.

    Each drain releases ``throughput_jobs`` no-op jobs at once to idle workers; the first
    ``warmups`` drains are not measured. The job tables are emptied between drains.
    """
    sizes = ctx.sizes
    jobs = jobs_per_drain(ctx, name)
    rounds = sizes.warmups + sizes.repetitions
    runs: list[dict[str, Any]] = []
    with ctx.system(name, f"w{workers}") as system:
        system.start(workers, "noop")
        description = f"{name} W={workers}"
        with ctx.task(description, total=rounds * jobs) as advance:
            for index in range(rounds):
                done_before = index * jobs
                drain = system.drain(jobs, lambda n, base=done_before: advance(base + n))
                system.reset()
                runs.append({
                    "warmup": index < sizes.warmups,
                    "jobs": drain.jobs,
                    "seconds": drain.seconds,
                    "jobs_per_s": drain.jobs_per_s,
                    **drain.extra,
                })
        settings = system.settings()
    measured = [run["jobs_per_s"] for run in runs if not run["warmup"]]
    return {
        "system": name,
        "workers": workers,
        "jobs_per_drain": jobs,
        "settings": settings,
        "runs": runs,
        "summary": summarize(measured),
    }


def jobs_per_drain(ctx: Context, name: str) -> int:
    """Return the jobs per drain of ``name``: throughput_jobs, capped for Procrastinate."""
    if name == "procrastinate":
        return min(ctx.sizes.throughput_jobs, ctx.sizes.procrastinate_jobs)
    return ctx.sizes.throughput_jobs


def result_key(ctx: Context, name: str, workers: int) -> str:
    """Key of a drain result in the run's cache; equal sizes give equal keys."""
    sizes = ctx.sizes
    return (f"drains:{name}:{workers}:{jobs_per_drain(ctx, name)}:{sizes.warmups}:"
            f"{sizes.repetitions}")


def drains_for(ctx: Context, name: str, workers: int) -> dict[str, Any]:
    """Return the drain result of ``name`` at ``workers``, measuring it unless cached."""
    key = result_key(ctx, name, workers)
    if key not in ctx.cache:
        ctx.cache[key] = measure_drains(ctx, name, workers)
    return ctx.cache[key]
