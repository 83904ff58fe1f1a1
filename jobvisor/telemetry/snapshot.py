"""Telemetry snapshot files: written atomically by the supervisor, read by operators.

A reader never sees a partial file: the writer writes a temporary file in the same
directory, fsyncs it, renames it over the snapshot (an atomic replacement on POSIX file
systems) and fsyncs the directory.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path
from typing import Any

import orjson

from jobvisor.paths import home_dir

SCHEMA = "jobvisor.telemetry.snapshot/1"
FILENAME = "snapshot.json"


def snapshot_path() -> Path:
    return home_dir() / "telemetry" / FILENAME


def write_snapshot(snapshot: dict[str, Any], path: Path | None = None) -> Path:
    """Replace the snapshot file with ``snapshot`` in one atomic rename."""
    path = path or snapshot_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    body = orjson.dumps(
        {"schema": SCHEMA, "written_at": time.time(), **snapshot},
        option=orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS,
    )
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            handle.write(body)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
    directory = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    return path


def read_snapshot(path: Path | None = None) -> dict[str, Any]:
    """Return the snapshot as a dict; raise FileNotFoundError when none was written."""
    path = path or snapshot_path()
    return orjson.loads(path.read_bytes())
