"""The worker side: the claim loop that runs handlers, and the context handlers receive."""

from jobvisor.workers.context import JobContext
from jobvisor.workers.worker import Worker

__all__ = ["JobContext", "Worker"]
