"""overhead: CPU of the jobvisor supervisor process itself while 16 children sleep in jobs.

For each telemetry setting a fresh database gets 16 sleeping jobs of a type with
concurrency 16, then a supervisor starts with ``MAX_CONCURRENT_JOBS=16`` and adaptive
concurrency off. Once all 16 jobs run, the supervisor's own user + system CPU time (psutil
``cpu_times``, children not included) is read before and after the window.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psutil

from bench import plots
from bench.context import Context, Outcome
from bench.processes import wait_until
from bench.report import Target, fmt, markdown_table
from bench.systems.jobvisor_system import JobvisorSystem

NAME = "overhead"
SUMMARY = "the supervisor's own CPU with 16 sleeping children, telemetry at 1 Hz and off"
MODES = (
    {"key": "1hz", "label": "sampling every 1 s", "sample_interval": "1"},
    {"key": "off", "label": "sampling every 3600 s (off)", "sample_interval": "3600"},
)
# Seconds to wait after all children run before the window starts.
SETTLE_S = 3.0
TARGET_PERCENT = 2.0


def run(ctx: Context) -> Outcome:
    results = [measure(ctx, mode) for mode in MODES]
    on, off = results
    difference = on["supervisor_cpu_percent"] - off["supervisor_cpu_percent"]
    targets = [
        Target("supervisor CPU with 1 Hz sampling", on["supervisor_cpu_percent"], "<",
               TARGET_PERCENT, "% of one core"),
    ]
    rows = [
        [r["label"], fmt(r["supervisor_cpu_percent"]), fmt(r["children_cpu_percent"]),
         str(r["children"]), fmt(r["window_s"])]
        for r in results
    ]
    rows.append(["difference (1 Hz - off)", fmt(difference), "-", "-", "-"])
    table = markdown_table(
        ["telemetry", "supervisor CPU, % of one core", "16 children, % of one core",
         "children", "window s"],
        rows,
    )
    settings = {
        "children": ctx.sizes.overhead_children,
        "window_s": ctx.sizes.overhead_window_s,
        "settle_s": SETTLE_S,
        "modes": {r["key"]: r["settings"] for r in results},
    }
    data = {"results": results, "difference_percent": difference}

    def plot(stem: Path) -> list[Path]:
        return [plots.overhead_bars(results, stem.with_suffix(".png"))]

    return Outcome(settings=settings, data=data, targets=targets, tables=[table], plot=plot)


def measure(ctx: Context, mode: dict[str, str]) -> dict[str, Any]:
    sizes = ctx.sizes
    children = sizes.overhead_children
    window = sizes.overhead_window_s
    with ctx.system("jobvisor", f"overhead-{mode['key']}") as system:
        assert isinstance(system, JobvisorSystem)
        # The jobs outlast the window; stopping the supervisor ends them.
        seconds = window + SETTLE_S + 300
        system.app().enqueue_many(
            [{"job_type": "sleep", "data": {"seconds": seconds}}] * children
        )
        supervisor = system.start_supervisor(
            "bench.apps:sleep_app",
            {
                "MAX_CONCURRENT_JOBS": str(children),
                "JOBVISOR_ADAPTIVE_CONCURRENCY": "0",
                "JOB_MEMORY_LIMIT": "4096",
                "JOBVISOR_SAMPLE_INTERVAL": mode["sample_interval"],
                "JOBVISOR_DRAIN_TIMEOUT": "2",
            },
        )
        process = psutil.Process(supervisor.pid)

        def all_running() -> bool:
            row = system.monitor.execute(
                "SELECT count(*) AS jobs FROM background_jobs WHERE status = 'processing'"
            ).fetchone()
            return row["jobs"] >= children and len(process.children()) >= children

        wait_until(all_running, timeout_s=120, interval_s=0.2, processes=[supervisor],
                   what=f"{children} sleeping jobs to run")
        time.sleep(SETTLE_S)
        workers = process.children()
        before = _cpu_seconds(process)
        before_children = sum(_cpu_seconds(child) for child in workers)
        started = time.monotonic()
        with ctx.task(f"supervisor CPU, {mode['label']}", total=window) as advance:
            while (elapsed := time.monotonic() - started) < window:
                supervisor.check_alive()
                advance(min(elapsed, window))
                time.sleep(min(1.0, window - elapsed))
        measured_s = time.monotonic() - started
        used = _cpu_seconds(process) - before
        used_children = sum(_cpu_seconds(child) for child in workers) - before_children
        settings = system.settings()
    return {
        "key": mode["key"],
        "label": mode["label"],
        "settings": settings,
        "children": len(workers),
        "window_s": measured_s,
        "supervisor_cpu_s": used,
        "supervisor_cpu_percent": used / measured_s * 100,
        "children_cpu_percent": used_children / measured_s * 100,
    }


def _cpu_seconds(process: psutil.Process) -> float:
    """User + system CPU seconds of ``process`` alone, not of its children."""
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return times.user + times.system
