"""Shared-memory telemetry block: ring, slots, breakers, torn reads and segment lifetime."""

from __future__ import annotations

import multiprocessing
import os
import signal
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from multiprocessing.shared_memory import SharedMemory
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import pytest

from jobvisor.telemetry import shm
from jobvisor.telemetry.shm import (
    SAMPLE_FIELDS,
    BreakerState,
    LayoutError,
    SlotState,
    TelemetryBlock,
    TornReadError,
    attach,
    create,
    remove_stale_segments,
)

SHM_DIR = Path("/dev/shm")
FORK = multiprocessing.get_context("fork")
READS = 20_000
CREATED_AT_OFFSET = 24  # header bytes before created_at: magic 8, version 4, size 4, pid 8

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm (Linux)")


def _segments_of(pid: int) -> list[str]:
    return sorted(path.name for path in SHM_DIR.glob(f"jobvisor_{pid}_*"))


@pytest.fixture(autouse=True)
def no_leftover_segments() -> Iterator[None]:
    yield
    leftover = _segments_of(os.getpid())
    for name in leftover:
        (SHM_DIR / name).unlink()
    assert leftover == []


@pytest.fixture
def block() -> Iterator[TelemetryBlock]:
    telemetry = create(ring_capacity=16, slot_count=4, breaker_count=3)
    yield telemetry
    telemetry.unlink()
    telemetry.close()


def _row(value: float) -> list[float]:
    return [value] * len(SAMPLE_FIELDS)


# -- ring ------------------------------------------------------------------------------


def test_ring_wraps(block: TelemetryBlock) -> None:
    written = block.ring_capacity + 5
    row_numbers = [block.append(_row(i)) for i in range(written)]
    assert row_numbers == list(range(written))
    assert block.rows_written == written
    for n in (1, 5, 15, 16, 100):
        rows = block.latest(n)
        kept = min(n, block.ring_capacity)
        expected = np.arange(written - kept, written, dtype=np.float64)
        assert rows.shape == (kept, len(SAMPLE_FIELDS))
        np.testing.assert_array_equal(rows[:, 0], expected)
        np.testing.assert_array_equal(rows, np.repeat(expected[:, None], rows.shape[1], axis=1))
    assert block.latest(0).shape == (0, len(SAMPLE_FIELDS))


def test_ring_before_full(block: TelemetryBlock) -> None:
    assert block.latest(5).shape == (0, len(SAMPLE_FIELDS))
    for i in range(3):
        block.append(_row(i))
    np.testing.assert_array_equal(block.latest(5)[:, 0], [0.0, 1.0, 2.0])
    columns = block.latest_columns(2)
    assert list(columns) == list(SAMPLE_FIELDS)
    np.testing.assert_array_equal(columns["queue_depth"], [1.0, 2.0])


def test_ring_append_mapping(block: TelemetryBlock) -> None:
    before = time.time()
    block.append({"cpu_percent": 12.5, "queue_depth": 3})
    row = block.latest_columns(1)
    assert before <= row["timestamp"][0] <= time.time()
    assert row["cpu_percent"][0] == 12.5
    assert np.isnan(row["latency_p95_s"][0])
    with pytest.raises(ValueError, match="unknown sample columns"):
        block.append({"cpu": 1.0})
    with pytest.raises(ValueError, match="shape"):
        block.append([1.0, 2.0])


def test_ring_skips_row_in_progress(block: TelemetryBlock) -> None:
    for i in range(block.ring_capacity):
        block.append(_row(i))
    # Counter odd: the writer is inside row 16, which reuses the storage of row 0.
    block._words[block._ring_word] += 1
    np.testing.assert_array_equal(block.latest()[:, 0], np.arange(1.0, 16.0))
    block.append(_row(99))
    assert block.rows_written == 17
    np.testing.assert_array_equal(block.latest(2)[:, 0], [15.0, 99.0])


# -- slots and breakers ----------------------------------------------------------------


