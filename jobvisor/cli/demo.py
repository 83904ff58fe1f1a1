"""``jobvisor demo``: enqueue the demo application's jobs and run them to the end."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import time
from collections import defaultdict
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobvisor.cli.commands import console as wide_console
from jobvisor.db.dsn import configured_dsn, redact
from jobvisor.db.embedded import data_dir
from jobvisor.db.store import JobStore
from jobvisor.paths import home_dir

DEFAULT_JOBS = 60
POLL_S = 0.5


def add_command(subparsers: Any) -> None:
    demo = subparsers.add_parser(
        "demo",
        help="run the demo application: image and story jobs on real photos, with a summary",
    )
    demo.add_argument("--jobs", type=int, default=DEFAULT_JOBS, help=f"number of jobs to enqueue (default {DEFAULT_JOBS})")
    demo.add_argument("--seed", type=int, default=0, help="seed of the generated workload")
    # The progress bar and summary are the demo's output; workers log warnings and errors only.
    demo.set_defaults(handler=command_demo, default_log_level=logging.WARNING)


def command_demo(args: argparse.Namespace) -> int:
    from jobvisor.cli.commands import configure_app
    from jobvisor.demo import app, demo_jobs
    from jobvisor.errors import ConfigError

    if args.jobs < 1:
        raise ConfigError(f"--jobs {args.jobs} must be at least 1")
    console = wide_console()
    configure_app(app, args)
    if configured_dsn(args.dsn) is None:
        console.print(f"Using the embedded PostgreSQL in {data_dir()}")
    console.print(f"Database: {redact(app.dsn)}")

    ids = app.enqueue_many(demo_jobs(args.jobs, seed=args.seed))
    console.print(
        f"Enqueued {len(ids)} jobs; running them with at most "
        f"{app.settings.max_concurrent_jobs} at once to start with. Output goes to "
        f"{home_dir() / 'demo-output'}"
    )
    run_started = time.time()

    started = time.monotonic()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the supervisor process, checked by the demo's outcome
        code = 1
        try:
            code = app.run(exit_when_idle=True)
        finally:
            logging.shutdown()
            os._exit(code)

    # Ctrl-C reaches the supervisor too: it drains its workers, and this process waits.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    store = JobStore(app.connect(application_name="jobvisor-demo"))
    exit_status = watch_progress(store, ids, pid, console)
    elapsed = time.monotonic() - started

    outcomes = store.job_outcomes(ids)
    failed = print_summary(outcomes, elapsed, console)
    images = [
        path for path in (home_dir() / "demo-output").glob("*.png")
        if path.stat().st_mtime >= run_started
    ]
    console.print(f"{len(images)} PNG files written to {home_dir() / 'demo-output'}")
    if exit_status != 0:
        console.print(f"[red]The supervisor exited with status {exit_status}[/red]")
        return 1
    unfinished = sum(1 for row in outcomes if row["status"] in ("pending", "processing"))
    return 0 if failed == 0 and unfinished == 0 else 1


def watch_progress(store: JobStore, ids: list[int], pid: int, console: Console) -> int:
    """Show finished jobs until the supervisor process exits; return its exit status."""
    columns = (TextColumn("jobs"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task("jobs", total=len(ids))
        while True:
            waited, status = os.waitpid(pid, os.WNOHANG)
            outcomes = store.job_outcomes(ids)
            finished = sum(1 for row in outcomes if row["status"] in ("completed", "failed", "cancelled"))
            progress.update(task, completed=finished)
            if waited == pid:
                return os.waitstatus_to_exitcode(status)
            time.sleep(POLL_S)


def print_summary(outcomes: list[dict[str, Any]], elapsed: float, console: Console) -> int:
    """Print one row per job type; return the number of failed jobs."""
    by_type: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in outcomes:
        by_type[row["type"]].append(row)

    table = Table(title="demo summary")
    for column in ("job type", "jobs", "completed", "failed", "retried", "p50 latency", "p95 latency"):
        table.add_column(column, justify="left" if column == "job type" else "right", no_wrap=True)
    for job_type, rows in sorted(by_type.items()):
        latencies = [float(r["latency_s"]) for r in rows if r["status"] == "completed"]
        table.add_row(
            job_type,
            str(len(rows)),
            str(sum(1 for r in rows if r["status"] == "completed")),
            str(sum(1 for r in rows if r["status"] == "failed")),
            str(sum(1 for r in rows if r["retry_count"] > 0)),
            _seconds(np.percentile(latencies, 50)) if latencies else "-",
            _seconds(np.percentile(latencies, 95)) if latencies else "-",
        )
    console.print(table)

    completed = sum(1 for row in outcomes if row["status"] == "completed")
    failed = sum(1 for row in outcomes if row["status"] == "failed")
    console.print(
        f"Throughput: {completed / elapsed * 60:.1f} jobs/minute "
        f"({completed} completed, {failed} failed in {elapsed:.1f} s)"
    )
    return failed


def _seconds(value: float) -> str:
    return f"{value:.2f} s"
