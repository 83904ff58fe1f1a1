"""depth: jobvisor's no-op throughput with a small backlog, a large one, and finished rows kept.

Each case gets a fresh database and a supervisor with W workers. Per repetition the table
is emptied, the finished rows are inserted (completed a day ago) and vacuumed. Then the
pending backlog is inserted in one statement while the workers are paused (SIGSTOP), and
the clock starts when they resume. In the first repetition, one claim runs under
auto_explain before they resume (bench.claim_plan). Throughput comes from jobvisor's own
``completed_at`` between the 10 % and the 100 % mark of the first ``depth_window``
completions, which leaves out the wake-up. The rest of the backlog is then deleted.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bench import jobvisor_rows, plots
from bench.claim_plan import explain_claim
from bench.context import Context, Outcome
from bench.processes import pause, resume, wait_until
from bench.report import Target, fmt, fmt_ratio, markdown_table
from bench.stats import ratio, summarize
from bench.systems.jobvisor_system import JobvisorSystem
from jobvisor import Settings

NAME = "depth"
SUMMARY = "jobvisor throughput with a small and a large backlog, and with finished rows kept"
# The window of completions measured starts at this fraction of depth_window.
WINDOW_START = 0.1
# A Sort that reads at least this fraction of the pending rows counts as sorting them all.
FULL_SORT_FRACTION = 0.5
COMPLETED_SINCE = """
SELECT count(*) AS jobs FROM background_jobs
WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at >= %(since)s
"""
NTH_COMPLETION = """
SELECT completed_at FROM background_jobs
WHERE status IN ('completed', 'failed', 'cancelled') AND completed_at >= %(since)s
ORDER BY completed_at
OFFSET %(offset)s LIMIT 1
"""


def cases(ctx: Context) -> list[dict[str, Any]]:
    sizes = ctx.sizes
    return [
        {"key": "small", "pending": sizes.depth_small, "finished": 0},
        {"key": "large", "pending": sizes.depth_large, "finished": 0},
        {"key": "large+finished", "pending": sizes.depth_large, "finished": sizes.depth_finished},
    ]


def label(case: dict[str, Any]) -> str:
    text = f"{case['pending']:,} pending"
    if case["finished"]:
        text += f" + {case['finished']:,} finished"
    return text


def run(ctx: Context) -> Outcome:
    sizes = ctx.sizes
    results = []
    for case in cases(ctx):
        results.append(measure_case(ctx, case))
    small, large, finished = (r["summary"]["median"] for r in results)
    deepest = results[-1]
    plan = deepest["plan"]
    largest_sort = max((s["rows_read"] for s in plan.get("sorts", [])), default=0.0)
    targets = [
        Target(f"{label(deepest)} / {label(results[0])}", ratio(finished, small), ">=", 0.8, "×"),
        Target(f"largest Sort in the claim / pending rows ({label(deepest)})",
               ratio(largest_sort, plan.get("pending")) if plan.get("checked") else None,
               "<", FULL_SORT_FRACTION, "×"),
    ]
    rows = []
    for result in results:
        summary = result["summary"]
        rows.append([
            result["label"], fmt(summary["median"]), f"{fmt(summary['min'])}-{fmt(summary['max'])}",
            fmt_ratio(ratio(summary["median"], small)), str(summary["n"]),
        ])
    table = markdown_table(["table", "median jobs/s", "min-max", "of first row", "repetitions"],
                           rows)
    tables = [table, plan_table(results)]
    settings = {
        "workers": sizes.depth_workers,
        "window": sizes.depth_window,
        "window_start": WINDOW_START,
        "repetitions": sizes.depth_repetitions,
        "cases": [{"label": label(case), **case} for case in cases(ctx)],
        "ratios": {"large/small": ratio(large, small), "large+finished/small": ratio(finished,
                                                                                     small)},
    }
    data = {"results": results}

    def plot(stem: Path) -> list[Path]:
        return [plots.depth_bars(results, stem.with_suffix(".png"))]

    return Outcome(settings=settings, data=data, targets=targets, tables=tables, plot=plot)


def measure_case(ctx: Context, case: dict[str, Any]) -> dict[str, Any]:
    sizes = ctx.sizes
    runs = []
    plan: dict[str, Any] = {"checked": False, "reason": "not run"}
    with ctx.system("jobvisor", f"depth-{case['key']}") as system:
        assert isinstance(system, JobvisorSystem)
        system.start(sizes.depth_workers, "noop")
        with ctx.task(f"depth {label(case)}", total=sizes.depth_repetitions) as advance:
            for index in range(sizes.depth_repetitions):
                run, explained = measure_once(ctx, system, case, explain=index == 0)
                runs.append(run)
                if explained is not None:
                    plan = explained
                advance(index + 1)
        settings = system.settings()
    return {
        "key": case["key"],
        "label": label(case),
        "pending": case["pending"],
        "finished": case["finished"],
        "settings": settings,
        "runs": runs,
        "plan": plan,
        "summary": summarize([run["jobs_per_s"] for run in runs]),
    }


def measure_once(
    ctx: Context, system: JobvisorSystem, case: dict[str, Any], *, explain: bool
) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """Fill the table, release the backlog, time the window, and clear the backlog."""
    sizes = ctx.sizes
    window = min(sizes.depth_window, case["pending"])
    conn = system.monitor
    conn.execute("TRUNCATE background_jobs")
    if case["finished"]:
        jobvisor_rows.insert_completed(conn, case["finished"])
    conn.execute("VACUUM (ANALYZE) background_jobs")

    explained = None
    pause(system.processes)
    try:
        inserted = time.monotonic()
        jobvisor_rows.insert_pending(conn, case["pending"])
        insert_s = time.monotonic() - inserted
        if explain:
            # With the workers paused, the claim reads the whole backlog and runs alone.
            explained = explain_claim(
                system.dsn, "noop", batch_size=Settings.claim_batch_max,
                type_limit=sizes.depth_workers, max_per_user=Settings.max_jobs_per_user,
            )
            explained["pending"] = case["pending"]
        released = conn.execute("SELECT clock_timestamp() AS now").fetchone()["now"]
    finally:
        resume(system.processes)

    def completed() -> bool:
        row = conn.execute(COMPLETED_SINCE, {"since": released}).fetchone()
        return row["jobs"] >= window

    wait_until(completed, timeout_s=600, interval_s=0.1, processes=system.processes,
               what=f"{window} completions with {label(case)}")
    first = _nth_completion(conn, released, max(1, int(window * WINDOW_START)))
    last = _nth_completion(conn, released, window)
    measured_jobs = window - max(1, int(window * WINDOW_START))
    seconds = (last - first).total_seconds()
    from_release = (last - released).total_seconds()

    conn.execute("DELETE FROM background_jobs WHERE status = 'pending'")
    wait_until(
        lambda: conn.execute(
            "SELECT NOT EXISTS (SELECT 1 FROM background_jobs WHERE status = 'processing') AS idle"
        ).fetchone()["idle"],
        timeout_s=60, interval_s=0.1, what="workers to finish their claimed jobs",
        processes=system.processes,
    )
    run = {
        "insert_pending_s": insert_s,
        "window_jobs": measured_jobs,
        "window_s": seconds,
        "jobs_per_s": measured_jobs / seconds if seconds > 0 else float("inf"),
        "first_window_from_release_jobs_per_s": window / from_release if from_release else None,
    }
    return run, explained


def _nth_completion(conn: Any, since: Any, n: int) -> Any:
    row = conn.execute(NTH_COMPLETION, {"since": since, "offset": n - 1}).fetchone()
    return row["completed_at"]


def plan_table(results: list[dict[str, Any]]) -> str:
    rows = []
    for result in results:
        plan = result["plan"]
        if not plan.get("checked"):
            rows.append([result["label"], "-", "-", f"not checked: {plan.get('reason')}"])
            continue
        sorts = plan.get("sorts", [])
        largest = max((s["rows_read"] for s in sorts), default=0.0)
        pending = plan.get("pending") or 0
        full = largest >= FULL_SORT_FRACTION * pending if pending else False
        verdict = "a Sort reads all pending rows" if full else "no Sort reads all pending rows"
        rows.append([result["label"], fmt(pending), f"{fmt(largest)} ({len(sorts)} Sort nodes)",
                     verdict])
    return markdown_table(
        ["table", "pending at EXPLAIN", "largest Sort input, rows", "claim plan"], rows
    )
