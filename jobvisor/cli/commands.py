"""Commands that operate on the queue: run, enqueue, status, telemetry, health, migrate,
cleanup."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from rich import box
from rich.console import Console, Group
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from jobvisor.app import App
from jobvisor.config import Settings
from jobvisor.db.dsn import redact
from jobvisor.db.migrations import migrate
from jobvisor.db.store import JobStore
from jobvisor.errors import ConfigError, InvalidJobError

STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
DEFAULT_APP = "jobvisor.demo:app"
CLEANUP_BATCH = 5000
PIPE_WIDTH = 120  # minimum console columns when stdout is not a terminal

# rich styles of health statuses and of worker states
STATUS_STYLES = {
    "ok": "green",
    "watch": "cyan",
    "warning": "yellow",
    "critical": "bold red",
    "skipped": "dim",
}
WORKER_STATE_STYLES = {"throttled": "yellow", "stopping": "dim", "killing": "red"}

logger = logging.getLogger(__name__)


def add_commands(subparsers: Any) -> None:
    run = subparsers.add_parser("run", help="run a supervisor and its workers until stopped")
    add_app_option(run)
    run.add_argument("--types", help="comma-separated job types to run (default: all registered)")
    run.add_argument("--concurrency", type=int, help="jobs running at once on this node (MAX_CONCURRENT_JOBS)")
    run.add_argument("--exit-when-idle", action="store_true", help="exit once no job of these types is pending or running")
    run.set_defaults(handler=command_run)

    enqueue = subparsers.add_parser("enqueue", help="enqueue one job, or every job of a JSON Lines file")
    add_app_option(enqueue)
    enqueue.add_argument("job_type", nargs="?", metavar="TYPE", help="job type of the single job")
    enqueue.add_argument("--data", help="input data of the single job, as JSON (default: {})")
    enqueue.add_argument("--file", type=Path, help="JSON Lines file, one object per line with job_type, data, "
                         "and optionally user_id, user_type, priority, delay; all lines or none are stored")
    enqueue.add_argument("--user-id", help="user the job belongs to")
    enqueue.add_argument("--user-type", help="user tier, for example free, premium or admin")
    enqueue.add_argument("--priority", type=int, help="base priority from -10 to 10 (default: the type's)")
    enqueue.add_argument("--delay", type=float, help="seconds before the job may start")
    enqueue.set_defaults(handler=command_enqueue)

    status = subparsers.add_parser("status", help="job counts per status and type, or one job")
    status.add_argument("job_id", nargs="?", type=int, metavar="JOB_ID", help="show this job")
    status.add_argument("--json", action="store_true", help="print JSON")
    status.set_defaults(handler=command_status)

    telemetry = subparsers.add_parser("telemetry", help="show the supervisor's latest telemetry snapshot")
    output = telemetry.add_mutually_exclusive_group()
    output.add_argument("--json", action="store_true", help="print the snapshot file's JSON")
    output.add_argument("--watch", action="store_true", help="redraw whenever the snapshot changes")
    output.add_argument(
        "--plot",
        type=Path,
        metavar="FILE",
        help="write a PNG chart of queue depth, throughput, CPU, memory and concurrency over time "
        "(needs jobvisor[plot])",
    )
    telemetry.set_defaults(handler=command_telemetry)

    health = subparsers.add_parser(
        "health",
        help="check the telemetry snapshot against the health targets; exit 2 when critical",
    )
    health.add_argument("--json", action="store_true", help="print the status and checks as JSON")
    health.set_defaults(handler=command_health)

    migrate_parser = subparsers.add_parser("migrate", help="apply the database migrations")
    migrate_parser.set_defaults(handler=command_migrate)

    cleanup = subparsers.add_parser("cleanup", help="delete finished jobs older than N days, in batches")
    cleanup.add_argument("--days", type=int, required=True, help="keep finished jobs of the last N days")
    cleanup.add_argument("--batch-size", type=int, default=CLEANUP_BATCH, help="rows deleted per transaction")
    cleanup.set_defaults(handler=command_cleanup)


def add_app_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--app",
        default=os.environ.get("JOBVISOR_APP", DEFAULT_APP),
        metavar="MODULE:ATTR",
        help=f"the App object to use (default: $JOBVISOR_APP, else {DEFAULT_APP})",
    )


def settings_from(args: argparse.Namespace, **overrides: Any) -> Settings:
    return Settings.load(profile=args.profile, **overrides)


def load_app(reference: str, args: argparse.Namespace, **overrides: Any) -> App:
    """Import ``MODULE:ATTR`` and point the App at the command's DSN and settings."""
    module_name, _, attribute = reference.partition(":")
    if not module_name or not attribute:
        raise ConfigError(f"--app {reference!r} must look like MODULE:ATTR, for example myproject.jobs:app")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as error:
        raise ConfigError(f"--app {reference!r}: cannot import {module_name!r} ({error})") from error
    app = getattr(module, attribute, None)
    if not isinstance(app, App):
        raise ConfigError(f"--app {reference!r}: {module_name}.{attribute} is not a jobvisor App")
    return configure_app(app, args, **overrides)


