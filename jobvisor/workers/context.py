"""The job context, passed to every handler beside its input data."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from jobvisor.errors import InvalidJobError

if TYPE_CHECKING:
    from jobvisor.net.http import HttpClient
    from jobvisor.resilience.breakers import BreakerRegistry, CircuitBreaker


class JobContext:
    """The running job, from its handler's side.

    ``attempt`` counts from 1; a job retried twice runs its third attempt.
    """

    def __init__(
        self,
        *,
        job_id: int,
        job_type: str,
        attempt: int,
        user_id: str | None,
        user_type: str | None,
        report: Callable[[int, str | None], None],
        breakers: BreakerRegistry | None = None,
    ) -> None:
        self.job_id = job_id
        self.job_type = job_type
        self.attempt = attempt
        self.user_id = user_id
        self.user_type = user_type
        self._logger: logging.LoggerAdapter[logging.Logger] | None = None
        self._report = report
        self._breakers = breakers
        self.last_progress = 0

    @property
    def logger(self) -> logging.LoggerAdapter[logging.Logger]:
        """Logger ``jobvisor.jobs.<job type>`` with the job's id, type and attempt as extra."""
        if self._logger is None:
            self._logger = logging.LoggerAdapter(
                logging.getLogger(f"jobvisor.jobs.{self.job_type}"),
                {"job_id": self.job_id, "job_type": self.job_type, "attempt": self.attempt},
            )
        return self._logger

    def breaker(self, service: str) -> CircuitBreaker:
        """Return the node's circuit breaker of ``service``, shared by all its workers."""
        if self._breakers is None:
            from jobvisor.resilience.breakers import BreakerRegistry

            self._breakers = BreakerRegistry(None)
        return self._breakers.get(service)

    def http(self, service: str = "general", **options: Any) -> HttpClient:
        """Return this process's HTTP client for ``service``, counted by its breaker.

        ``options`` are HttpClient arguments such as ``base_url`` and ``headers``; the first
        call in a process fixes them (see ``jobvisor.net.http.http_client``).
        """
        from jobvisor.net.http import http_client

        return http_client(service, breaker=self.breaker(service), **options)

    def progress(self, percent: int | float, step: str | None = None) -> None:
        """Store the job's progress (0 to 100) and, optionally, the step it is in."""
        if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
            raise InvalidJobError(f"progress {percent!r} is out of range; use a number from 0 to 100")
        if step is not None and (not isinstance(step, str) or "\x00" in step):
            raise InvalidJobError(f"step {step!r} must be a string without NUL characters")
        self.last_progress = int(percent)
        self._report(int(percent), step)
