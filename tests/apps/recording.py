"""Run records and the entry point shared by the test applications.

Handlers write one row per run to the table ``handler_runs``, which the test creates
before it starts a supervisor. Each worker process opens its own autocommit connection to
``JOBVISOR_DSN`` on first use, so a row is stored the moment the handler writes it and
survives a worker that is killed right after.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import Any

import psycopg

from jobvisor import App

RUNS_TABLE_SQL = """
CREATE TABLE IF NOT EXISTS handler_runs (
    job_id bigint NOT NULL,
    pid int NOT NULL,
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    finished_at timestamptz
)
"""

# %(created)f is the record's Unix time, so the tests can measure gaps between log lines.
LOG_FORMAT = "%(created).3f %(process)d %(levelname)s %(name)s: %(message)s"

_connection: psycopg.Connection[Any] | None = None
_connection_pid: int | None = None
# Connections inherited through fork() are kept open here: closing one in a child would end
# the parent's session on the shared socket.
_inherited: list[psycopg.Connection[Any]] = []


def runs_connection() -> psycopg.Connection[Any]:
    """Return this process's autocommit connection for run records, opening it on first use."""
    global _connection, _connection_pid
    if _connection is not None and _connection_pid != os.getpid():
        _inherited.append(_connection)
        _connection = None
    if _connection is None or _connection.closed:
        # Each record is committed and visible at once. synchronous_commit=off only skips the
        # wait for the WAL flush, which matters after a server crash but not in these tests.
        _connection = psycopg.connect(
            os.environ["JOBVISOR_DSN"], autocommit=True, options="-c synchronous_commit=off"
        )
        _connection_pid = os.getpid()
    return _connection


def record_run(job_id: int) -> None:
    """Store a finished run of ``job_id`` by this process."""
    runs_connection().execute(
        "INSERT INTO handler_runs (job_id, pid, finished_at) VALUES (%s, %s, clock_timestamp())",
        (job_id, os.getpid()),
    )


def record_start(job_id: int) -> None:
    """Store the start of a run of ``job_id`` by this process, which record_finish completes."""
    runs_connection().execute(
        "INSERT INTO handler_runs (job_id, pid) VALUES (%s, %s)", (job_id, os.getpid())
    )


def record_finish(job_id: int) -> None:
    runs_connection().execute(
        "UPDATE handler_runs SET finished_at = clock_timestamp() "
        "WHERE job_id = %s AND pid = %s AND finished_at IS NULL",
        (job_id, os.getpid()),
    )


def sleep_in_steps(seconds: float, step: float = 0.05) -> None:
    """Sleep for ``seconds`` in short slices, the way a handler that polls something would."""
    deadline = time.monotonic() + seconds
    while (remaining := deadline - time.monotonic()) > 0:
        time.sleep(min(step, remaining))


def run_supervisor(app: App) -> int:
    """Run a supervisor for ``app`` with INFO logs on stderr; return its exit code.

    The command-line flag ``--exit-when-idle`` makes it exit once no job of its types is
    pending or processing.
    """
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stderr)
    return app.run(exit_when_idle="--exit-when-idle" in sys.argv[1:])
