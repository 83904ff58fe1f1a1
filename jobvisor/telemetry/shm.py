"""Shared-memory telemetry block of one supervisor: sample ring, worker slots and breakers.

The block is one POSIX shared-memory segment named ``jobvisor_<owner pid>_<token>``:

* a header (magic, layout version, owner pid, creation time, sizes, offsets, sample column
  names) that :func:`attach` validates;
* a ring buffer of float64 samples with one column per name in the header (``SAMPLE_FIELDS``
  for a block made by :func:`create`), written by the supervisor only;
* one slot per child worker, made of two records with one writer each: the supervisor record
  (pid, job type, budgets, measured memory and CPU) and the child record (state, job id, jobs
  done);
* named circuit-breaker records.

No record is guarded by a lock. Each one starts with a uint64 sequence counter: the writer
makes it odd, stores the fields and makes it even again. A reader retries while the counter is
odd or changed during its copy, at most ``max_read_retries`` times, and then raises
:class:`TornReadError`. A writer killed between the two increments leaves the counter odd, so
that record stays unreadable until the supervisor calls :meth:`TelemetryBlock.reset_slot`.
The ring's counter also counts rows (twice the rows written, plus one during a write), so ring
readers skip the row being written and the rows it overwrites, and never raise TornReadError.

Memory ordering: the protocol needs other processes to observe the writer's stores in program
order, and a reader's loads to happen in program order. x86-64 (TSO) guarantees both for the
plain loads and stores that ``struct``, ``memoryview`` and numpy perform. Counters are 8-byte
aligned ``memoryview`` items, which CPython copies with a fixed-size ``memcpy`` that compilers
emit as one load or store, so a counter itself is never torn.

NOTE: ARM64 may reorder stores to different addresses and Python has no memory fence, so on
ARM64 a reader could in theory accept a torn record. The GIL orders nothing between processes.
"""

from __future__ import annotations

import _posixshmem
import atexit
import logging
import mmap
import os
import re
import secrets
import struct
import time
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import Any, Self

import numpy as np
import psutil

from jobvisor.errors import JobvisorError

logger = logging.getLogger(__name__)

SAMPLE_FIELDS: tuple[str, ...] = (
    "timestamp",  # seconds since the epoch
    "cpu_percent",
    "memory_percent",
    "active_jobs",
    "queue_depth",
    "throughput_per_min",
    "latency_p50_s",
    "latency_p95_s",
    "error_rate",  # failed / finished, 0..1
    "efficiency",  # processing time / total time, 0..1
    "processing_s",  # mean handler run time of the attempts in the throughput window
    "concurrency_limit",
    "memory_allocated_mb",
    "cpu_allocated_percent",
)

DEFAULT_RING_CAPACITY = 4096  # rows: 68 minutes at one sample per second
DEFAULT_SLOT_COUNT = 64
DEFAULT_BREAKER_COUNT = 16
DEFAULT_MAX_READ_RETRIES = 100
JOB_TYPE_BYTES = 48  # UTF-8, zero-padded
BREAKER_NAME_BYTES = 48  # UTF-8, zero-padded
SEGMENT_PREFIX = "jobvisor_"
SHM_DIRECTORY = Path("/dev/shm")

LAYOUT_VERSION = 1
MAGIC = b"JOBVTLM\x00"
# The header's fixed part, followed by the comma-separated sample column names.
_HEADER = struct.Struct("<8sIIqdIIIIIIIIQQQQ")
_ALIGN = 64  # cache line: records of different writers never share one
_SPIN_RETRIES = 16  # retries before a reader starts sleeping between attempts
_SEGMENT_NAME = re.compile(rf"^{SEGMENT_PREFIX}(\d+)_[0-9a-f]+$")
_OWNER_START_SLACK_S = 2.0  # on Linux psutil derives start times from a whole-second boot time


class TornReadError(JobvisorError):
    """A shared-memory record stayed mid-write for every read attempt."""


