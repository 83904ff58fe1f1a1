"""Sizes of every scenario, for the full run and for ``--quick``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any


@dataclass(frozen=True)
class Sizes:
    """How much each scenario does. Times are in seconds."""

    # throughput and floor: jobs per drain, worker processes, unmeasured and measured drains.
    # Procrastinate drains at most procrastinate_jobs: its rate falls as the backlog grows
    # (with W = 2 on 2 cores, about 100 jobs/s with 30,000 or more pending against about 410
    # with 5,000), so a 50,000-job drain took 8 minutes, and a smaller backlog favours it.
    throughput_jobs: int = 50_000
    procrastinate_jobs: int = 5_000
    workers: tuple[int, ...] = (2, 4)
    warmups: int = 1
    repetitions: int = 5
    # latency: single enqueues, the pause between two of them, and worker processes
    latency_jobs: int = 1_000
    latency_spacing_s: float = 0.02
    latency_workers: int = 2
    # depth: pending jobs of the small and the large backlog, finished rows kept, the number
    # of completions measured per repetition, and repetitions per case
    depth_small: int = 10_000
    depth_large: int = 1_000_000
    depth_finished: int = 1_000_000
    depth_window: int = 10_000
    depth_repetitions: int = 3
    depth_workers: int = 4
    # mixed: demo jobs, and the maximum wait for the supervisor to finish them
    mixed_jobs: int = 200
    mixed_timeout_s: float = 900.0
    # overhead: measuring window per telemetry setting, and sleeping children
    overhead_window_s: float = 60.0
    overhead_children: int = 16
    # enqueue: jobs per enqueue_many call, unmeasured and measured calls
    enqueue_jobs: int = 100_000
    enqueue_warmups: int = 1
    enqueue_repetitions: int = 5

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


FULL = Sizes()
QUICK = Sizes(
    throughput_jobs=5_000,
    warmups=0,
    repetitions=1,
    latency_jobs=100,
    depth_large=100_000,
    depth_finished=100_000,
    depth_repetitions=1,
    mixed_jobs=12,
    mixed_timeout_s=150.0,
    overhead_window_s=15.0,
    enqueue_jobs=10_000,
    enqueue_warmups=0,
    enqueue_repetitions=1,
)
