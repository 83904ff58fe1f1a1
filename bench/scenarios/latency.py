"""latency: time from enqueueing one job to its handler starting, with idle workers.

The bench enqueues single jobs at a fixed spacing and records time.time() just before each
enqueue call. Each handler records time.time() as its first step (bench.stamps). Both run
on this machine, so they read the same clock. The latency includes the enqueue call
itself: the insert and its commit.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import plots
from bench.context import Context, Outcome
from bench.processes import wait_until
from bench.report import Target, fmt, markdown_table
from bench.stamps import read_stamps
from bench.stats import latency_summary

NAME = "latency"
SUMMARY = "enqueue-to-start latency of single jobs with idle workers"
SYSTEMS = ("jobvisor", "pgqueuer-asyncpg", "pgqueuer-psycopg", "procrastinate")
# Unmeasured jobs enqueued first, so that connections and code paths are warm.
WARMUP_JOBS = 20
# Maximum wait for the last handler to start after the last enqueue (seconds).
SETTLE_TIMEOUT_S = 30.0


def run(ctx: Context) -> Outcome:
    sizes = ctx.sizes
    results = [measure(ctx, name) for name in SYSTEMS]
    jobvisor = next(r for r in results if r["system"] == "jobvisor")["summary"]
    targets = [
        Target("jobvisor pickup p50", jobvisor["p50_ms"], "<=", 5.0, "ms"),
        Target("jobvisor pickup p99", jobvisor["p99_ms"], "<=", 20.0, "ms"),
    ]
    rows = [
        [r["system"], fmt(r["summary"]["p50_ms"]), fmt(r["summary"]["p95_ms"]),
         fmt(r["summary"]["p99_ms"]), fmt(r["summary"]["mean_ms"]), fmt(r["summary"]["max_ms"]),
         str(r["summary"]["n"])]
        for r in results
    ]
    table = markdown_table(["system", "p50 ms", "p95 ms", "p99 ms", "mean ms", "max ms", "jobs"],
                           rows)
    settings = {
        "jobs": sizes.latency_jobs,
        "spacing_s": sizes.latency_spacing_s,
        "workers": sizes.latency_workers,
        "warmup_jobs": WARMUP_JOBS,
        "systems": {r["system"]: r["settings"] for r in results},
    }
    data = {"results": results}

    def plot(stem: Path) -> list[Path]:
        latencies = {r["system"]: r["latencies_ms"] for r in results}
        return [plots.latency_cdf(latencies, stem.with_suffix(".png"))]

    return Outcome(settings=settings, data=data, targets=targets, tables=[table], plot=plot)


def measure(ctx: Context, name: str) -> dict[str, Any]:
    """Start ``name`` idle, enqueue single jobs at the configured spacing, read the starts."""
    sizes = ctx.sizes
    with ctx.system(name, "latency") as system:
        system.start(sizes.latency_workers, "stamp")
        stamp_file = system.workdir / "stamps.txt"
        warmup = list(range(-WARMUP_JOBS, 0))
        _enqueue_spaced(system, warmup, sizes.latency_spacing_s, None)
        _wait_for_starts(system, stamp_file, warmup)

        seqs = list(range(sizes.latency_jobs))
        with ctx.task(f"{name} single enqueues", total=len(seqs)) as advance:
            enqueued = _enqueue_spaced(system, seqs, sizes.latency_spacing_s, advance)
        starts = _wait_for_starts(system, stamp_file, seqs)
        settings = system.settings()
    latencies = [(starts[seq] - enqueued[seq]) * 1000 for seq in seqs]
    return {
        "system": name,
        "settings": settings,
        "latencies_ms": latencies,
        "summary": latency_summary(latencies),
    }


def _enqueue_spaced(system: Any, seqs: list[int], spacing_s: float,
                    advance: Any) -> dict[int, float]:
    """Enqueue one job per seq, the n-th at start + n × spacing; return seq -> enqueue time."""
    enqueued: dict[int, float] = {}
    start = time.monotonic()
    for index, seq in enumerate(seqs):
        delay = start + index * spacing_s - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        enqueued[seq] = time.time()
        system.enqueue_stamp(seq)
        if advance is not None:
            advance(index + 1)
    return enqueued


def _wait_for_starts(system: Any, stamp_file: Path, seqs: list[int]) -> dict[int, float]:
    expected = set(seqs)

    def all_started() -> bool:
        return expected <= read_stamps(stamp_file).keys()

    wait_until(all_started, timeout_s=SETTLE_TIMEOUT_S, interval_s=0.05,
               what=f"{system.name} handlers to start {len(seqs)} jobs",
               processes=system.processes)
    return read_stamps(stamp_file)
