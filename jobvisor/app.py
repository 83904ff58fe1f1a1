"""The application object: job type registry, enqueueing, and the entry to the supervisor."""

from __future__ import annotations

import datetime as dt
import logging
import math
import os
import threading
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import psycopg

from jobvisor.config import (
    CPU_LEVELS_PERCENT,
    DEFAULT_TYPE_CONCURRENCY,
    DEFAULT_TYPE_PRIORITY,
    MEMORY_LEVELS_MB,
    PRIORITY_MAX,
    PRIORITY_MIN,
    TYPE_CONCURRENCY,
    TYPE_PRIORITY,
    JobType,
    Settings,
)
from jobvisor.db.connection import connect
from jobvisor.db.dsn import configured_dsn
from jobvisor.db.embedded import ensure_embedded_server
from jobvisor.db.migrations import migrate
from jobvisor.db.store import JobStore, NewJob
from jobvisor.errors import ConfigError, InvalidJobError, UnknownJobTypeError
from jobvisor.payload import to_json
from jobvisor.resilience.breakers import BreakerRegistry, breaker_configs

logger = logging.getLogger(__name__)

Handler = Callable[[Any, Any], Any]
ROW_KEYS = frozenset({"job_type", "data", "user_id", "user_type", "priority", "delay"})
MAX_TEXT_LENGTH = 200

_apps: weakref.WeakSet[App] = weakref.WeakSet()


class App:
    """A set of job types and the database their jobs live in.

    ``dsn`` defaults to ``JOBVISOR_DSN``, then ``DATABASE_URL``, then the embedded server.
    """

    def __init__(
        self,
        dsn: str | None = None,
        *,
        settings: Settings | None = None,
        breakers: Mapping[str, Mapping[str, Any]] | None = None,
    ) -> None:
        """``breakers`` maps a service name to BreakerConfig fields, for example
        ``{"openai": {"reset_timeout_s": 60}, "stripe": {"max_failures": 3}}``."""
        self._dsn_argument = configured_dsn(dsn) if dsn is not None else None
        self._dsn: str | None = self._dsn_argument
        self.settings = settings or Settings.load()
        self.breaker_configs = breaker_configs(breakers)
        self._breakers: BreakerRegistry | None = None
        self.job_types: dict[str, JobType] = {}
        self._conn: psycopg.Connection[Any] | None = None
        self._lock = threading.Lock()
        _apps.add(self)

    # Circuit breakers

    @property
    def breakers(self) -> BreakerRegistry:
        """The circuit breakers of this process: the node's shared ones inside a supervisor
        and its workers, otherwise breakers of this process alone."""
        if self._breakers is None:
            self._breakers = BreakerRegistry(None, self.breaker_configs)
        return self._breakers

    def use_breakers(self, registry: BreakerRegistry) -> None:
        """Share ``registry`` with the workers this process forks from now on."""
        self._breakers = registry

    # Database

    @property
    def dsn(self) -> str:
        """The database this app uses, resolved on first use."""
        if self._dsn is None:
            self._dsn = configured_dsn() or ensure_embedded_server()
        return self._dsn

    def configure(self, *, dsn: str | None = None, settings: Settings | None = None) -> None:
        """Point the app at another database or settings, before it opens a connection."""
        if dsn is not None:
            self.close()
            self._dsn = configured_dsn(dsn)
        if settings is not None:
            self.settings = settings

    def connect(self, *, application_name: str = "jobvisor") -> psycopg.Connection[Any]:
        """Open a new connection to the app's database, with the schema in place."""
        conn = connect(self.dsn, application_name=application_name)
        migrate(conn)
        return conn

    def _store(self) -> JobStore:
        if self._conn is None or self._conn.closed:
            self._conn = self.connect(application_name="jobvisor-producer")
        return JobStore(self._conn)

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def _forget_inherited_connection(self) -> None:
        # The connection belongs to the parent process; the child opens its own when needed.
        self._conn = None
        self._lock = threading.Lock()

    # Registry

    def job(
        self,
        name: str,
        *,
        memory: str | int = "low",
        cpu: str | int = "low",
        max_retries: int = 3,
        timeout: float = 600.0,
        concurrency: int | None = None,
        priority: int | None = None,
        services: Iterable[str] = (),
    ) -> Callable[[Handler], Handler]:
        """Register the decorated ``handler(ctx, data)`` for jobs of type ``name``.

        ``memory`` and ``cpu`` are the budgets of one running job: a level (low, medium or
        high) or an exact figure, in MB of private memory and in % of one core.
        ``concurrency`` caps this type's running jobs on a node and ``priority`` is its base
        priority; both default to the built-in table for well-known types.
        """
        _check_text(name, "job type name", allow_none=False)
        if not (memory in MEMORY_LEVELS_MB or (_is_int(memory) and memory > 0)):
            raise ConfigError(
                f"memory={memory!r} for job type {name!r}; use one of {list(MEMORY_LEVELS_MB)} "
                "or a whole number of MB above 0"
            )
        if not (cpu in CPU_LEVELS_PERCENT or (_is_int(cpu) and cpu > 0)):
            raise ConfigError(
                f"cpu={cpu!r} for job type {name!r}; use one of {list(CPU_LEVELS_PERCENT)} "
                "or a whole number of % of one core above 0"
            )
        if not _is_int(max_retries) or max_retries < 0:
            raise ConfigError(f"max_retries={max_retries!r} for job type {name!r}; use an integer >= 0")
        if not _is_number(timeout) or not timeout > 0:
            raise ConfigError(f"timeout={timeout!r} for job type {name!r}; use seconds > 0")
        if concurrency is None:
            concurrency = TYPE_CONCURRENCY.get(name, DEFAULT_TYPE_CONCURRENCY)
        if not _is_int(concurrency) or concurrency < 1:
            raise ConfigError(f"concurrency={concurrency!r} for job type {name!r}; use an integer >= 1")
        if priority is None:
            priority = TYPE_PRIORITY.get(name, DEFAULT_TYPE_PRIORITY)
        _check_priority(priority, f"priority for job type {name!r}")
        if name in self.job_types:
            raise ConfigError(f"job type {name!r} is registered twice")

        def register(handler: Handler) -> Handler:
            if not callable(handler):
                raise ConfigError(f"the handler of job type {name!r} is not callable: {handler!r}")
            self.job_types[name] = JobType(
                name=name,
                handler=handler,
                memory=memory,
                cpu=cpu,
                max_retries=max_retries,
                timeout=float(timeout),
                concurrency=concurrency,
                priority=priority,
                services=tuple(services),
            )
            return handler

        return register

    # Producers

    def enqueue(
        self,
        job_type: str,
        data: Any,
        *,
        user_id: str | int | None = None,
        user_type: str | None = None,
        priority: int | None = None,
        delay: float | dt.timedelta | None = None,
    ) -> int:
        """Store one job and return its id. ``delay`` is in seconds."""
        job = self._build_job(job_type, data, user_id, user_type, priority, delay, where="")
        with self._lock:
            return self._store().enqueue(job)

    def enqueue_many(self, rows: Iterable[Mapping[str, Any]]) -> list[int]:
        """Store many jobs in one statement and return their ids in order.

        Each row has ``job_type`` and ``data``, and optionally ``user_id``, ``user_type``,
        ``priority`` and ``delay``. Every row is validated first; if any is invalid, the
        error names the row and nothing is stored.
        """
        with self._lock:
            return self._store().enqueue_many(self._build_jobs(rows))

    def _build_jobs(self, rows: Iterable[Mapping[str, Any]]) -> Iterator[NewJob]:
        """Validate ``rows`` one by one; raise InvalidJobError naming the first bad row."""
        for index, row in enumerate(rows):
            if not isinstance(row, Mapping):
                raise InvalidJobError(
                    f"row {index}: expected a dict with job_type and data, got {type(row).__name__}"
                )
            if not row.keys() <= ROW_KEYS:
                unknown = sorted(set(row) - ROW_KEYS)
                raise InvalidJobError(
                    f"row {index}: unknown keys {unknown}; allowed keys are {sorted(ROW_KEYS)}"
                )
            for required in ("job_type", "data"):
                if required not in row:
                    raise InvalidJobError(f"row {index}: missing key {required!r}")
            yield self._build_job(
                row["job_type"],
                row["data"],
                row.get("user_id"),
                row.get("user_type"),
                row.get("priority"),
                row.get("delay"),
                where=f"row {index}: ",
            )

    def _build_job(
        self,
        job_type: Any,
        data: Any,
        user_id: Any,
        user_type: Any,
        priority: Any,
        delay: Any,
        *,
        where: str,
    ) -> NewJob:
        spec = self.job_types.get(job_type) if isinstance(job_type, str) else None
        if spec is None:
            known = ", ".join(sorted(self.job_types)) or "none"
            raise UnknownJobTypeError(
                f"{where}unknown job type {job_type!r}; registered types: {known}"
            )
        input_data = to_json(
            data,
            what=f"{where}input_data of the {job_type!r} job",
            max_bytes=self.settings.max_payload_bytes,
        )
        if isinstance(user_id, int) and not isinstance(user_id, bool):
            user_id = str(user_id)
        _check_text(user_id, f"{where}user_id")
        _check_text(user_type, f"{where}user_type")
        if priority is None:
            priority = spec.priority
        _check_priority(priority, f"{where}priority")
        return NewJob(
            type=job_type,
            input_data=input_data,
            user_id=user_id,
            user_type=user_type,
            priority=priority,
            max_retries=spec.max_retries,
            delay_s=_delay_seconds(delay, where),
        )

    # Running

    def run(self, **options: Any) -> int:
        """Run a supervisor for this app's job types in this process; return its exit code."""
        from jobvisor.supervisor import Supervisor

        return Supervisor(self, **options).run()


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)) and math.isfinite(value)