def configure_app(app: App, args: argparse.Namespace, **overrides: Any) -> App:
    app.configure(dsn=args.dsn, settings=settings_from(args, **overrides))
    return app


def open_store(args: argparse.Namespace) -> JobStore:
    """Open a job store on the command's database, for commands that need no App."""
    app = App(args.dsn, settings=settings_from(args))
    return JobStore(app.connect(application_name="jobvisor-cli"))


# Commands


def command_run(args: argparse.Namespace) -> int:
    app = load_app(args.app, args, max_concurrent_jobs=args.concurrency)
    types = [t.strip() for t in args.types.split(",") if t.strip()] if args.types else None
    return app.run(types=types, exit_when_idle=args.exit_when_idle)


def command_enqueue(args: argparse.Namespace) -> int:
    app = load_app(args.app, args)
    if args.file is not None:
        if args.job_type or args.data:
            raise ConfigError("give either TYPE with --data, or --file, not both")
        rows = read_jobs_file(args.file)
        ids = app.enqueue_many(rows)
        print(f"enqueued {len(ids)} jobs from {args.file}" + (f": ids {ids[0]}..{ids[-1]}" if ids else ""))
        return 0
    if not args.job_type:
        raise ConfigError("give a job TYPE (with --data JSON), or --file JOBS.jsonl")
    data = parse_json(args.data or "{}", "--data")
    job_id = app.enqueue(
        args.job_type,
        data,
        user_id=args.user_id,
        user_type=args.user_type,
        priority=args.priority,
        delay=args.delay,
    )
    print(job_id)
    return 0


def parse_json(text: str, where: str) -> Any:
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as error:
        raise InvalidJobError(f"{where} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}") from None


def _reject_constant(name: str) -> Any:
    raise InvalidJobError(f"JSON value {name} is not allowed; PostgreSQL jsonb has no NaN or Infinity")


def read_jobs_file(path: Path) -> list[dict[str, Any]]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as error:
        raise ConfigError(f"cannot read {path}: {error.strerror}") from None
    except UnicodeDecodeError as error:
        raise InvalidJobError(f"{path} is not UTF-8 text: {error}") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        row = parse_json(line, f"{path} line {number}")
        if not isinstance(row, dict):
            raise InvalidJobError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
        rows.append(row)
    return rows


def command_status(args: argparse.Namespace) -> int:
    store = open_store(args)
    if args.job_id is not None:
        job = store.get_job(args.job_id)
        if job is None:
            print(f"jobvisor: job {args.job_id} not found", file=sys.stderr)
            return 1
        if args.json:
            print(orjson.dumps(job, default=_json_default, option=orjson.OPT_INDENT_2).decode())
        else:
            print_job(job)
        return 0

    rows = store.status_counts()
    counts = {status: 0 for status in STATUSES}
    by_type: dict[str, dict[str, int]] = {}
    for row in rows:
        counts[row["status"]] += row["jobs"]
        by_type.setdefault(row["type"], {status: 0 for status in STATUSES})[row["status"]] = row["jobs"]
    if args.json:
        print(orjson.dumps({"counts": counts, "by_type": by_type, "total": sum(counts.values())}, option=orjson.OPT_INDENT_2).decode())
        return 0
    table = Table(title="jobs")
    table.add_column("type")
    for status in STATUSES:
        table.add_column(status, justify="right")
    for job_type, per_status in sorted(by_type.items()):
        table.add_row(job_type, *(str(per_status[status]) for status in STATUSES))
    table.add_row("all", *(str(counts[status]) for status in STATUSES), style="bold")
    console().print(table)
    return 0


def print_job(job: dict[str, Any]) -> None:
    table = Table(show_header=False, title=f"job {job['id']}")
    for key, value in job.items():
        if key == "attempts":
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        table.add_row(key, "" if value is None else str(value))
    console().print(table)
    for attempt in job["attempts"]:
        print(f"attempt {attempt.get('attempt')} at {attempt.get('at')}: {attempt.get('error')}")


