"""When to restart crashed workers of a job type, and when to give up for a while."""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)


@dataclass
class RestartPolicy:
    """Exponential restart backoff per job type, and a pause after a crash loop.

    A type whose workers crash more than ``max_crashes`` times within ``window_s`` seconds
    gets no new workers for ``pause_s`` seconds.
    """

    job_type: str
    backoff_s: float
    backoff_max_s: float
    max_crashes: int
    window_s: float
    pause_s: float
    consecutive: int = 0
    crashes: deque[float] = field(default_factory=deque)
    not_before: float = 0.0
    paused_until: float = 0.0

    def record_crash(self, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        self.consecutive += 1
        self.crashes.append(now)
        while self.crashes and self.crashes[0] < now - self.window_s:
            self.crashes.popleft()
        delay = min(self.backoff_max_s, self.backoff_s * 2 ** (self.consecutive - 1))
        self.not_before = now + delay
        if len(self.crashes) > self.max_crashes:
            self.paused_until = now + self.pause_s
            self.crashes.clear()
            logger.error(
                "job type %s paused for %.0f s: its workers crashed more than %d times in %.0f s",
                self.job_type, self.pause_s, self.max_crashes, self.window_s,
            )
        else:
            logger.warning("workers of %s crashed %d times in a row; next start in %.1f s", self.job_type, self.consecutive, delay)

    def record_clean_exit(self) -> None:
        self.consecutive = 0

    def may_start(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now >= self.not_before and now >= self.paused_until

    def paused(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        return now < self.paused_until
