"""enqueue: jobs per second through ``App.enqueue_many``, one call per batch.

The rows are built before the clock starts; the call validates them, serializes the input
data and inserts all of them in one statement. The table is emptied between calls.
"""

from __future__ import annotations

import time
from typing import Any

from bench.context import Context, Outcome
from bench.report import Target, fmt, markdown_table
from bench.stats import summarize
from bench.systems.jobvisor_system import JobvisorSystem

NAME = "enqueue"
SUMMARY = "App.enqueue_many of many no-op jobs in one call"
TARGET_JOBS_PER_S = 100_000


def run(ctx: Context) -> Outcome:
    sizes = ctx.sizes
    jobs = sizes.enqueue_jobs
    rounds = sizes.enqueue_warmups + sizes.enqueue_repetitions
    runs: list[dict[str, Any]] = []
    with ctx.system("jobvisor", "enqueue") as system:
        assert isinstance(system, JobvisorSystem)
        app = system.app()
        with ctx.task(f"enqueue_many of {jobs:,} jobs", total=rounds) as advance:
            for index in range(rounds):
                rows = [{"job_type": "noop", "data": {"n": n}} for n in range(jobs)]
                started = time.perf_counter()
                ids = app.enqueue_many(rows)
                seconds = time.perf_counter() - started
                if len(ids) != jobs:
                    raise RuntimeError(f"enqueue_many stored {len(ids)} of {jobs} jobs")
                system.reset()
                runs.append({"warmup": index < sizes.enqueue_warmups, "jobs": jobs,
                             "seconds": seconds, "jobs_per_s": jobs / seconds})
                advance(index + 1)
    summary = summarize([run["jobs_per_s"] for run in runs if not run["warmup"]])
    targets = [Target("App.enqueue_many", summary["median"], ">=", TARGET_JOBS_PER_S, "jobs/s")]
    table = markdown_table(
        ["jobs per call", "median jobs/s", "min-max", "median s per call", "measured calls"],
        [[f"{jobs:,}", fmt(summary["median"]), f"{fmt(summary['min'])}-{fmt(summary['max'])}",
          fmt(jobs / summary["median"]), str(summary["n"])]],
    )
    settings = {"jobs": jobs, "warmups": sizes.enqueue_warmups,
                "repetitions": sizes.enqueue_repetitions, "row": {"job_type": "noop",
                                                                  "data": {"n": "<int>"}}}
    return Outcome(settings=settings, data={"runs": runs, "summary": summary},
                   targets=targets, tables=[table])
