"""Targets, markdown tables, the machine description and result files."""

from __future__ import annotations

import datetime as dt
import importlib.metadata
import json
import operator
import os
import platform
import subprocess
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import psutil

from bench.processes import REPO_ROOT

RESULTS_DIR = REPO_ROOT / "bench" / "results"
PACKAGES = ("jobvisor", "procrastinate", "pgqueuer", "asyncpg", "psycopg", "psycopg-pool")
COMPARISONS = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


@dataclass(frozen=True)
class Target:
    """One goal: ``value op threshold`` in ``unit``; ``value`` None means not measured."""

    name: str
    value: float | None
    op: str
    threshold: float
    unit: str

    def __post_init__(self) -> None:
        if self.op not in COMPARISONS:
            raise ValueError(f"target {self.name!r} has operator {self.op!r}; use one of "
                             f"{', '.join(COMPARISONS)}")

    @property
    def met(self) -> bool | None:
        """True or False once measured, None when the value is missing."""
        if self.value is None:
            return None
        return bool(COMPARISONS[self.op](self.value, self.threshold))

    @property
    def verdict(self) -> str:
        return {True: "met", False: "MISSED", None: "not measured"}[self.met]

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "met": self.met, "verdict": self.verdict}


def fmt(value: float | None) -> str:
    """Format a number for a table: no decimals from 100 up, 2 from 1 up, 3 below; '-' for None."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ratio(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.2f}×" if value < 10 else f"{value:.1f}×"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Return a GitHub markdown table; the first column is left-aligned, the rest right."""
    cells = [[str(cell) for cell in row] for row in rows]
    align = [":---"] + ["---:"] * (len(headers) - 1)
    lines = [
        "| " + " | ".join(headers) + " |",
        "| " + " | ".join(align) + " |",
    ]
    lines += ["| " + " | ".join(row) + " |" for row in cells]
    return "\n".join(lines)


def targets_table(targets: Sequence[Target]) -> str:
    """Return a markdown table of targets with their measured values and verdicts."""
    rows = []
    for target in targets:
        value = "-" if target.value is None else f"{fmt(target.value)} {target.unit}".strip()
        goal = f"{target.op} {fmt(target.threshold)} {target.unit}".strip()
        rows.append([target.name, value, goal, target.verdict])
    return markdown_table(["target", "measured", "goal", "verdict"], rows)


def package_versions() -> dict[str, str | None]:
    """Return the installed version of each compared package, None when missing."""
    versions: dict[str, str | None] = {}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    versions["jobvisor_commit"] = _git_commit()
    return versions


def _git_commit() -> str | None:
    """Return HEAD of the repository, with ``+dirty`` when tracked files changed."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
            timeout=10, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "jobvisor"],
            cwd=REPO_ROOT, capture_output=True, text=True, timeout=10, check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return head + ("+dirty" if dirty else "")


def machine_info(server: dict[str, str]) -> dict[str, Any]:
    """Describe this machine and the PostgreSQL server (``server`` from server_facts)."""
    return {
        "cpu_model": _cpu_model(),
        "logical_cpus": psutil.cpu_count(logical=True),
        "physical_cpus": psutil.cpu_count(logical=False),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "os": platform.platform(),
        "python": platform.python_version(),
        "postgresql": server,
    }


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def utc_stamp(moment: dt.datetime | None = None) -> str:
    """Return a UTC timestamp for file names, such as ``20250101T120000Z``."""
    moment = moment or dt.datetime.now(dt.UTC)
    return moment.strftime("%Y%m%dT%H%M%SZ")


def write_result(result: dict[str, Any], directory: Path = RESULTS_DIR) -> Path:
    """Write ``result`` to ``<directory>/<scenario>-<UTC timestamp>.json`` and return the path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{result['scenario']}-{result['stamp']}.json"
    temporary = path.with_suffix(".json.tmp")
    temporary.write_text(json.dumps(result, indent=2, default=str) + "\n")
    os.replace(temporary, path)
    return path