def _json_default(value: Any) -> Any:
    if isinstance(value, (dt.datetime, dt.date)):
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def command_migrate(args: argparse.Namespace) -> int:
    app = App(args.dsn, settings=settings_from(args))
    from jobvisor.db.connection import connect

    with connect(app.dsn, application_name="jobvisor-migrate") as conn:
        applied = migrate(conn)
    if applied:
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print(f"the database at {redact(app.dsn)} is up to date")
    return 0


def command_cleanup(args: argparse.Namespace) -> int:
    if args.days < 0:
        raise ConfigError(f"--days {args.days} is negative; use 0 or more days")
    if args.batch_size < 1:
        raise ConfigError(f"--batch-size {args.batch_size} must be at least 1")
    store = open_store(args)
    total = 0
    with Progress(SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn(), transient=True) as progress:
        task = progress.add_task("deleting finished jobs", total=None)
        while True:
            deleted = store.cleanup_batch(args.days, args.batch_size)
            total += deleted
            progress.update(task, description=f"deleted {total} finished jobs")
            if deleted == 0:
                break
    print(f"deleted {total} finished jobs older than {args.days} days")
    logging.getLogger("jobvisor.cli").info("cleanup deleted %d jobs older than %d days", total, args.days)
    return 0


def command_telemetry(args: argparse.Namespace) -> int:
    from jobvisor.telemetry.snapshot import read_snapshot, snapshot_path

    path = snapshot_path()
    snapshot = load_snapshot(path)
    if snapshot is None:
        return 1
    if args.json:
        print(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2).decode())
        return 0
    if args.plot is not None:
        return plot_telemetry(snapshot, args.plot)
    if not args.watch:
        console().print(telemetry_view(snapshot))
        return 0

    from rich.live import Live

    with Live(telemetry_view(snapshot), console=console(), refresh_per_second=2) as live:
        while True:
            time.sleep(1.0)
            try:
                live.update(telemetry_view(read_snapshot(path)))
            except (FileNotFoundError, orjson.JSONDecodeError):
                continue


def command_health(args: argparse.Namespace) -> int:
    """Print the health checks of the snapshot; exit 2 when the overall status is critical."""
    from jobvisor.telemetry.health import CRITICAL, evaluate, overall_status, staleness_check
    from jobvisor.telemetry.snapshot import snapshot_path

    snapshot = load_snapshot(snapshot_path())
    if snapshot is None:
        return 1
    checks = evaluate(snapshot)["checks"]
    stale = staleness_check(snapshot, time.time())
    if stale is not None:
        checks.insert(0, stale)
    status = overall_status(checks)
    if args.json:
        report = {"status": status, "checks": checks}
        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    else:
        console().print(health_view(snapshot, status, checks))
    return 2 if status == CRITICAL else 0


def load_snapshot(path: Path) -> dict[str, Any] | None:
    """Read the snapshot at ``path``, or print why it cannot be read and return None."""
    from jobvisor.telemetry.snapshot import read_snapshot

    try:
        return read_snapshot(path)
    except FileNotFoundError:
        print(
            f"jobvisor: no telemetry snapshot at {path}; start a supervisor with `jobvisor run`, "
            "or set JOBVISOR_HOME to the directory of a running supervisor",
            file=sys.stderr,
        )
    except orjson.JSONDecodeError as error:
        print(
            f"jobvisor: telemetry snapshot {path} is not valid JSON ({error}); a running "
            "supervisor replaces it within one snapshot interval",
            file=sys.stderr,
        )
    return None


def console() -> Console:
    """Return a Console that is at least 120 columns wide when stdout is not a terminal."""
    if sys.stdout.isatty():
        return Console()
    return Console(width=max(shutil.get_terminal_size().columns, PIPE_WIDTH))


# Telemetry charts


def plot_telemetry(snapshot: dict[str, Any], destination: Path) -> int:
    """Write the PNG chart of the snapshot's samples to ``destination``; return the exit code."""
    from jobvisor.telemetry.plot import plot_window

    node = snapshot["node"]
    title = f"{node['hostname']} supervisor {node['supervisor_pid']}"
    try:
        columns, source = plot_columns(snapshot)
    except (KeyError, ValueError) as error:
        print(f"jobvisor: invalid telemetry window in the snapshot: {error}", file=sys.stderr)
        return 1
    samples = int(np.isfinite(columns.get("timestamp", np.empty(0))).sum())
    if samples == 0:
        print(
            f"jobvisor: no samples to plot in {source} yet; "
            "wait a few seconds until the supervisor has taken some",
            file=sys.stderr,
        )
        return 1
    try:
        written = plot_window(columns, destination, title)
    except ImportError as error:
        print(f"jobvisor: {error}", file=sys.stderr)
        return 1
    except OSError as error:
        print(
            f"jobvisor: failed to write {destination}: {error.strerror}; "
            "give --plot a path in an existing, writable directory",
            file=sys.stderr,
        )
        return 1
    print(f"wrote {written}: {samples} samples from {source}")
    return 0


