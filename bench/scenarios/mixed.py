"""mixed: jobvisor's demo workload, checked against the health targets from its telemetry.

The demo's five job types (cartoonize, image-generation, scenes, storybook, auto-story) from
six users on three tiers run under one supervisor with jobvisor's default settings, except
``JOBVISOR_SNAPSHOT_INTERVAL=2`` for more snapshots per run. The bench keeps every snapshot
the supervisor writes while it works and evaluates each with
``jobvisor.telemetry.health.evaluate``, as ``jobvisor health`` does.
"""

from __future__ import annotations

import importlib.util
import json
import time
from typing import Any

from bench.context import Context, Outcome
from bench.report import Target, fmt, markdown_table
from bench.stats import percentile
from bench.systems.jobvisor_system import JobvisorSystem
from jobvisor.telemetry import health

NAME = "mixed"
SUMMARY = "jobvisor's demo workload under one supervisor, against the health targets"
DEMO_MODULES = ("skimage", "PIL")
SNAPSHOT_INTERVAL_S = 2
POLL_S = 0.5
FINISHED = ("completed", "failed", "cancelled")


def run(ctx: Context) -> Outcome:
    missing = [name for name in DEMO_MODULES if importlib.util.find_spec(name) is None]
    if missing:
        note = (f"skipped: the demo needs {', '.join(missing)}; "
                "install them with pip install '.[bench,demo]'")
        ctx.note(f"[yellow]mixed {note}[/yellow]")
        return Outcome(settings={}, data={"skipped": note}, targets=[], tables=[note])

    sizes = ctx.sizes
    with ctx.system("jobvisor", "mixed") as system:
        assert isinstance(system, JobvisorSystem)
        from jobvisor.demo import app as demo_app
        from jobvisor.demo import demo_jobs

        demo_app.configure(dsn=system.dsn)
        try:
            ids = demo_app.enqueue_many(demo_jobs(sizes.mixed_jobs, seed=0))
        finally:
            demo_app.close()
        started = time.monotonic()
        supervisor = system.start_supervisor(
            "jobvisor.demo:app",
            {"JOBVISOR_SNAPSHOT_INTERVAL": str(SNAPSHOT_INTERVAL_S)},
            exit_when_idle=True,
        )
        snapshots = _watch(ctx, system, len(ids))
        elapsed = time.monotonic() - started
        exit_code = supervisor.popen.poll()
        outcomes = _outcomes(system)
        settings = {"jobs": len(ids), "seed": 0, "supervisor": system.settings(),
                    "snapshot_interval_s": SNAPSHOT_INTERVAL_S}

    evaluation = evaluate(snapshots)
    finished = sum(outcomes.get(status, 0) for status in FINISHED)
    data = {
        "jobs": len(ids),
        "statuses": outcomes,
        "elapsed_s": elapsed,
        "jobs_per_min_overall": finished / elapsed * 60 if elapsed else None,
        "supervisor_exit_code": exit_code,
        "snapshots_in_run": len(evaluation["in_run"]),
        "snapshots_counted": evaluation["counted"],
        "full_window": evaluation["full_window"],
        "checks": evaluation["checks"],
        # Snapshots without their sample window and worker list, to keep the file small.
        "snapshots": [
            {key: s.get(key) for key in ("written_at", "node", "metrics", "concurrency",
                                         "health")}
            for s in snapshots
        ],
    }
    targets = [
        Target(f"{check['name']} (median of snapshots)", check["median"], check["op"],
               check["threshold"], check["unit"])
        for check in evaluation["checks"]
    ]
    summary = markdown_table(
        ["jobs", "completed", "failed", "elapsed s", "jobs/min over the run",
         "snapshots counted"],
        [[str(len(ids)), str(outcomes.get("completed", 0)), str(outcomes.get("failed", 0)),
          fmt(elapsed), fmt(data["jobs_per_min_overall"]),
          f"{evaluation['counted']} of {len(evaluation['in_run'])} in run"]],
    )
    tables = [summary, checks_table(evaluation["checks"])]
    if not evaluation["full_window"]:
        tables.append(
            "NOTE: the run ended before the first full 60 s metrics window, so every snapshot "
            "counted is from the first minute, where throughput_per_min reads low; run more "
            "jobs (the full size) for a fair throughput check."
        )
    return Outcome(settings=settings, data=data, targets=targets, tables=tables)


