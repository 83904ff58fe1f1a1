"""Circuit breakers for the external services that job handlers call.

A breaker is closed (calls go out), open (calls are rejected until ``reset_timeout_s`` has
passed since it opened) or half_open (at most ``half_open_probes`` trial calls, the probes,
are in flight). A probe success closes a half_open breaker, and a probe failure reopens it.

The state lives in a store. :class:`SharedMemoryBreakerStore` keeps it in a breaker record
of the supervisor's telemetry block, so all processes of the node share one breaker per
service. :class:`LocalBreakerStore` keeps it in this process's memory.

Each read-modify-write of a shared record holds an exclusive ``flock`` on the segment file
``/dev/shm/<block name>``, which also keeps the record's seqlock to one writer at a time.
Calls that change nothing (a closed breaker without failures, an open breaker before its
reset timeout) read the record through its seqlock and take no lock.
"""

from __future__ import annotations

import dataclasses
import fcntl
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, ParamSpec, Protocol, TypeVar

from jobvisor.errors import ConfigError, JobvisorError
from jobvisor.telemetry.shm import (
    BREAKER_NAME_BYTES,
    SHM_DIRECTORY,
    BreakerRecord,
    BreakerState,
    TelemetryBlock,
    TornReadError,
)

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

Clock = Callable[[], float]  # returns epoch seconds

DEFAULT_SERVICE = "general"  # config of services without one of their own


class BreakerOpenError(JobvisorError):
    """A circuit breaker rejected a call to its service.

    ``retry_after_s`` is the time in seconds until the breaker may admit a call again: until
    the next probe while open, and until the in-flight probes time out while half_open.
    """

    def __init__(
        self,
        message: str,
        *,
        service: str = "",
        state: BreakerState = BreakerState.OPEN,
        failures: int = 0,
        retry_after_s: float = 0.0,
    ) -> None:
        super().__init__(message)
        self.service = service
        self.state = state
        self.failures = failures
        self.retry_after_s = retry_after_s


# -- configuration ---------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerConfig:
    """Thresholds of one service's circuit breaker. Raises ConfigError on an invalid value."""

    # Consecutive failures that open a closed breaker.
    max_failures: int = 5
    # Seconds an open breaker rejects calls before it admits a probe.
    reset_timeout_s: float = 60.0
    # Seconds after the latest probe was admitted by which a probe must report, or it counts
    # as failed (its process may have died). Set it above the longest expected call.
    half_open_timeout_s: float = 30.0
    # Probes in flight at once while half_open, over all processes.
    half_open_probes: int = 1
    # Node CPU and memory use (% of the machine) above which new jobs calling the service
    # should wait.
    cpu_percent: float = 90.0
    memory_percent: float = 90.0
    # Queued jobs above which check_resources reports the queue.
    queue_depth: int = 50

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            value = getattr(self, item.name)
            if isinstance(item.default, int):
                _check_count(item.name, value)
            else:
                _check_seconds_or_percent(item.name, value)
                object.__setattr__(self, item.name, float(value))


_PERCENT_FIELDS = frozenset({"cpu_percent", "memory_percent"})
CONFIG_KEYS: tuple[str, ...] = tuple(item.name for item in dataclasses.fields(BreakerConfig))


def _check_count(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"breaker setting {name}={value!r} is not an integer; use 1 or more")
    if value < 1:
        raise ConfigError(f"breaker setting {name}={value!r} is invalid; use 1 or more")


def _check_seconds_or_percent(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"breaker setting {name}={value!r} is not a number")
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(
            f"breaker setting {name}={value!r} is invalid; use a finite number above 0"
        )
    if name in _PERCENT_FIELDS and value > 100:
        raise ConfigError(
            f"breaker setting {name}={value!r} is over 100 % of the machine; use at most 100"
        )


def _check_service_name(name: Any) -> None:
    """Raise ConfigError unless ``name`` fits a breaker record's name field."""
    if not isinstance(name, str) or not name.strip():
        raise ConfigError(f"breaker service name {name!r} is invalid; use a non-empty string")
    if "\0" in name:
        raise ConfigError(f"breaker service name {name!r} contains a NUL character")
    size = len(name.encode("utf-8"))
    if size > BREAKER_NAME_BYTES:
        raise ConfigError(
            f"breaker service name {name!r} is {size} bytes in UTF-8; "
            f"use at most {BREAKER_NAME_BYTES}"
        )