class LayoutError(JobvisorError, ValueError):
    """A shared-memory segment is not a telemetry block of this layout version."""


class SlotState(IntEnum):
    """State of a worker slot. EMPTY (zeroed memory) marks a free slot."""

    EMPTY = 0
    IDLE = 1
    RUNNING = 2
    STOPPING = 3
    PAUSED = 4
    DEAD = 5


class BreakerState(IntEnum):
    """State of a circuit breaker."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class _Record:
    """Byte layout of one seqlocked record: a uint64 counter, then packed fields."""

    def __init__(self, fields: Sequence[tuple[str, str]], size: int) -> None:
        self.names = tuple(name for name, _ in fields)
        self.codes = dict(fields)
        self.body = struct.Struct("<" + "".join(code for _, code in fields))
        self.size = size
        if 8 + self.body.size > size:
            raise AssertionError(f"record fields take {8 + self.body.size} bytes, > {size}")

    def encode(self, name: str, value: Any) -> Any:
        code = self.codes.get(name)
        if code is None:
            raise ValueError(f"unknown field {name!r}; valid fields: {', '.join(self.names)}")
        if code == "q":
            return int(value)
        if code == "d":
            return float(value)
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a str, got {type(value).__name__}")
        data = value.encode("utf-8")
        limit = int(code[:-1])
        if len(data) > limit:
            raise ValueError(f"{name} {value!r} is {len(data)} bytes in UTF-8, max {limit}")
        return data

    def decode(self, values: tuple[Any, ...]) -> dict[str, Any]:
        fields = dict(zip(self.names, values))
        for name, code in self.codes.items():
            if code.endswith("s"):
                fields[name] = fields[name].rstrip(b"\0").decode("utf-8", errors="replace")
        return fields


_SUPERVISOR_PART = _Record(
    [
        ("pid", "q"),
        ("started_at", "d"),  # epoch seconds when the child process started
        ("memory_budget_mb", "d"),
        ("cpu_budget_percent", "d"),
        ("rss_mb", "d"),
        ("uss_mb", "d"),
        ("cpu_percent", "d"),
        ("measured_at", "d"),  # epoch seconds of the rss/uss/cpu measurement
        ("control_state", "q"),  # SlotState the supervisor imposes, EMPTY for none
        ("job_type", f"{JOB_TYPE_BYTES}s"),
    ],
    size=128,
)
_CHILD_PART = _Record(
    [
        ("state", "q"),
        ("job_id", "q"),  # 0 while no job runs
        ("jobs_done", "q"),
        ("job_started_at", "d"),
        ("heartbeat_at", "d"),
        ("job_cpu_s", "d"),  # the child's CPU seconds (user + system) when its job started
    ],
    size=64,
)
_BREAKER = _Record(
    [
        ("state", "q"),
        ("failures", "q"),
        ("opened_at", "d"),
        ("half_open_probes_in_flight", "q"),
        ("updated_at", "d"),
        ("name", f"{BREAKER_NAME_BYTES}s"),
    ],
    size=128,
)
_SLOT_SIZE = _SUPERVISOR_PART.size + _CHILD_PART.size
_RING_HEAD_SIZE = _ALIGN  # the ring's counter, alone on its cache line


@dataclass(frozen=True)
class SlotRecord:
    """Copy of one worker slot. ``state`` is ``control_state`` when set, else the child's."""

    index: int
    state: SlotState
    pid: int
    job_type: str
    started_at: float
    memory_budget_mb: float
    cpu_budget_percent: float
    rss_mb: float
    uss_mb: float
    cpu_percent: float
    measured_at: float
    control_state: SlotState
    child_state: SlotState
    job_id: int
    jobs_done: int
    job_started_at: float
    heartbeat_at: float
    job_cpu_s: float


@dataclass(frozen=True)
class BreakerRecord:
    """Copy of one circuit-breaker record."""

    index: int
    name: str
    state: BreakerState
    failures: int
    opened_at: float
    half_open_probes_in_flight: int
    updated_at: float


