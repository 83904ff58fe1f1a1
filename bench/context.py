"""The context a scenario runs in, and the outcome it returns."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from bench import database
from bench.config import Sizes
from bench.report import Target
from bench.systems import QueueSystem, make_system


@dataclass
class Context:
    """The server, the sizes, a work directory for logs, and the progress display."""

    server_dsn: str
    sizes: Sizes
    quick: bool
    workdir: Path
    console: Console
    progress: Progress
    # Results that a later scenario of the same run may reuse, such as the floor's.
    cache: dict[str, Any] = field(default_factory=dict)

    @contextlib.contextmanager
    def system(self, name: str, tag: str) -> Iterator[QueueSystem]:
        """Yield ``name`` installed in a fresh scratch database; stop and drop it afterwards."""
        workdir = self.workdir / f"{name}-{tag}"
        workdir.mkdir(parents=True, exist_ok=True)
        with database.scratch_database(self.server_dsn, name) as dsn:
            system = make_system(name, dsn, workdir)
            try:
                system.install()
                yield system
            finally:
                system.stop()

    @contextlib.contextmanager
    def task(self, description: str, total: float) -> Iterator[Callable[[float], None]]:
        """Show a progress bar; yield a function that sets how much of ``total`` is done."""
        task_id: TaskID = self.progress.add_task(description, total=total)
        try:
            yield lambda done: self.progress.update(task_id, completed=done)
        finally:
            self.progress.update(task_id, completed=total)
            self.progress.remove_task(task_id)

    def note(self, message: str) -> None:
        """Print a line above the progress bars (on stderr)."""
        self.progress.console.print(message)


def new_progress(console: Console) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )


@dataclass
class Outcome:
    """A scenario's measurements: raw data, summaries, targets and markdown tables."""

    settings: dict[str, Any]
    data: dict[str, Any]
    targets: list[Target]
    tables: list[str]
    # Draws the scenario's plots to files with the given path stem; returns their paths.
    plot: Callable[[Path], list[Path]] | None = None