def _check_text(value: Any, what: str, *, allow_none: bool = True) -> None:
    if value is None and allow_none:
        return
    if not isinstance(value, str) or not value:
        raise InvalidJobError(f"{what} must be a non-empty string, got {value!r}")
    if "\x00" in value:
        raise InvalidJobError(f"{what} {value!r} contains a NUL character, which PostgreSQL cannot store")
    if len(value) > MAX_TEXT_LENGTH:
        raise InvalidJobError(f"{what} is {len(value)} characters long; the maximum is {MAX_TEXT_LENGTH}")


def _check_priority(value: Any, what: str) -> None:
    if not _is_int(value) or not PRIORITY_MIN <= value <= PRIORITY_MAX:
        raise InvalidJobError(
            f"{what} {value!r} is out of range; use an integer from {PRIORITY_MIN} to {PRIORITY_MAX}"
        )


def _delay_seconds(delay: Any, where: str) -> float:
    if delay is None:
        return 0.0
    if isinstance(delay, dt.timedelta):
        seconds = delay.total_seconds()
    elif _is_number(delay):
        seconds = float(delay)
    else:
        raise InvalidJobError(f"{where}delay {delay!r} is not a number of seconds or a timedelta")
    if seconds < 0:
        raise InvalidJobError(f"{where}delay {delay!r} is negative; use 0 or more seconds")
    return seconds


def _forget_inherited_connections() -> None:
    for app in list(_apps):
        app._forget_inherited_connection()


os.register_at_fork(after_in_child=_forget_inherited_connections)