@dataclass(frozen=True)
class _Header:
    owner_pid: int
    created_at: float
    ring_capacity: int
    slot_count: int
    breaker_count: int
    sample_fields: tuple[str, ...]

    @property
    def names(self) -> bytes:
        return ",".join(self.sample_fields).encode("utf-8")

    @property
    def ring_offset(self) -> int:
        return _align(_HEADER.size + len(self.names))

    @property
    def slots_offset(self) -> int:
        ring_bytes = _RING_HEAD_SIZE + self.ring_capacity * len(self.sample_fields) * 8
        return _align(self.ring_offset + ring_bytes)

    @property
    def breakers_offset(self) -> int:
        return self.slots_offset + self.slot_count * _SLOT_SIZE

    @property
    def total_size(self) -> int:
        return self.breakers_offset + self.breaker_count * _BREAKER.size

    def pack_into(self, buf: memoryview) -> None:
        """Write the header; the magic goes last, so attach() never maps a half-written one."""
        names = self.names
        _HEADER.pack_into(
            buf, 0, bytes(len(MAGIC)), LAYOUT_VERSION, _HEADER.size, self.owner_pid,
            self.created_at, self.ring_capacity, len(self.sample_fields), self.slot_count,
            self.breaker_count, JOB_TYPE_BYTES, BREAKER_NAME_BYTES, len(names),
            zlib.crc32(names), self.ring_offset, self.slots_offset, self.breakers_offset,
            self.total_size,
        )  # fmt: skip
        buf[_HEADER.size : _HEADER.size + len(names)] = names
        buf[: len(MAGIC)] = MAGIC


def _align(value: int) -> int:
    return (value + _ALIGN - 1) // _ALIGN * _ALIGN


def _unpack_header(buf: memoryview, name: str) -> _Header:
    """Read and validate the header of segment ``name``; raise LayoutError if it is invalid."""
    if len(buf) < _HEADER.size:
        raise LayoutError(f"shared memory {name!r} is {len(buf)} bytes, too small for a header")
    (magic, version, header_size, owner_pid, created_at, ring_capacity, field_count,
     slot_count, breaker_count, job_type_bytes, breaker_name_bytes, names_size, names_crc,
     *offsets) = _HEADER.unpack_from(buf, 0)  # fmt: skip
    if magic != MAGIC:
        raise LayoutError(f"shared memory {name!r} is not a jobvisor telemetry block")
    if version != LAYOUT_VERSION:
        raise LayoutError(
            f"shared memory {name!r} has layout version {version} but this jobvisor reads "
            f"version {LAYOUT_VERSION}; use the jobvisor version of its supervisor"
        )
    if (header_size, job_type_bytes, breaker_name_bytes) != (
        _HEADER.size, JOB_TYPE_BYTES, BREAKER_NAME_BYTES,
    ) or min(ring_capacity, field_count) < 1:  # fmt: skip
        raise LayoutError(f"shared memory {name!r} has invalid header, ring or text sizes")
    names = bytes(buf[header_size : header_size + names_size])
    fields = tuple(names.decode("utf-8", errors="replace").split(","))
    if zlib.crc32(names) != names_crc or len(fields) != field_count:
        raise LayoutError(f"shared memory {name!r} has a corrupt sample column list")
    header = _Header(owner_pid, created_at, ring_capacity, slot_count, breaker_count, fields)
    expected = [header.ring_offset, header.slots_offset, header.breakers_offset]
    if offsets != [*expected, header.total_size] or header.total_size > len(buf):
        raise LayoutError(f"shared memory {name!r} has offsets that do not match its sizes")
    return header


