"""jobvisor applications that the bench runs with ``jobvisor run --app bench.apps:ATTR``.

``BENCH_CONCURRENCY`` sets the per-type concurrency of ``noop`` and ``stamp`` (default 4).
Budgets: 200 MB and 10 % of one core per running noop or stamp job, and 100 MB and 5 % per
sleep job, so 16 sleeping workers fit in ``JOB_MEMORY_LIMIT=4096`` and the default CPU limit.
"""

from __future__ import annotations

import os
import time
from typing import Any

from bench.stamps import record_start
from jobvisor import App, JobContext

CONCURRENCY = int(os.environ.get("BENCH_CONCURRENCY", "4"))
SLEEP_CONCURRENCY = 16


def register_noop(app: App) -> App:
    @app.job("noop", concurrency=CONCURRENCY, memory=200, cpu=10, max_retries=0)
    def noop(ctx: JobContext, data: Any) -> None:
        """Do nothing: the job measures the queue, not the work."""

    return app


def register_stamp(app: App) -> App:
    @app.job("stamp", concurrency=CONCURRENCY, memory=200, cpu=10, max_retries=0)
    def stamp(ctx: JobContext, data: Any) -> None:
        """Record when the handler started, for the enqueue-to-start latency."""
        record_start(int(data["seq"]))

    return app


def register_sleep(app: App) -> App:
    @app.job("sleep", concurrency=SLEEP_CONCURRENCY, memory=100, cpu=5, max_retries=0,
             timeout=3600)
    def sleep(ctx: JobContext, data: Any) -> None:
        """Sleep ``data["seconds"]`` without using CPU, to keep a worker busy."""
        time.sleep(float(data["seconds"]))

    return app


def producer_app(dsn: str) -> App:
    """Return an App on ``dsn`` that can enqueue every job type above."""
    from jobvisor import Settings

    app = App(dsn, settings=Settings.load(environ={}))
    return register_sleep(register_stamp(register_noop(app)))


noop_app = register_noop(App())
stamp_app = register_stamp(App())
sleep_app = register_sleep(App())