def plot_columns(snapshot: dict[str, Any]) -> tuple[dict[str, np.ndarray], str]:
    """Return the sample columns to plot and where they came from.

    The live shared-memory ring of the supervisor keeps up to its capacity of rows (4096 by
    default), more than the snapshot's window, so it is used while it exists and has rows.
    """
    from jobvisor.telemetry.plot import columns_from_window
    from jobvisor.telemetry.shm import SHM_DIRECTORY, LayoutError, attach

    segment = snapshot["node"].get("telemetry_segment")
    if segment and (SHM_DIRECTORY / segment).exists():
        try:
            block = attach(segment)
        except (OSError, LayoutError) as error:
            logger.warning(
                "cannot read telemetry block %s, plotting the snapshot window instead: %s",
                segment, error,
            )  # fmt: skip
        else:
            try:
                columns = block.latest_columns()
            finally:
                block.close()
            if columns.get("timestamp", np.empty(0)).size:
                return columns, f"shared memory {segment}"
    return columns_from_window(snapshot["window"]), "the snapshot window"


# Telemetry tables


def telemetry_view(snapshot: dict[str, Any]) -> Group:
    """Render the snapshot: node and metrics header, workers table, last concurrency decision."""
    node = snapshot["node"]
    metrics = snapshot["metrics"]
    concurrency = snapshot["concurrency"]
    now = time.time()
    health = (snapshot.get("health") or {}).get("status", "-")
    level = concurrency.get("level")
    limit = f"limit {concurrency['limit']}" + ("" if level is None else f" (level {level})")
    header = Text.assemble(
        f"{node['hostname']} supervisor {node['supervisor_pid']} ({node.get('state', 'running')}), "
        f"written {now - snapshot['written_at']:.0f} s ago, health ",
        (health, STATUS_STYLES.get(health, "")),
        "\n",
        f"CPU {metrics['cpu_percent']:.0f} %, memory {metrics['memory_percent']:.0f} %, "
        f"{metrics['active_jobs']} running, {metrics['queue_depth']} due, {limit}, "
        f"throughput {_number(metrics.get('throughput_per_min'))}/min, "
        f"p95 latency {_number(metrics.get('latency_p95_s'))} s",
    )

    table = Table(box=box.SIMPLE_HEAD)
    columns = ("pid", "job type", "state", "job", "RSS MB", "USS MB", "CPU %", "budget", "done")
    for column in columns:
        justify = "left" if column in ("job type", "state", "budget") else "right"
        table.add_column(column, justify=justify, no_wrap=True)
    for worker in snapshot["workers"]:
        budget = worker["budget"]
        table.add_row(
            str(worker["pid"]),
            worker["job_type"],
            Text(worker["state"], style=WORKER_STATE_STYLES.get(worker["state"], "")),
            "" if worker["job_id"] is None else str(worker["job_id"]),
            _number(worker["rss_mb"]),
            _number(worker.get("uss_mb")),
            _number(worker["cpu_percent"]),
            f"{budget['memory_mb']} MB, {budget['cpu_percent']} %",
            str(worker["jobs_done"]),
        )

    parts: list[Any] = [header, table]
    decision = concurrency.get("last_decision")
    if decision:
        age = now - decision["at"]
        rule, reason = decision["rule"], decision["reason"]
        parts.append(Text(f"last concurrency decision {age:.0f} s ago ({rule}): {reason}"))
    return Group(*parts)


def health_view(snapshot: dict[str, Any], status: str, checks: list[dict[str, Any]]) -> Group:
    """Render the checks as a table, followed by the message of each check that is not ok."""
    from jobvisor.telemetry.health import OK, format_number

    node = snapshot["node"]
    title = Text.assemble(
        f"health of {node['hostname']} supervisor {node['supervisor_pid']}: ",
        (status, STATUS_STYLES.get(status, "")),
    )
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("check", "value", "status", "target", "warning", "critical"):
        table.add_column(column, justify="right" if column == "value" else "left", no_wrap=True)
    for check in checks:
        value = check["value"]
        value_text = "-" if value is None else f"{format_number(value)} {check['unit']}"
        table.add_row(
            check["name"],
            value_text,
            Text(check["status"], style=STATUS_STYLES.get(check["status"], "")),
            check["target"],
            check["warning"],
            check["critical"],
        )
    notes = [
        Text(f"{check['status']}: {check['message']}") for check in checks if check["status"] != OK
    ]
    return Group(table, *notes)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