class _Segment:
    """A POSIX shared-memory segment mapped into this process.

    ``multiprocessing.shared_memory.SharedMemory`` of Python 3.11 and 3.12 registers every
    segment with the resource tracker. That starts a tracker process, and the tracker
    unlinks the segment when the registering process exits, even while the supervisor
    still uses it. This class maps the segment with mmap and leaves no tracker behind.
    """

    def __init__(self, name: str, *, create: bool, size: int) -> None:
        flags = os.O_RDWR | (os.O_CREAT | os.O_EXCL if create else 0)
        fd = _posixshmem.shm_open(f"/{name}", flags, mode=0o600)
        try:
            if create:
                os.ftruncate(fd, size)
            else:
                size = os.fstat(fd).st_size
            if size == 0:
                raise ValueError(f"shared memory {name!r} is empty")
            self._mmap: mmap.mmap | None = mmap.mmap(fd, size)
        except BaseException:
            if create:
                _unlink_segment(name)
            raise
        finally:
            os.close(fd)
        self.name = name
        self.size = size
        self.buf: memoryview | None = memoryview(self._mmap)

    def close(self) -> None:
        if self.buf is not None:
            self.buf.release()
            self.buf = None
        if self._mmap is not None:
            self._mmap.close()
            self._mmap = None


def _open_segment(name: str, *, create: bool = False, size: int = 0) -> _Segment:
    """Open or create segment ``name``; raise FileNotFoundError when it does not exist."""
    return _Segment(name, create=create, size=size)


def _buffer(shm: _Segment) -> memoryview:
    if shm.buf is None:
        raise ValueError(f"shared memory {shm.name!r} is closed")
    return shm.buf


def _unlink_segment(name: str) -> None:
    _posixshmem.shm_unlink(f"/{name}")