def _watch(ctx: Context, system: JobvisorSystem, jobs: int) -> list[dict[str, Any]]:
    """Collect each new snapshot until the supervisor exits or the timeout passes."""
    path = system.home / "telemetry" / "snapshot.json"
    snapshots: list[dict[str, Any]] = []
    seen: set[float] = set()
    deadline = time.monotonic() + ctx.sizes.mixed_timeout_s
    assert system.supervisor is not None
    with ctx.task(f"demo jobs ({jobs})", total=jobs) as advance:
        while True:
            try:
                snapshot = json.loads(path.read_text())
            except (OSError, ValueError):
                snapshot = None
            if snapshot is not None and snapshot.get("written_at") not in seen:
                seen.add(snapshot["written_at"])
                snapshots.append(snapshot)
            row = system.monitor.execute(
                "SELECT count(*) AS jobs FROM background_jobs WHERE status::text = ANY(%s)",
                (list(FINISHED),),
            ).fetchone()
            advance(row["jobs"])
            if not system.supervisor.alive():
                break
            if time.monotonic() > deadline:
                ctx.note(f"[red]mixed: the demo did not finish within "
                         f"{ctx.sizes.mixed_timeout_s:g} s; stopping the supervisor[/red]")
                break
            time.sleep(POLL_S)
    try:
        final = json.loads(path.read_text())
        if final.get("written_at") not in seen:
            snapshots.append(final)
    except (OSError, ValueError):
        pass
    return snapshots


def _outcomes(system: JobvisorSystem) -> dict[str, int]:
    rows = system.monitor.execute(
        "SELECT status::text AS status, count(*) AS jobs FROM background_jobs GROUP BY status"
    ).fetchall()
    return {row["status"]: int(row["jobs"]) for row in rows}


def evaluate(snapshots: list[dict[str, Any]]) -> dict[str, Any]:
    """Evaluate the snapshots written while jobs were due or running.

    Only snapshots written a whole metrics window (``metrics.window_s``, 60 s) after the
    supervisor started count when there are any: before that, throughput still divides by a
    whole window and reads low. Per health target the result has the median of its value
    over the counted snapshots, the share of them in which the check was ``ok``, the worst
    status, and the value in the last of them.
    """
    in_run = [s for s in snapshots if _working(s)]
    steady = [s for s in in_run if _age(s) >= float(s["metrics"].get("window_s") or 60)]
    counted = steady or in_run
    evaluations = [health.evaluate(s) for s in counted]
    checks = []
    for target in health.TARGETS:
        found = [
            check for evaluation in evaluations for check in evaluation["checks"]
            if check["name"] == target.name
        ]
        measured = [check for check in found if check["status"] != health.SKIPPED]
        values = [float(check["value"]) for check in measured]
        ranks = [health.STATUSES.index(check["status"]) for check in measured]
        checks.append({
            "name": target.name,
            "unit": target.unit,
            "op": ">" if target.higher_is_better else "<",
            "threshold": float(target.target),
            "median": percentile(values, 50) if values else None,
            "last": values[-1] if values else None,
            "last_status": measured[-1]["status"] if measured else health.SKIPPED,
            "worst_status": health.STATUSES[max(ranks)] if ranks else health.SKIPPED,
            "ok_share": (sum(1 for c in measured if c["status"] == health.OK) / len(measured)
                         if measured else None),
            "snapshots": len(measured),
        })
    return {"in_run": in_run, "counted": len(counted), "full_window": bool(steady),
            "checks": checks}


def _working(snapshot: dict[str, Any]) -> bool:
    metrics = snapshot.get("metrics") or {}
    running = (snapshot.get("node") or {}).get("state") == "running"
    return running and bool(metrics.get("queue_depth") or metrics.get("active_jobs"))


def _age(snapshot: dict[str, Any]) -> float:
    """Seconds from the supervisor's start to the snapshot."""
    return float(snapshot["written_at"]) - float(snapshot["node"]["started_at"])


def checks_table(checks: list[dict[str, Any]]) -> str:
    rows = []
    for check in checks:
        share = "-" if check["ok_share"] is None else f"{check['ok_share']:.0%}"
        rows.append([
            check["name"], f"{check['op']} {fmt(check['threshold'])} {check['unit']}",
            fmt(check["median"]), f"{fmt(check['last'])} ({check['last_status']})",
            check["worst_status"], share, str(check["snapshots"]),
        ])
    return markdown_table(
        ["health check", "target", "median", "last in run", "worst", "ok in", "snapshots"], rows
    )