BUILTIN_CONFIGS: Mapping[str, BreakerConfig] = MappingProxyType(
    {
        "openai": BreakerConfig(
            max_failures=3, reset_timeout_s=120.0,
            cpu_percent=80.0, memory_percent=85.0, queue_depth=30,
        ),
        "database": BreakerConfig(
            max_failures=5, reset_timeout_s=60.0,
            cpu_percent=90.0, memory_percent=90.0, queue_depth=50,
        ),
        DEFAULT_SERVICE: BreakerConfig(),
    }
)  # fmt: skip


def breaker_configs(
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, BreakerConfig]:
    """Return the built-in breaker configs merged with ``overrides``, by service name.

    The settings given for a built-in service replace its built-in values. A service that
    is not built in starts from the :class:`BreakerConfig` defaults. Raises ConfigError on
    an invalid service name, an unknown setting or an invalid value.
    """
    configs = dict(BUILTIN_CONFIGS)
    for service, settings in (overrides or {}).items():
        _check_service_name(service)
        if not isinstance(settings, Mapping):
            raise ConfigError(
                f"breaker settings of service {service!r} must be a mapping of setting names "
                f"to values, got {type(settings).__name__}"
            )
        unknown = sorted(str(key) for key in set(settings) - set(CONFIG_KEYS))
        if unknown:
            raise ConfigError(
                f"unknown breaker settings {unknown} for service {service!r}; "
                f"valid settings: {', '.join(CONFIG_KEYS)}"
            )
        base = configs.get(service, BreakerConfig())
        try:
            configs[service] = dataclasses.replace(base, **settings)
        except ConfigError as error:
            raise ConfigError(f"service {service!r}: {error}") from None
    return configs


# -- stores ----------------------------------------------------------------------------


@dataclass(frozen=True)
class BreakerStatus:
    """Stored state of one breaker. Times are epoch seconds, 0.0 when never set."""

    state: BreakerState = BreakerState.CLOSED
    failures: int = 0  # consecutive failures
    opened_at: float = 0.0
    probes: int = 0  # probes in flight while half_open
    # Time of the last change. While half_open it is when the latest probe was admitted.
    updated_at: float = 0.0


class BreakerStore(Protocol):
    """Storage of breaker states, keyed by service name."""

    def register(self, name: str) -> None:
        """Add breaker ``name`` in the closed state unless the store has it already."""

    def peek(self, name: str) -> BreakerStatus | None:
        """Return the status read without the lock, or None when only a locked read can tell."""

    def update(
        self, name: str, change: Callable[[BreakerStatus], BreakerStatus]
    ) -> tuple[BreakerStatus, BreakerStatus]:
        """Apply ``change`` under the lock, store its result if it differs, and return the
        status before and after."""

    def names(self) -> list[str]:
        """Return the names of the registered breakers."""


# Objects whose threading locks must be replaced in a forked child, because another thread
# may have held them during the fork.
_FORK_SENSITIVE: weakref.WeakSet[Any] = weakref.WeakSet()


def _renew_locks_after_fork() -> None:
    for item in list(_FORK_SENSITIVE):
        item._renew_lock_after_fork()


os.register_at_fork(after_in_child=_renew_locks_after_fork)


class LocalBreakerStore:
    """Breaker states in this process's memory, for code that runs without a supervisor.

    Threads of the process share each breaker. A forked child starts from a copy of the
    parent's states and then changes only its own copy.
    """

    def __init__(self) -> None:
        self._states: dict[str, BreakerStatus] = {}
        self._lock = threading.Lock()
        _FORK_SENSITIVE.add(self)

    def _renew_lock_after_fork(self) -> None:
        self._lock = threading.Lock()

    def register(self, name: str) -> None:
        with self._lock:
            self._states.setdefault(name, BreakerStatus())

    def peek(self, name: str) -> BreakerStatus | None:
        return self._states.get(name)

    def update(
        self, name: str, change: Callable[[BreakerStatus], BreakerStatus]
    ) -> tuple[BreakerStatus, BreakerStatus]:
        with self._lock:
            before = self._states.get(name)
            if before is None:
                raise KeyError(
                    f"breaker {name!r} is not registered in this store; register it first"
                )
            after = change(before)
            if after != before:
                self._states[name] = after
        return before, after

    def names(self) -> list[str]:
        return list(self._states)