class TelemetryBlock:
    """A mapped telemetry segment. Make one with :func:`create` or :func:`attach`.

    Each record must have one writer at a time. The supervisor writes the ring and the
    supervisor part of every slot, and the child that owns slot ``i`` writes its child part.
    The breaker logic must pick one writing process per breaker record. A forked child uses
    the block that it inherited and leaves unlinking to the supervisor.
    """

    def __init__(self, shm: _Segment, header: _Header, *, owner: bool, retries: int) -> None:
        self.name: str = shm.name  # without the leading slash
        self.owner_pid: int = header.owner_pid
        self.created_at: float = header.created_at  # epoch seconds
        self.ring_capacity: int = header.ring_capacity  # rows
        self.slot_count: int = header.slot_count
        self.breaker_count: int = header.breaker_count
        self.sample_fields: tuple[str, ...] = header.sample_fields  # ring column names
        self.size: int = header.total_size  # bytes used in the segment
        self.is_owner: bool = owner  # True in the process that created the block
        self.max_read_retries: int = retries
        self._slots_offset = header.slots_offset
        self._breakers_offset = header.breakers_offset
        self._buf = _buffer(shm)
        self._words = self._buf[: header.total_size].cast("Q")
        shape = (header.ring_capacity, len(header.sample_fields))
        data_offset = header.ring_offset + _RING_HEAD_SIZE
        self._ring: np.ndarray = np.ndarray(shape, np.float64, buffer=self._buf, offset=data_offset)
        self._ring_word = header.ring_offset // 8
        self._columns = {name: i for i, name in enumerate(header.sample_fields)}
        self._torn_slots_logged: set[int] = set()
        self._closed = False
        self._unlinked = False
        self._shm = shm

    # -- sample ring -------------------------------------------------------------------

    @property
    def rows_written(self) -> int:
        """Number of rows appended since creation; the ring keeps the last ring_capacity."""
        return self._words[self._ring_word] // 2

    def append(self, sample: Mapping[str, float] | Sequence[float] | np.ndarray) -> int:
        """Append one row and return its row number (0 for the first row ever).

        A mapping may omit columns, which are stored as NaN, except ``timestamp``, which
        defaults to ``time.time()``. A sequence must contain one value per column, in order.
        """
        row = self._sample_row(sample)
        # The ring counter is twice the number of complete rows, plus one during a write.
        start = self._words[self._ring_word] | 1
        self._words[self._ring_word] = start
        self._ring[(start // 2) % self.ring_capacity] = row
        self._words[self._ring_word] = start + 1
        return start // 2

    def latest(self, n: int | None = None) -> np.ndarray:
        """Return a copy of the last ``n`` complete rows (default all), oldest first.

        Fewer rows come back when fewer were written, and when the writer overwrote the
        oldest requested rows during every attempt, which takes ``capacity - n`` appends
        during each copy.
        """
        capacity = self.ring_capacity
        n = capacity if n is None else min(n, capacity)
        if n < 0:
            raise ValueError(f"row count must be >= 0, got {n}")
        rows = self._ring[:0].copy()
        for attempt in range(self.max_read_retries):
            before = self._words[self._ring_word]
            complete, started = before // 2, (before + 1) // 2
            first = max(0, complete - n, started - capacity)
            rows = self._ring[np.arange(first, complete) % capacity]
            # Row r stays intact until the writer starts row r + capacity.
            intact_from = (self._words[self._ring_word] + 1) // 2 - capacity
            if first >= intact_from:
                return rows
            rows = rows[max(0, intact_from - first) :]
            _pause(attempt)
        return rows

    def latest_columns(self, n: int | None = None) -> dict[str, np.ndarray]:
        """Return the last ``n`` rows as one array per column name, oldest first."""
        rows = self.latest(n)
        return {name: rows[:, i].copy() for name, i in self._columns.items()}

    def _sample_row(self, sample: Mapping[str, float] | Sequence[float] | np.ndarray) -> np.ndarray:
        if not isinstance(sample, Mapping):
            row = np.asarray(sample, dtype=np.float64)
            if row.shape != (len(self._columns),):
                raise ValueError(
                    f"sample has shape {row.shape}, expected ({len(self._columns)},): "
                    f"one value per column of {', '.join(self._columns)}"
                )
            return row
        unknown = sorted(set(sample) - set(self._columns))
        if unknown:
            raise ValueError(f"unknown sample columns {unknown}; valid: {', '.join(self._columns)}")
        row = np.full(len(self._columns), np.nan)
        if "timestamp" in self._columns:
            row[self._columns["timestamp"]] = time.time()
        for name, value in sample.items():
            row[self._columns[name]] = float(value)
        return row

    # -- worker slots ------------------------------------------------------------------

    def write_slot_supervisor(self, index: int, **fields: Any) -> None:
        """Update the supervisor part of slot ``index``; only the supervisor calls this."""
        if "control_state" in fields:
            fields["control_state"] = SlotState(fields["control_state"])
        self._write_record(self._slot_offset(index), _SUPERVISOR_PART, fields)

    def write_slot_child(self, index: int, **fields: Any) -> None:
        """Update the child part of slot ``index``; only the child owning the slot calls this."""
        state = fields.get("state")
        if state is not None and not isinstance(state, SlotState):
            fields["state"] = SlotState(state)
        offset = self._slot_offset(index) + _SUPERVISOR_PART.size
        self._write_record(offset, _CHILD_PART, fields)

    def write_child_record(
        self,
        index: int,
        state: SlotState,
        job_id: int,
        jobs_done: int,
        job_started_at: float,
        heartbeat_at: float,
        job_cpu_s: float,
    ) -> None:
        """Replace the whole child part of slot ``index``; the fast path of write_slot_child.

        A worker calls this twice per job, so it packs the fields in one call instead of
        encoding them one by one.
        """
        body = _CHILD_PART.body.pack(
            state, job_id, jobs_done, job_started_at, heartbeat_at, job_cpu_s
        )
        offset = self._slot_offset(index) + _SUPERVISOR_PART.size
        word = offset // 8
        start = self._words[word] | 1
        self._words[word] = start
        self._store_body(offset, body)
        self._words[word] = start + 1

    def read_slot(self, index: int) -> SlotRecord:
        """Return a copy of slot ``index``; raise TornReadError if a part stays mid-write."""
        offset = self._slot_offset(index)
        supervisor = self._read_record(offset, _SUPERVISOR_PART, f"slot {index} supervisor part")
        offset += _SUPERVISOR_PART.size
        child = self._read_record(offset, _CHILD_PART, f"slot {index} child part")
        control_state = SlotState(supervisor.pop("control_state"))
        child_state = SlotState(child.pop("state"))
        state = control_state if control_state != SlotState.EMPTY else child_state
        return SlotRecord(
            index=index, state=state, control_state=control_state, child_state=child_state,
            **supervisor, **child,
        )  # fmt: skip

    def read_slots(self) -> list[SlotRecord]:
        """Return the slots in use (pid set or state not EMPTY), skipping torn ones.

        A torn slot is logged once until it reads cleanly again.
        """
        records = []
        for index in range(self.slot_count):
            try:
                record = self.read_slot(index)
            except TornReadError as exc:
                if index not in self._torn_slots_logged:
                    self._torn_slots_logged.add(index)
                    logger.warning("skipping slot %d of %s: %s", index, self.name, exc)
                continue
            self._torn_slots_logged.discard(index)
            if record.pid or record.state != SlotState.EMPTY:
                records.append(record)
        return records

    def find_free_slot(self) -> int | None:
        """Return the first slot with no pid and state EMPTY, or None when all are in use.

        A torn slot counts as in use: its child may have died mid-write and is not reset yet.
        """
        for index in range(self.slot_count):
            try:
                record = self.read_slot(index)
            except TornReadError:
                continue
            if not record.pid and record.state == SlotState.EMPTY:
                return index
        return None

    def reset_slot(self, index: int) -> None:
        """Zero both parts of slot ``index`` and make their counters even again.

        Only the supervisor calls this, and only once the slot's child has exited, because
        it writes the child part as well.
        """
        offset = self._slot_offset(index)
        self._clear_record(offset, _SUPERVISOR_PART)
        self._clear_record(offset + _SUPERVISOR_PART.size, _CHILD_PART)
        self._torn_slots_logged.discard(index)

    def _slot_offset(self, index: int) -> int:
        if not 0 <= index < self.slot_count:
            raise IndexError(f"slot index {index} out of range 0..{self.slot_count - 1}")
        return self._slots_offset + index * _SLOT_SIZE

    # -- circuit breakers --------------------------------------------------------------

    def write_breaker(self, index: int, **fields: Any) -> None:
        """Update breaker record ``index``; one process at a time may write a record."""
        if "state" in fields:
            fields["state"] = BreakerState(fields["state"])
        self._write_record(self._breaker_offset(index), _BREAKER, fields)

    def read_breaker(self, index: int) -> BreakerRecord:
        """Return a copy of breaker record ``index``; raise TornReadError if it stays torn."""
        fields = self._read_record(self._breaker_offset(index), _BREAKER, f"breaker {index}")
        return BreakerRecord(index=index, **{**fields, "state": BreakerState(fields["state"])})

    def read_breakers(self) -> list[BreakerRecord]:
        """Return the breaker records that have a name."""
        records = (self.read_breaker(i) for i in range(self.breaker_count))
        return [record for record in records if record.name]

    def find_breaker(self, name: str) -> int | None:
        """Return the index of the breaker called ``name``, or None."""
        return next((r.index for r in self.read_breakers() if r.name == name), None)

    def register_breaker(self, name: str) -> int:
        """Return the index of breaker ``name``, naming the first unnamed record if needed."""
        index = self.find_breaker(name)
        if index is not None:
            return index
        named = {record.index for record in self.read_breakers()}
        free = next((i for i in range(self.breaker_count) if i not in named), None)
        if free is None:
            raise ValueError(
                f"no free breaker record for {name!r}: all {self.breaker_count} are named; "
                "create the block with a larger breaker_count"
            )
        self.reset_breaker(free)
        self.write_breaker(free, name=name, updated_at=time.time())
        return free

    def reset_breaker(self, index: int) -> None:
        """Zero breaker record ``index`` (name included) and make its counter even."""
        self._clear_record(self._breaker_offset(index), _BREAKER)

    def _breaker_offset(self, index: int) -> int:
        if not 0 <= index < self.breaker_count:
            raise IndexError(f"breaker index {index} out of range 0..{self.breaker_count - 1}")
        return self._breakers_offset + index * _BREAKER.size

    # -- seqlocked records -------------------------------------------------------------

    def _read_record(self, offset: int, record: _Record, description: str) -> dict[str, Any]:
        word, body_offset = offset // 8, offset + 8
        for attempt in range(self.max_read_retries):
            before = self._words[word]
            if not before & 1:
                values = record.body.unpack_from(self._buf, body_offset)
                if self._words[word] == before:
                    return record.decode(values)
            _pause(attempt)
        raise TornReadError(
            f"{description} of {self.name} was mid-write on all {self.max_read_retries} read attempts "
            f"(sequence {self._words[word]}); if its writer died, the supervisor must reset it"
        )

    def _write_record(self, offset: int, record: _Record, fields: Mapping[str, Any]) -> None:
        encoded = {name: record.encode(name, value) for name, value in fields.items()}
        # This process is the record's only writer, so its current contents are stable.
        current = record.body.unpack_from(self._buf, offset + 8)
        values = [encoded.get(name, old) for name, old in zip(record.names, current)]
        # Packing before the counter turns odd: an out-of-range value raises struct.error
        # here instead of leaving the record mid-write.
        body = record.body.pack(*values)
        word = offset // 8
        # `| 1` also reuses a counter left odd by a writer that died mid-write.
        start = self._words[word] | 1
        self._words[word] = start
        self._store_body(offset, body)
        self._words[word] = start + 1

    def _store_body(self, offset: int, body: bytes) -> None:
        self._buf[offset + 8 : offset + 8 + len(body)] = body

    def _clear_record(self, offset: int, record: _Record) -> None:
        word = offset // 8
        start = self._words[word] | 1
        self._words[word] = start
        self._buf[offset + 8 : offset + record.size] = bytes(record.size - 8)
        self._words[word] = start + 1

    # -- lifetime ----------------------------------------------------------------------

    def close(self) -> None:
        """Unmap the segment in this process. The block is unusable afterwards."""
        if self._closed:
            return
        self._closed = True
        # The mapping can close only once no array or memoryview exports its buffer.
        self._words.release()
        self._ring = np.empty((0, 0))
        self._shm.close()

    def unlink(self) -> None:
        """Remove the segment's name; processes that mapped it keep their mapping."""
        if self._unlinked:
            return
        self._unlinked = True
        atexit.unregister(self._unlink_at_exit)
        try:
            _unlink_segment(self.name)
        except FileNotFoundError:
            logger.debug("telemetry block %s was already unlinked", self.name)
            return
        logger.info("unlinked telemetry block %s", self.name)

    def _unlink_at_exit(self) -> None:
        # Forked children inherit this handler; only the creating process unlinks.
        if os.getpid() == self.owner_pid:
            self.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        """Close the block, and unlink it too when this is the creating process."""
        if self.is_owner and os.getpid() == self.owner_pid:
            self.unlink()
        self.close()

    def __del__(self) -> None:
        if getattr(self, "_shm", None) is not None:
            self.close()


def _pause(attempt: int) -> None:
    """Wait before read attempt ``attempt + 1``: spin first, then sleep up to 1 ms."""
    if attempt >= _SPIN_RETRIES:
        time.sleep(min(1e-3, 1e-5 * 2 ** (attempt - _SPIN_RETRIES)))


def create(
    *,
    ring_capacity: int = DEFAULT_RING_CAPACITY,
    slot_count: int = DEFAULT_SLOT_COUNT,
    breaker_count: int = DEFAULT_BREAKER_COUNT,
    sample_fields: Sequence[str] = SAMPLE_FIELDS,
    max_read_retries: int = DEFAULT_MAX_READ_RETRIES,
) -> TelemetryBlock:
    """Create a zeroed block named ``jobvisor_<pid>_<random hex>``, owned by this process.

    The segment is unlinked by ``unlink()``, by leaving a ``with`` block, or at interpreter
    exit of this process; a SIGKILLed owner leaves it for :func:`remove_stale_segments`.
    """
    for what, value in (("ring_capacity", ring_capacity), ("slot_count", slot_count),
                        ("breaker_count", breaker_count), ("max_read_retries", max_read_retries)):  # fmt: skip
        if value < 1:
            raise ValueError(f"{what} must be >= 1, got {value}")
    fields = tuple(sample_fields)
    if not fields or len(set(fields)) != len(fields) or any("," in f or not f for f in fields):
        raise ValueError(f"sample_fields must be unique, non-empty names without commas: {fields}")
    header = _Header(os.getpid(), time.time(), ring_capacity, slot_count, breaker_count, fields)
    name = f"{SEGMENT_PREFIX}{header.owner_pid}_{secrets.token_hex(4)}"
    shm = _open_segment(name, create=True, size=header.total_size)
    header.pack_into(_buffer(shm))
    block = TelemetryBlock(shm, header, owner=True, retries=max_read_retries)
    atexit.register(block._unlink_at_exit)
    logger.info("created telemetry block %s (%d bytes)", name, header.total_size)
    return block


def attach(name: str, *, max_read_retries: int = DEFAULT_MAX_READ_RETRIES) -> TelemetryBlock:
    """Map the existing block ``name``; this process's exit leaves the segment in place.

    Raises FileNotFoundError if no such segment exists, LayoutError if it is not a block of
    this layout version.
    """
    shm = _open_segment(name)
    try:
        header = _unpack_header(_buffer(shm), name)
    except BaseException:
        shm.close()
        raise
    return TelemetryBlock(shm, header, owner=False, retries=max_read_retries)


def remove_stale_segments(directory: str | os.PathLike[str] = SHM_DIRECTORY) -> list[str]:
    """Unlink the ``jobvisor_<pid>_*`` segments whose owner process is gone; return their names.

    An owner counts as gone when its pid does not exist or is a zombie, or when the process
    now holding the pid started after the segment was created (the pid was reused).
    """
    root = Path(directory)
    if not root.is_dir():
        return []
    removed = []
    for path in sorted(root.iterdir()):
        match = _SEGMENT_NAME.match(path.name)
        if match is None or not _is_stale(path.name, int(match.group(1))):
            continue
        try:
            _unlink_segment(path.name)
        except FileNotFoundError:
            continue  # another process removed it between the listing and now
        except PermissionError as exc:
            logger.warning("cannot remove stale telemetry segment %s: %s", path.name, exc)
            continue
        logger.info("removed stale telemetry segment %s", path.name)
        removed.append(path.name)
    return removed


def _is_stale(name: str, pid: int) -> bool:
    if not _process_running(pid):
        return True
    try:
        shm = _open_segment(name)
    except (OSError, ValueError):  # ValueError: empty, so still being created
        return False  # gone, being created, or not readable by this user: leave it alone
    try:
        header = _unpack_header(_buffer(shm), name)
    except LayoutError:
        return False  # unfinished or foreign header of a live pid: leave it alone
    finally:
        shm.close()
    # A header naming another owner was not written by create(): leave the segment alone.
    return header.owner_pid == pid and not _process_running(pid, started_by=header.created_at)


def _process_running(pid: int, started_by: float | None = None) -> bool:
    """Tell whether ``pid`` is a live process that started by epoch time ``started_by``."""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started_by is None or process.create_time() <= started_by + _OWNER_START_SLACK_S
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