def test_slot_roundtrip(block: TelemetryBlock) -> None:
    assert block.find_free_slot() == 0
    block.write_slot_supervisor(
        1, pid=4321, job_type="image-generation", started_at=100.0,
        memory_budget_mb=200.0, cpu_budget_percent=30.0, rss_mb=150.5,
    )  # fmt: skip
    block.write_slot_child(1, state=SlotState.RUNNING, job_id=77, jobs_done=3)
    record = block.read_slot(1)
    assert record.pid == 4321
    assert record.job_type == "image-generation"
    assert record.rss_mb == 150.5
    assert record.memory_budget_mb == 200.0
    assert record.job_id == 77
    assert record.jobs_done == 3
    assert record.state is SlotState.RUNNING
    assert [r.index for r in block.read_slots()] == [1]
    block.write_slot_supervisor(1, control_state=SlotState.PAUSED, cpu_percent=55.0)
    record = block.read_slot(1)
    assert record.state is SlotState.PAUSED
    assert record.child_state is SlotState.RUNNING
    assert record.rss_mb == 150.5  # fields not named in a write keep their values
    block.reset_slot(1)
    assert block.read_slot(1).pid == 0
    assert block.read_slots() == []


def test_slot_invalid_writes(block: TelemetryBlock) -> None:
    with pytest.raises(ValueError, match="max 48"):
        block.write_slot_supervisor(0, job_type="x" * 49)
    with pytest.raises(ValueError, match="unknown field"):
        block.write_slot_child(0, rss_mb=1.0)
    with pytest.raises(ValueError):
        block.write_slot_child(0, state=42)
    with pytest.raises(struct.error):
        block.write_slot_child(0, job_id=2**63)
    with pytest.raises(TypeError, match="must be a str"):
        block.write_breaker(0, name=7)
    assert block.read_slot(0).job_id == 0  # rejected writes leave the record readable
    with pytest.raises(IndexError, match="out of range"):
        block.read_slot(4)


def test_breaker_roundtrip(block: TelemetryBlock) -> None:
    assert block.register_breaker("openai") == 0
    assert block.register_breaker("database") == 1
    assert block.register_breaker("openai") == 0
    block.write_breaker(1, state=BreakerState.OPEN, failures=5, opened_at=123.0)
    record = block.read_breaker(1)
    assert record.name == "database"
    assert record.state is BreakerState.OPEN
    assert record.failures == 5
    assert block.find_breaker("database") == 1
    assert block.find_breaker("general") is None
    assert block.register_breaker("general") == 2
    with pytest.raises(ValueError, match="no free breaker record"):
        block.register_breaker("storage")
    block.reset_breaker(0)
    assert [r.name for r in block.read_breakers()] == ["database", "general"]


# -- torn reads ------------------------------------------------------------------------


def _write_counters(block: TelemetryBlock, stop: Any, started: Any) -> None:
    """Write every record with all fields equal to one counter, as fast as possible."""
    counter = 1
    while counter % 256 or not stop.is_set():
        block.write_slot_child(
            0, state=counter % 6, job_id=counter, jobs_done=counter,
            job_started_at=counter, heartbeat_at=counter,
        )  # fmt: skip
        block.write_slot_supervisor(
            0, pid=counter, job_type=str(counter), started_at=counter, memory_budget_mb=counter,
            cpu_budget_percent=counter, rss_mb=counter, uss_mb=counter, cpu_percent=counter,
            measured_at=counter, control_state=counter % 6,
        )  # fmt: skip
        block.write_breaker(
            0, name=str(counter), state=counter % 3, failures=counter, opened_at=counter,
            half_open_probes_in_flight=counter, updated_at=counter,
        )  # fmt: skip
        block.append(_row(counter))
        if counter == 1:
            started.set()
        counter += 1


def _assert_slot_consistent(record: shm.SlotRecord) -> None:
    value = record.pid
    supervisor = (record.started_at, record.memory_budget_mb, record.cpu_budget_percent,
                  record.rss_mb, record.uss_mb, record.cpu_percent, record.measured_at)  # fmt: skip
    assert all(field == value for field in supervisor), record
    assert record.job_type == (str(value) if value else ""), record
    assert record.control_state == value % 6, record
    child = (record.jobs_done, record.job_started_at, record.heartbeat_at)
    assert all(field == record.job_id for field in child), record
    assert record.child_state == record.job_id % 6, record


def _assert_breaker_consistent(record: shm.BreakerRecord) -> None:
    value = record.failures
    fields = (record.opened_at, record.half_open_probes_in_flight, record.updated_at)
    assert all(field == value for field in fields), record
    assert record.name == (str(value) if value else ""), record
    assert record.state == value % 3, record


