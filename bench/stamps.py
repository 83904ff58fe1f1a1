"""Start times that handlers record, for the enqueue-to-start latency.

A handler appends ``<seq> <time.time()>`` to the file named by ``BENCH_STAMP_FILE``. Each
line is one ``write`` to a file opened with O_APPEND, so lines from several worker processes
never interleave. The bench and the workers run on the same machine, so both read one clock.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

STAMP_FILE_VARIABLE = "BENCH_STAMP_FILE"

_fd: int | None = None


def record_start(seq: int) -> None:
    """Append this moment (Unix seconds) as the start time of job ``seq``."""
    now = time.time()
    global _fd
    if _fd is None:
        path = os.environ.get(STAMP_FILE_VARIABLE)
        if not path:
            raise RuntimeError(f"{STAMP_FILE_VARIABLE} is not set; the bench sets it for workers")
        _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_fd, f"{seq} {now:.6f}\n".encode())


def read_stamps(path: Path) -> dict[int, float]:
    """Return job seq -> first recorded start time (a retried job keeps its first start)."""
    stamps: dict[int, float] = {}
    if not path.exists():
        return stamps
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) != 2:
            continue
        seq, started = int(parts[0]), float(parts[1])
        stamps.setdefault(seq, started)
    return stamps