class _FileLock:
    """Exclusive lock on one file, for one thread of one process at a time.

    flock locks belong to an open file description, and a forked child shares its parent's
    descriptions, so each process opens the file again before it locks it. A threading lock
    keeps threads that share the description apart.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread_lock = threading.Lock()
        self._fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        self._pid = os.getpid()
        status = os.fstat(self._fd)
        self._file_id = (status.st_dev, status.st_ino)
        _FORK_SENSITIVE.add(self)

    def _renew_lock_after_fork(self) -> None:
        self._thread_lock = threading.Lock()

    @contextmanager
    def hold(self) -> Iterator[None]:
        with self._thread_lock:
            fd = self._descriptor()
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _descriptor(self) -> int:
        """Return this process's own descriptor of the file, opening it after a fork."""
        pid = os.getpid()
        if self._pid == pid:
            return self._fd
        # Code of the child may have closed the inherited number and reused it for a file
        # of its own, which must be neither locked nor closed here.
        inherited = self._fd if self._is_locked_file(self._fd) else -1
        candidates = [str(self.path)]
        if inherited >= 0:
            # Opening the inherited descriptor's /proc entry makes a new open file
            # description of the same file, which works after the segment was unlinked.
            candidates.insert(0, f"/proc/self/fd/{inherited}")
        fd = None
        for candidate in candidates:
            fd = self._open_locked_file(candidate)
            if fd is not None:
                break
        if fd is None:
            raise FileNotFoundError(
                f"cannot open {self.path} again in process {pid} to lock breaker records: "
                "the segment was unlinked and the descriptor inherited from process "
                f"{self._pid} is closed; attach to the supervisor's current telemetry block"
            )
        self._fd, self._pid = fd, pid
        if inherited >= 0:
            # The parent keeps its own descriptor, so closing this copy releases none of
            # its locks.
            os.close(inherited)
        return fd

    def _is_locked_file(self, fd: int) -> bool:
        try:
            status = os.fstat(fd)
        except OSError:
            return False
        return (status.st_dev, status.st_ino) == self._file_id

    def _open_locked_file(self, path: str) -> int | None:
        """Open ``path`` and return the descriptor if it is the locked file, else None."""
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        if self._is_locked_file(fd):
            return fd
        os.close(fd)
        return None

    def close(self) -> None:
        """Close the descriptor if this process opened it. An inherited one stays open."""
        if self._fd >= 0 and self._pid == os.getpid():
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        if getattr(self, "_fd", -1) >= 0 and hasattr(self, "_pid"):
            self.close()


class SharedMemoryBreakerStore:
    """Breaker states in the breaker records of a telemetry block.

    Every process that maps the block reads the same breakers, and forked children may use
    the store that they inherit. Records are written only under :meth:`lock`, so any other
    code that writes breaker records of the block must hold it too.
    """

    def __init__(self, block: TelemetryBlock) -> None:
        self.block = block
        self._lock = _FileLock(SHM_DIRECTORY / block.name)
        self._indexes: dict[str, int] = {}

    def lock(self) -> AbstractContextManager[None]:
        """Hold the lock of the block's breaker records, across processes and threads."""
        return self._lock.hold()

    def register(self, name: str) -> None:
        if name in self._indexes:
            return
        with self._lock.hold():
            self._indexes[name] = self.block.register_breaker(name)

    def peek(self, name: str) -> BreakerStatus | None:
        try:
            record = self.block.read_breaker(self._index(name))
        except TornReadError:
            return None
        return _status(record) if record.name == name else None

    def update(
        self, name: str, change: Callable[[BreakerStatus], BreakerStatus]
    ) -> tuple[BreakerStatus, BreakerStatus]:
        with self._lock.hold():
            index, before = self._read_locked(name)
            after = change(before)
            if after != before:
                self._write(index, name, after)
        return before, after

    def names(self) -> list[str]:
        found = set(self._indexes)
        for index in range(self.block.breaker_count):
            try:
                record = self.block.read_breaker(index)
            except TornReadError:
                continue  # its writer died mid-write, and the next locked update repairs it
            if record.name:
                found.add(record.name)
        return sorted(found)

    def close(self) -> None:
        """Close this process's descriptor of the segment file. The block stays mapped, and
        the store cannot take its lock afterwards."""
        self._lock.close()

    def _index(self, name: str) -> int:
        index = self._indexes.get(name)
        if index is None:
            raise KeyError(
                f"breaker {name!r} is not registered in block {self.block.name}; register it first"
            )
        return index

    def _read_locked(self, name: str) -> tuple[int, BreakerStatus]:
        """Read record ``name`` while holding the lock, repairing a torn or reused record."""
        index = self._index(name)
        try:
            record = self.block.read_breaker(index)
        except TornReadError as error:
            # Under the lock no live process is writing, so the writer died mid-write and
            # the record's fields are unknown.
            logger.warning(
                "circuit breaker %r: record %d of %s was left mid-write, resetting it to "
                "closed: %s", name, index, self.block.name, error,
            )  # fmt: skip
            status = BreakerStatus(updated_at=time.time())
            self._write(index, name, status)
            return index, status
        if record.name != name:
            # The record was reset or given to another service since this store cached it.
            index = self.block.register_breaker(name)
            self._indexes[name] = index
            record = self.block.read_breaker(index)
        return index, _status(record)

    def _write(self, index: int, name: str, status: BreakerStatus) -> None:
        self.block.write_breaker(
            index, name=name, state=status.state, failures=status.failures,
            opened_at=status.opened_at, half_open_probes_in_flight=status.probes,
            updated_at=status.updated_at,
        )  # fmt: skip