def test_torn_reads_never_seen(block: TelemetryBlock) -> None:
    stop, started = FORK.Event(), FORK.Event()
    writer = FORK.Process(target=_write_counters, args=(block, stop, started), daemon=True)
    writer.start()
    try:
        assert started.wait(timeout=30), "writer process did not start writing"
        job_ids, breaker_values, newest_rows = [], [], []
        for _ in range(READS):
            record = block.read_slot(0)
            _assert_slot_consistent(record)
            breaker = block.read_breaker(0)
            _assert_breaker_consistent(breaker)
            rows = block.latest()  # all rows: the writer keeps overwriting the oldest one
            assert rows.shape[0] >= 1
            assert np.all(rows == rows[:, :1]), rows
            assert np.all(np.diff(rows[:, 0]) == 1.0), rows
            job_ids.append(record.job_id)
            breaker_values.append(breaker.failures)
            newest_rows.append(rows[-1, 0])
    finally:
        stop.set()
        writer.join(timeout=30)
    assert writer.exitcode == 0
    # The reader must have raced a live writer, not read one frozen state.
    assert len(set(job_ids)) > 100
    assert len(set(breaker_values)) > 100
    assert len(set(newest_rows)) > 100
    assert job_ids[-1] > job_ids[0]


def _die_mid_write(block: TelemetryBlock) -> None:
    """In a forked child: start a write to slot 2's child part and SIGKILL itself inside it."""
    try:
        block._store_body = lambda *args: os.kill(os.getpid(), signal.SIGKILL)  # type: ignore[method-assign]
        block.write_slot_child(2, state=SlotState.RUNNING, job_id=7)
    finally:
        os._exit(1)


def test_killed_writer_slot_reset(block: TelemetryBlock, monkeypatch: pytest.MonkeyPatch) -> None:
    block.write_slot_supervisor(2, pid=999, job_type="scenes")
    block.write_slot_child(3, state=SlotState.IDLE)
    pid = os.fork()
    if pid == 0:
        _die_mid_write(block)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status)
    assert os.WTERMSIG(status) == signal.SIGKILL

    started = time.monotonic()
    with pytest.raises(TornReadError, match="slot 2 child part"):
        block.read_slot(2)
    assert time.monotonic() - started < 5.0
    pauses: list[int] = []
    monkeypatch.setattr(shm, "_pause", pauses.append)
    with pytest.raises(TornReadError):
        block.read_slot(2)
    assert len(pauses) == block.max_read_retries
    assert [record.index for record in block.read_slots()] == [3]

    block.reset_slot(2)
    record = block.read_slot(2)
    assert record.state is SlotState.EMPTY
    assert record.pid == 0
    assert record.job_id == 0
    block.write_slot_child(2, state=SlotState.IDLE, jobs_done=1)
    assert block.read_slot(2).jobs_done == 1


# -- segment lifetime ------------------------------------------------------------------

ATTACH_AND_EXIT = """
import sys
from multiprocessing import resource_tracker
from jobvisor.telemetry.shm import attach
block = attach(sys.argv[1])
print(block.latest(1)[0, 0])
print(resource_tracker._resource_tracker._pid)
block.close()
"""

PLAIN_ATTACH_AND_EXIT = """
import sys
from multiprocessing import resource_tracker
from multiprocessing.shared_memory import SharedMemory
segment = SharedMemory(name=sys.argv[1])
print(segment.size)
print(resource_tracker._resource_tracker._pid)
segment.close()
"""


