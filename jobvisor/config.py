"""Settings: profiles, environment overrides and per-job-type defaults.

A value comes from, in rising precedence: the built-in default, the profile
(``--profile`` or ``JOBVISOR_PROFILE``), the environment variables below, then keyword
arguments given in code or on the command line.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobvisor.errors import ConfigError

# Memory (MB) and CPU (% of one core) reserved for one running job, by requirement level.
MEMORY_LEVELS_MB = {"low": 50, "medium": 100, "high": 200}
CPU_LEVELS_PERCENT = {"low": 10, "medium": 20, "high": 30}

# Concurrency limit per job type; a type not listed here gets DEFAULT_TYPE_CONCURRENCY.
TYPE_CONCURRENCY = {
    "storybook": 2,
    "auto-story": 2,
    "scenes": 3,
    "cartoonize": 5,
    "image-generation": 5,
}
DEFAULT_TYPE_CONCURRENCY = 1

# Base priority per job type; a type not listed here gets DEFAULT_TYPE_PRIORITY.
TYPE_PRIORITY = {
    "auto-story": 3,
    "storybook": 2,
    "scenes": 2,
    "cartoonize": 1,
    "image-generation": 1,
}
DEFAULT_TYPE_PRIORITY = 0
PRIORITY_MIN = -10
PRIORITY_MAX = 10

# Deployment profiles: MAX_CONCURRENT_JOBS, MAX_JOBS_PER_USER, JOB_PROCESSING_INTERVAL (ms).
PROFILES: dict[str, dict[str, int]] = {
    "development": {"max_concurrent_jobs": 2, "max_jobs_per_user": 3, "poll_interval_ms": 10_000},
    "staging": {"max_concurrent_jobs": 3, "max_jobs_per_user": 5, "poll_interval_ms": 15_000},
    "production-small": {"max_concurrent_jobs": 5, "max_jobs_per_user": 5, "poll_interval_ms": 20_000},
    "production-medium": {"max_concurrent_jobs": 10, "max_jobs_per_user": 10, "poll_interval_ms": 15_000},
    "production-large": {"max_concurrent_jobs": 20, "max_jobs_per_user": 15, "poll_interval_ms": 10_000},
}

# Environment variable -> (settings field, parser). JOB_PROCESSING_INTERVAL is in milliseconds.
ENVIRONMENT = {
    "MAX_CONCURRENT_JOBS": "max_concurrent_jobs",
    "MAX_JOBS_PER_USER": "max_jobs_per_user",
    "JOB_PROCESSING_INTERVAL": "poll_interval_ms",
    "JOB_MEMORY_LIMIT": "job_memory_limit_mb",
    "JOB_CPU_LIMIT": "job_cpu_limit_percent",
    "JOBVISOR_LEASE_SECONDS": "lease_seconds",
    "JOBVISOR_DRAIN_TIMEOUT": "drain_timeout_s",
    "JOBVISOR_MAX_PAYLOAD_BYTES": "max_payload_bytes",
    "JOBVISOR_SNAPSHOT_INTERVAL": "snapshot_interval_s",
    "JOBVISOR_SAMPLE_INTERVAL": "sample_interval_s",
    "JOBVISOR_ADAPTIVE_CONCURRENCY": "adaptive_concurrency",
    "JOBVISOR_CONCURRENCY_CEILING": "concurrency_ceiling",
    "JOBVISOR_CONCURRENCY_COOLDOWN": "concurrency_cooldown_s",
    "JOBVISOR_MEMORY_HARD_FACTOR": "memory_hard_factor",
    "JOBVISOR_MAX_JOBS_PER_WORKER": "max_jobs_per_worker",
    "JOBVISOR_CPU_THROTTLE": "cpu_throttle",
    "JOBVISOR_MAX_CONNECTIONS": "max_connections",
}


@dataclass(frozen=True)
class Settings:
    """Node-wide settings of a supervisor and its workers."""

    profile: str | None = None
    # Jobs running at once on this node, over all job types.
    max_concurrent_jobs: int = 3
    # Jobs of one user running at once.
    max_jobs_per_user: int = 5
    # Fallback poll interval of idle workers (ms); NOTIFY wakes them sooner.
    poll_interval_ms: int = 10_000
    # Memory budget of all running jobs (MB) and CPU budget (% of the machine).
    job_memory_limit_mb: int = 512
    job_cpu_limit_percent: int = 80
    # A claimed job belongs to its worker until the lease expires; the supervisor renews the
    # leases of its live children every lease_seconds / 3.
    lease_seconds: float = 60.0
    # On SIGTERM, running jobs get this long to finish before they are requeued.
    drain_timeout_s: float = 30.0
    # A handler past its timeout gets SIGALRM in its worker; this much later the supervisor
    # kills the worker.
    hard_timeout_grace_s: float = 10.0
    # Restart policy: backoff doubles from restart_backoff_s up to restart_backoff_max_s; more
    # than crash_loop_restarts crashes within crash_loop_window_s pause the type for
    # crash_pause_s.
    restart_backoff_s: float = 0.5
    restart_backoff_max_s: float = 30.0
    crash_loop_restarts: int = 5
    crash_loop_window_s: float = 60.0
    crash_pause_s: float = 300.0
    # Jobs a worker takes per claim double while jobs are short (below short_job_s each), up
    # to claim_batch_max and to what the worker runs in about claim_batch_s. They fall back
    # to one when jobs are not short. Claimed jobs wait in the worker, so claim_batch_s
    # bounds how long a job that arrives later waits for a busy worker.
    claim_batch_max: int = 500
    short_job_s: float = 0.05
    claim_batch_s: float = 0.5
    # Retry backoff of a failed job: retry_base_delay_s * 2**retry_count, capped, with jitter.
    retry_base_delay_s: float = 1.0
    retry_max_delay_s: float = 300.0
    # Largest serialized input_data accepted by enqueue (bytes).
    max_payload_bytes: int = 1_048_576
    # Seconds between expired-lease sweeps.
    lease_sweep_interval_s: float = 5.0
    # Seconds between telemetry snapshot files.
    snapshot_interval_s: float = 5.0
    # Seconds between samples of the node: CPU, memory, queue depth, workers' memory and CPU.
    sample_interval_s: float = 1.0
    # Let the concurrency manager move the node's limit from its measurements. When off, the
    # limit stays max_concurrent_jobs.
    adaptive_concurrency: bool = True
    # Highest limit the manager may set; 0 means 4 workers per CPU, and never below
    # max_concurrent_jobs.
    concurrency_ceiling: int = 0
    # The concurrency manager changes the limit at most once per this many seconds.
    concurrency_cooldown_s: float = 15.0
    # A worker whose private memory exceeds its job type's budget is recycled after its job,
    # and killed at once above memory_hard_factor times the budget.
    memory_hard_factor: float = 2.0
    # Hold each running job to its type's CPU budget: cgroup cpu.max where the machine
    # delegates the cpu controller, otherwise by pausing the worker with SIGSTOP/SIGCONT.
    cpu_throttle: bool = True
    # Database connections that a node opens at most: one for the supervisor and one per
    # worker, so it runs at most max_connections - 1 workers. 0 means no cap.
    max_connections: int = 0
    # A worker exits and is replaced after this many jobs, so slow leaks cannot build up.
    max_jobs_per_worker: int = 1000

    def __post_init__(self) -> None:
        for item in dataclasses.fields(self):
            if item.name == "profile":
                continue
            if isinstance(item.default, bool):
                if not isinstance(getattr(self, item.name), bool):
                    raise ConfigError(f"{item.name}={getattr(self, item.name)!r} is not true or false")
                continue
            _check_number(
                item.name, getattr(self, item.name), type(item.default),
                allow_zero=item.name in ZERO_ALLOWED,
            )
        if self.max_connections == 1:
            raise ConfigError(
                "max_connections=1 leaves no connection for a worker besides the supervisor's; "
                "use 2 or more, or 0 for no cap"
            )
        if self.memory_hard_factor < 1:
            raise ConfigError(
                f"memory_hard_factor={self.memory_hard_factor!r} is below 1; the hard limit must "
                "be at least the budget"
            )
        if self.profile is not None and self.profile not in PROFILES:
            raise ConfigError(
                f"unknown profile {self.profile!r}; choose one of {', '.join(PROFILES)}"
            )
        if self.job_cpu_limit_percent > 100:
            raise ConfigError(
                f"setting job_cpu_limit_percent is {self.job_cpu_limit_percent}, over 100 % of the machine"
            )

    @property
    def poll_interval_s(self) -> float:
        return self.poll_interval_ms / 1000.0

    def ceiling_for(self, cpu_count: int) -> int:
        """Return the highest concurrency limit for a machine with ``cpu_count`` CPUs."""
        ceiling = self.concurrency_ceiling or 4 * cpu_count
        return max(ceiling, self.max_concurrent_jobs)

    @classmethod
    def load(
        cls,
        profile: str | None = None,
        environ: Mapping[str, str] | None = None,
        **overrides: Any,
    ) -> Settings:
        """Build settings from the profile, the environment and explicit overrides."""
        environ = os.environ if environ is None else environ
        profile = profile or environ.get("JOBVISOR_PROFILE") or None
        values: dict[str, Any] = {}
        if profile is not None:
            if profile not in PROFILES:
                raise ConfigError(
                    f"unknown profile {profile!r}; choose one of {', '.join(PROFILES)}"
                )
            values.update(PROFILES[profile])
        for variable, name in ENVIRONMENT.items():
            raw = environ.get(variable)
            if raw is None or raw.strip() == "":
                continue
            kind = _field_type(name)
            if kind is bool:
                values[name] = _parse_bool(variable, raw)
                continue
            value = _parse_number(variable, raw, kind)
            _check_number(
                f"environment variable {variable}", value, kind, raw=raw,
                allow_zero=name in ZERO_ALLOWED,
            )
            values[name] = value
        known = {item.name for item in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(f"unknown settings {unknown}; known settings: {sorted(known)}")
        values.update({key: value for key, value in overrides.items() if value is not None})
        return cls(profile=profile, **values)

    def replace(self, **changes: Any) -> Settings:
        return dataclasses.replace(self, **changes)


# Settings where 0 has a meaning of its own (see the field's comment).
ZERO_ALLOWED = frozenset({"concurrency_ceiling", "max_connections"})


def _check_number(
    name: str, value: Any, kind: type, *, raw: str | None = None, allow_zero: bool = False
) -> None:
    """Raise ConfigError unless ``value`` is a finite number of the setting's kind above 0
    (or equal to 0, with ``allow_zero``)."""
    shown = repr(raw) if raw is not None else repr(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={shown} is not a number")
    if kind is int and not isinstance(value, int):
        raise ConfigError(f"{name}={shown} is not an integer")
    if not math.isfinite(value):
        raise ConfigError(f"{name}={shown} is not a finite number")
    if allow_zero and value < 0:
        raise ConfigError(f"{name}={shown} must be 0 or greater")
    if not allow_zero and value <= 0:
        raise ConfigError(f"{name}={shown} must be greater than 0")


def _field_type(name: str) -> type:
    default = next(f.default for f in dataclasses.fields(Settings) if f.name == name)
    return type(default)


def _parse_bool(variable: str, raw: str) -> bool:
    text = raw.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"environment variable {variable}={raw!r} is not one of 1, 0, true, false")


def _parse_number(variable: str, raw: str, kind: type) -> int | float:
    try:
        return kind(raw.strip())
    except ValueError:
        expected = "an integer" if kind is int else "a number"
        raise ConfigError(f"environment variable {variable}={raw!r} is not {expected}") from None


@dataclass(frozen=True)
class JobType:
    """A registered job type: its handler and how its jobs are run."""

    name: str
    handler: Any
    # A level of MEMORY_LEVELS_MB / CPU_LEVELS_PERCENT, or MB and % of one core.
    memory: str | int = "low"
    cpu: str | int = "low"
    max_retries: int = 3
    timeout: float = 600.0
    concurrency: int = DEFAULT_TYPE_CONCURRENCY
    priority: int = DEFAULT_TYPE_PRIORITY
    services: tuple[str, ...] = field(default_factory=tuple)

    @property
    def memory_mb(self) -> int:
        """Private memory budget of one running job, in MB."""
        return self.memory if isinstance(self.memory, int) else MEMORY_LEVELS_MB[self.memory]

    @property
    def cpu_percent(self) -> int:
        """CPU budget of one running job, in % of one core."""
        return self.cpu if isinstance(self.cpu, int) else CPU_LEVELS_PERCENT[self.cpu]
