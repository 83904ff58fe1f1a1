"""Protection of the external services that job handlers call: circuit breakers."""

from __future__ import annotations

from jobvisor.resilience.breakers import (
    BUILTIN_CONFIGS,
    CONFIG_KEYS,
    DEFAULT_SERVICE,
    BreakerConfig,
    BreakerOpenError,
    BreakerRegistry,
    BreakerStatus,
    BreakerStore,
    CircuitBreaker,
    LocalBreakerStore,
    SharedMemoryBreakerStore,
    breaker_configs,
)

__all__ = [
    "BUILTIN_CONFIGS",
    "CONFIG_KEYS",
    "DEFAULT_SERVICE",
    "BreakerConfig",
    "BreakerOpenError",
    "BreakerRegistry",
    "BreakerStatus",
    "BreakerStore",
    "CircuitBreaker",
    "LocalBreakerStore",
    "SharedMemoryBreakerStore",
    "breaker_configs",
]