def _status(record: BreakerRecord) -> BreakerStatus:
    return BreakerStatus(
        state=record.state,
        failures=record.failures,
        opened_at=record.opened_at,
        probes=record.half_open_probes_in_flight,
        updated_at=record.updated_at,
    )


# -- breakers --------------------------------------------------------------------------


class CircuitBreaker:
    """Circuit breaker of service ``name``, with its state in ``store``.

    ``clock`` returns epoch seconds. With a shared store, every process must use the same
    clock, because they compare each other's timestamps.
    """

    def __init__(
        self,
        name: str,
        config: BreakerConfig,
        store: BreakerStore,
        *,
        clock: Clock = time.time,
    ) -> None:
        _check_service_name(name)
        self.name = name
        self.config = config
        self.store = store
        self._clock = clock
        store.register(name)

    @property
    def state(self) -> BreakerState:
        """Stored state. A half_open breaker whose probes timed out stays half_open here
        until the next :meth:`before_call` reopens it."""
        return self._current().state

    def snapshot(self) -> dict[str, Any]:
        """Return name, state ("closed", "open", "half_open"), failures, opened_at (epoch
        seconds, None if it never opened) and probes in flight."""
        status = self._current()
        return {
            "name": self.name,
            "state": status.state.name.lower(),
            "failures": status.failures,
            "opened_at": status.opened_at or None,
            "probes": status.probes,
        }

    def admission(self) -> str:
        """Return what the breaker admits now, without changing it.

        "all" when closed, "probe" when half_open or open past its reset timeout (the next
        call becomes a probe), "none" while open before its reset timeout.
        """
        status = self._current()
        if status.state is BreakerState.CLOSED:
            return "all"
        if status.state is BreakerState.OPEN:
            ready = self._clock() >= status.opened_at + self.config.reset_timeout_s
            return "probe" if ready else "none"
        return "probe"

    def before_call(self) -> None:
        """Admit a call or raise BreakerOpenError.

        A closed breaker admits every call. An open breaker rejects calls until
        ``reset_timeout_s`` has passed since it opened, and then turns half_open and admits
        the caller as a probe. A half_open breaker admits up to ``half_open_probes`` probes
        over all processes. It reopens when ``half_open_timeout_s`` passed since the latest
        probe was admitted without any probe reporting.
        """
        before, after = self._apply(self._admit)
        if after.state != before.state:
            timeout = _format_seconds(self.config.half_open_timeout_s)
            self._log_transition(before, after, f"no probe reported within {timeout}")
        if after.state is BreakerState.CLOSED or after.probes > before.probes:
            return
        raise self._rejection(after, self._clock())

    def on_success(self) -> None:
        """Record a successful call: reset the failures, or close a half_open breaker.

        A closed breaker without failures is only read, so this takes no lock. An open
        breaker ignores the report, which comes from a call admitted before it opened.

        NOTE: the store does not tell probes from calls admitted before the breaker opened,
        so such a call that reports while the breaker is half_open also closes it (and
        reopens it in :meth:`on_failure`).
        """
        before, after = self._apply(self._record_success)
        if after.state != before.state:
            self._log_transition(before, after, "a probe succeeded")

    def on_failure(self) -> None:
        """Record a failed call: count it, and open the breaker at ``max_failures``.

        A half_open breaker reopens. An open breaker ignores the report, which comes from a
        call admitted before it opened.
        """
        before, after = self._apply(self._record_failure)
        if after.state != before.state:
            self._log_transition(before, after, "a probe failed")

    def call(self, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn(*args, **kwargs)`` through the breaker and return its result.

        Raises BreakerOpenError without calling ``fn`` when the breaker rejects the call.
        An Exception raised by ``fn`` counts as a failure and is re-raised. Other
        BaseExceptions (KeyboardInterrupt, SystemExit) are re-raised without a report, so a
        probe ended that way counts as failed after ``half_open_timeout_s``.
        """
        self.before_call()
        try:
            result = fn(*args, **kwargs)
        except Exception:
            self.on_failure()
            raise
        self.on_success()
        return result

    @contextmanager
    def guard(self) -> Iterator[None]:
        """Run the ``with`` body through the breaker, with the same rules as :meth:`call`."""
        self.before_call()
        try:
            yield
        except Exception:
            self.on_failure()
            raise
        self.on_success()

    def check_resources(
        self, cpu_percent: float, memory_percent: float, queue_depth: float
    ) -> list[str]:
        """Return one sentence per threshold of this service's config that a value exceeds.

        CPU and memory are in % of the machine. A value equal to its threshold is within it,
        and NaN (no measurement) exceeds nothing.
        """
        config = self.config
        exceeded = []
        if cpu_percent > config.cpu_percent:
            exceeded.append(
                f"CPU {_format_number(cpu_percent)} % is above "
                f"{_format_number(config.cpu_percent)} %"
            )
        if memory_percent > config.memory_percent:
            exceeded.append(
                f"memory {_format_number(memory_percent)} % is above "
                f"{_format_number(config.memory_percent)} %"
            )
        if queue_depth > config.queue_depth:
            exceeded.append(
                f"queue depth {_format_number(queue_depth)} is above {config.queue_depth}"
            )
        return exceeded

    # -- transitions: pure functions of the stored status and the time ----------------

    def _admit(self, status: BreakerStatus, now: float) -> BreakerStatus:
        config = self.config
        if status.state is BreakerState.CLOSED:
            return status
        if status.state is BreakerState.OPEN:
            # A negative wait means that the wall clock was set back. Waiting for it to catch
            # up could keep the breaker open for as long as the step, so a probe goes out.
            if 0.0 <= now - status.opened_at < config.reset_timeout_s:
                return status
            return dataclasses.replace(
                status, state=BreakerState.HALF_OPEN, probes=1, updated_at=now
            )
        if not 0.0 <= now - status.updated_at < config.half_open_timeout_s:
            return self._reopen(status, now)
        if status.probes < config.half_open_probes:
            return dataclasses.replace(status, probes=status.probes + 1, updated_at=now)
        return status

    def _record_success(self, status: BreakerStatus, now: float) -> BreakerStatus:
        if status.state is BreakerState.CLOSED:
            if status.failures == 0:
                return status
            return dataclasses.replace(status, failures=0, updated_at=now)
        if status.state is BreakerState.HALF_OPEN:
            return dataclasses.replace(
                status, state=BreakerState.CLOSED, failures=0, probes=0, updated_at=now
            )
        return status

    def _record_failure(self, status: BreakerStatus, now: float) -> BreakerStatus:
        if status.state is BreakerState.CLOSED:
            failures = status.failures + 1
            if failures < self.config.max_failures:
                return dataclasses.replace(status, failures=failures, updated_at=now)
            return dataclasses.replace(
                status, state=BreakerState.OPEN, failures=failures, opened_at=now,
                updated_at=now,
            )  # fmt: skip
        if status.state is BreakerState.HALF_OPEN:
            return self._reopen(status, now)
        return status

    @staticmethod
    def _reopen(status: BreakerStatus, now: float) -> BreakerStatus:
        return dataclasses.replace(
            status, state=BreakerState.OPEN, failures=status.failures + 1, opened_at=now,
            probes=0, updated_at=now,
        )  # fmt: skip

    # -- store access and messages ----------------------------------------------------

    def _apply(
        self, change: Callable[[BreakerStatus, float], BreakerStatus]
    ) -> tuple[BreakerStatus, BreakerStatus]:
        """Apply ``change`` to the stored status, and return the status before and after.

        A change that leaves the status as it is needs only the lock-free read. Otherwise
        the change is computed again under the store's lock, from a fresh read and time.
        """
        status = self.store.peek(self.name)
        if status is not None and change(status, self._clock()) == status:
            return status, status
        return self.store.update(self.name, lambda current: change(current, self._clock()))

    def _current(self) -> BreakerStatus:
        status = self.store.peek(self.name)
        if status is None:
            status, _ = self.store.update(self.name, lambda current: current)
        return status

    def _rejection(self, status: BreakerStatus, now: float) -> BreakerOpenError:
        if status.state is BreakerState.OPEN:
            wait = max(0.0, status.opened_at + self.config.reset_timeout_s - now)
            message = (
                f"circuit breaker {self.name!r} is open after "
                f"{_plural(status.failures, 'failure')}; next probe in {_format_seconds(wait)}"
            )
        else:
            wait = max(0.0, status.updated_at + self.config.half_open_timeout_s - now)
            message = (
                f"circuit breaker {self.name!r} is half_open with {status.probes} of "
                f"{self.config.half_open_probes} probes in flight; it closes when a probe "
                f"succeeds, or reopens within {_format_seconds(wait)} if none does"
            )
        return BreakerOpenError(
            message, service=self.name, state=status.state, failures=status.failures,
            retry_after_s=wait,
        )  # fmt: skip

    def _log_transition(self, before: BreakerStatus, after: BreakerStatus, cause: str) -> None:
        pid = os.getpid()
        if after.state is BreakerState.OPEN:
            wait = _format_seconds(self.config.reset_timeout_s)
            if before.state is BreakerState.CLOSED:
                logger.warning(
                    "circuit breaker %r opened after %s (pid %d); next probe in %s",
                    self.name, _plural(after.failures, "failure"), pid, wait,
                )  # fmt: skip
            else:
                logger.warning(
                    "circuit breaker %r reopened because %s (%s, pid %d); next probe in %s",
                    self.name, cause, _plural(after.failures, "failure"), pid, wait,
                )  # fmt: skip
        elif after.state is BreakerState.HALF_OPEN:
            logger.info(
                "circuit breaker %r is half_open after %s, and pid %d sends a probe",
                self.name, _plural(after.failures, "failure"), pid,
            )  # fmt: skip
        else:
            logger.info(
                "circuit breaker %r closed because a probe succeeded (failures %d -> 0, pid %d)",
                self.name, before.failures, pid,
            )  # fmt: skip


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def _format_seconds(seconds: float) -> str:
    """Format a wait: whole seconds rounded up from 10 s on, tenths below."""
    if seconds >= 10.0:
        return f"{math.ceil(seconds)} s"
    return f"{seconds:.1f} s"


def _format_number(value: float) -> str:
    return f"{value:.2f}".rstrip("0").rstrip(".")


# -- registry --------------------------------------------------------------------------


class BreakerRegistry:
    """The breakers of a node, shared through ``block``, or of this process without one.

    A forked child may keep using the registry that it inherited.
    """

    def __init__(
        self,
        block: TelemetryBlock | None,
        configs: Mapping[str, BreakerConfig] | None = None,
        *,
        clock: Clock = time.time,
    ) -> None:
        self.configs: dict[str, BreakerConfig] = dict(
            breaker_configs() if configs is None else configs
        )
        self.store: BreakerStore
        if block is None:
            self.store = LocalBreakerStore()
        else:
            self.store = SharedMemoryBreakerStore(block)
        self._clock = clock
        self._breakers: dict[str, CircuitBreaker] = {}

    def config_for(self, name: str) -> BreakerConfig:
        """Return the config of service ``name``, else of "general", else the defaults."""
        config = self.configs.get(name) or self.configs.get(DEFAULT_SERVICE)
        return config or BreakerConfig()

    def get(self, name: str) -> CircuitBreaker:
        """Return the breaker of service ``name``, registering it in the store on first use."""
        breaker = self._breakers.get(name)
        if breaker is None:
            breaker = CircuitBreaker(name, self.config_for(name), self.store, clock=self._clock)
            breaker = self._breakers.setdefault(name, breaker)
        return breaker

    def all(self) -> list[dict[str, Any]]:
        """Return the snapshot of every breaker in the store, sorted by name.

        With a block this includes breakers that only other processes have used.
        """
        names = sorted(set(self.store.names()) | set(self._breakers))
        return [self.get(name).snapshot() for name in names]