def _run_and_wait_for_tracker(script: str, name: str) -> list[str]:
    """Run ``script`` in a new interpreter; return its output once its resource tracker exited.

    The tracker outlives the interpreter briefly and unlinks what is still registered, so
    the segment is checked only after the tracker process is gone.
    """
    result = subprocess.run(
        [sys.executable, "-c", script, name], check=False, capture_output=True, text=True,
        timeout=60, cwd=Path(__file__).resolve().parent.parent,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.split()
    if lines[-1] != "None":
        try:
            psutil.Process(int(lines[-1])).wait(timeout=30)
        except psutil.NoSuchProcess:
            pass
    return lines


def test_attach_exit_keeps_segment(block: TelemetryBlock) -> None:
    block.append(_row(5.0))
    lines = _run_and_wait_for_tracker(ATTACH_AND_EXIT, block.name)
    assert float(lines[0]) == 5.0
    assert (SHM_DIR / block.name).exists()
    again = attach(block.name)
    assert again.latest(1)[0, 0] == 5.0
    again.close()


@pytest.mark.skipif(sys.version_info >= (3, 13), reason="3.13 attaches without tracking")
def test_plain_attach_unlinks_on_exit(block: TelemetryBlock) -> None:
    # Control for the test above: the stdlib default does remove a live segment.
    _run_and_wait_for_tracker(PLAIN_ATTACH_AND_EXIT, block.name)
    assert not (SHM_DIR / block.name).exists()


def test_attach_validates(block: TelemetryBlock) -> None:
    attached = attach(block.name)
    assert attached.owner_pid == os.getpid()
    assert attached.is_owner is False
    assert attached.ring_capacity == 16
    assert attached.slot_count == 4
    assert attached.breaker_count == 3
    assert attached.sample_fields == SAMPLE_FIELDS
    attached.close()
    with pytest.raises(FileNotFoundError):
        attach(f"jobvisor_{os.getpid()}_00000000")
    foreign = SharedMemory(name=f"jobvisor_{os.getpid()}_0000f00f", create=True, size=4096)
    try:
        with pytest.raises(LayoutError, match="not a jobvisor telemetry block"):
            attach(foreign.name)
    finally:
        foreign.close()
        foreign.unlink()


def test_context_manager_unlinks() -> None:
    with create(ring_capacity=4, slot_count=1, breaker_count=1) as telemetry:
        name = telemetry.name
        assert (SHM_DIR / name).exists()
    assert not (SHM_DIR / name).exists()
    telemetry.close()
    telemetry.unlink()


def _create_and_wait(conn: Connection) -> None:
    telemetry = create(ring_capacity=4, slot_count=1, breaker_count=1)
    conn.send(telemetry.name)
    conn.recv()  # blocks until the test kills this process


def test_remove_stale_after_kill9() -> None:
    parent_end, child_end = FORK.Pipe()
    owner = FORK.Process(target=_create_and_wait, args=(child_end,), daemon=True)
    owner.start()
    assert parent_end.poll(30), "owner process sent no segment name"
    name = parent_end.recv()
    assert owner.pid is not None
    assert name.startswith(f"jobvisor_{owner.pid}_")
    assert (SHM_DIR / name).exists()
    os.kill(owner.pid, signal.SIGKILL)
    owner.join(timeout=30)
    assert owner.exitcode == -signal.SIGKILL
    assert (SHM_DIR / name).exists()

    removed = remove_stale_segments()
    assert name in removed
    assert _segments_of(owner.pid) == []


def test_remove_stale_keeps_live(block: TelemetryBlock) -> None:
    assert block.name not in remove_stale_segments()
    assert (SHM_DIR / block.name).exists()
    # A segment whose pid is alive but has no valid header yet may be mid-creation.
    pending = SharedMemory(name=f"jobvisor_{os.getpid()}_0000beef", create=True, size=4096)
    try:
        assert pending.name not in remove_stale_segments()
        assert (SHM_DIR / pending.name).exists()
    finally:
        pending.close()
        pending.unlink()


def test_remove_stale_reused_pid() -> None:
    telemetry = create(ring_capacity=4, slot_count=1, breaker_count=1)
    # Date the segment before this process started: its pid now belongs to a newer process.
    long_ago = psutil.Process().create_time() - 3600.0
    struct.pack_into("<d", telemetry._buf, CREATED_AT_OFFSET, long_ago)
    try:
        assert telemetry.name in remove_stale_segments()
        assert not (SHM_DIR / telemetry.name).exists()
    finally:
        telemetry.close()
        telemetry.unlink()


def test_write_child_record_matches_fields(block: TelemetryBlock) -> None:
    block.write_slot_child(2, state=SlotState.IDLE, job_id=1, jobs_done=1)

    block.write_child_record(2, SlotState.RUNNING, 42, 9, 1000.5, 1001.5, 3.25)

    record = block.read_slot(2)
    assert record.child_state == SlotState.RUNNING
    assert (record.job_id, record.jobs_done) == (42, 9)
    assert (record.job_started_at, record.heartbeat_at, record.job_cpu_s) == (1000.5, 1001.5, 3.25)
