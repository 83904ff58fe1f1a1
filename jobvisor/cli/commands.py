"""Commands that operate on the queue: run, enqueue, status, migrate, cleanup."""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import logging
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from rich import box
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from jobvisor.app import App
from jobvisor.config import Settings
from jobvisor.db.dsn import redact
from jobvisor.db.migrations import migrate
from jobvisor.db.store import JobStore
from jobvisor.errors import ConfigError, InvalidJobError

STATUSES = ("pending", "processing", "completed", "failed", "cancelled")
DEFAULT_APP = "jobvisor.demo:app"
CLEANUP_BATCH = 5000


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
    telemetry.add_argument("--json", action="store_true", help="print the snapshot file's JSON")
    telemetry.add_argument("--watch", action="store_true", help="redraw whenever the snapshot changes")
    telemetry.set_defaults(handler=command_telemetry)

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
    Console().print(table)
    return 0


def print_job(job: dict[str, Any]) -> None:
    table = Table(show_header=False, title=f"job {job['id']}")
    for key, value in job.items():
        if key == "attempts":
            continue
        if isinstance(value, (dict, list)):
            value = json.dumps(value)
        table.add_row(key, "" if value is None else str(value))
    Console().print(table)
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
    try:
        snapshot = read_snapshot(path)
    except FileNotFoundError:
        print(f"jobvisor: no telemetry snapshot at {path}; is a supervisor running with this JOBVISOR_HOME?", file=sys.stderr)
        return 1
    if args.json:
        print(orjson.dumps(snapshot, option=orjson.OPT_INDENT_2).decode())
        return 0
    if not args.watch:
        Console().print(telemetry_view(snapshot))
        return 0

    from rich.live import Live

    with Live(telemetry_view(snapshot), refresh_per_second=2) as live:
        while True:
            time.sleep(1.0)
            try:
                live.update(telemetry_view(read_snapshot(path)))
            except FileNotFoundError:
                continue


def telemetry_view(snapshot: dict[str, Any]) -> Table:
    node = snapshot["node"]
    metrics = snapshot["metrics"]
    age = time.time() - snapshot["written_at"]
    title = (
        f"{node['hostname']} supervisor {node['supervisor_pid']} ({node.get('state', 'running')}), "
        f"written {age:.0f} s ago: CPU {metrics['cpu_percent']:.0f} %, memory "
        f"{metrics['memory_percent']:.0f} %, {metrics['active_jobs']} running, "
        f"{metrics['queue_depth']} due, limit {snapshot['concurrency']['limit']}"
    )
    table = Table(title=title, box=box.SIMPLE_HEAD)
    for column in ("pid", "job type", "state", "job", "RSS MB", "CPU %", "budget", "done"):
        table.add_column(column, justify="left" if column in ("job type", "state", "budget") else "right", no_wrap=True)
    for worker in snapshot["workers"]:
        budget = worker["budget"]
        table.add_row(
            str(worker["pid"]),
            worker["job_type"],
            worker["state"],
            "" if worker["job_id"] is None else str(worker["job_id"]),
            _number(worker["rss_mb"]),
            _number(worker["cpu_percent"]),
            f"{budget['memory_mb']} MB, {budget['cpu_percent']} %",
            str(worker["jobs_done"]),
        )
    return table


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"
