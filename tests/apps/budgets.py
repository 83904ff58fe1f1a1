"""Job types that break their budgets, and one that behaves.

- ``memory-hog`` (budget 100 MB) allocates ``{"mb": N}`` MB, touches every page, then
  sleeps ``{"seconds": S}``.
- ``spinner`` (budget 20 % of one core) keeps one core busy for ``{"seconds": S}``.
- ``burst`` (budget 20 % of one core) uses ``{"cpu_seconds": S}`` of CPU time and ends.
- ``steady`` (the low budgets) sleeps ``{"seconds": S}``.

Each handler records its start and finish in ``handler_runs``.
"""

from __future__ import annotations

import time
from typing import Any

from apps.recording import record_finish, record_start, run_supervisor, sleep_in_steps
from jobvisor import App, JobContext

PAGE = 4096


def register(app: App) -> App:
    @app.job("memory-hog", memory="medium", concurrency=1, max_retries=1, timeout=60)
    def memory_hog(ctx: JobContext, data: Any) -> dict[str, int]:
        record_start(ctx.job_id)
        block = bytearray(int(data["mb"]) * 1024 * 1024)
        for offset in range(0, len(block), PAGE):
            block[offset] = 1
        sleep_in_steps(float(data["seconds"]))
        record_finish(ctx.job_id)
        return {"allocated_mb": len(block) // (1024 * 1024)}

    @app.job("spinner", cpu="medium", concurrency=1, max_retries=0, timeout=120)
    def spinner(ctx: JobContext, data: Any) -> dict[str, int]:
        record_start(ctx.job_id)
        deadline = time.monotonic() + float(data["seconds"])
        loops = 0
        while time.monotonic() < deadline:
            loops += 1
        record_finish(ctx.job_id)
        return {"loops": loops}

    @app.job("burst", cpu="medium", concurrency=1, max_retries=0, timeout=120)
    def burst(ctx: JobContext, data: Any) -> dict[str, float]:
        record_start(ctx.job_id)
        started = time.process_time()
        while time.process_time() - started < float(data["cpu_seconds"]):
            pass
        record_finish(ctx.job_id)
        return {"cpu_seconds": time.process_time() - started}

    @app.job("steady", concurrency=2, max_retries=0, timeout=60)
    def steady(ctx: JobContext, data: Any) -> dict[str, float]:
        record_start(ctx.job_id)
        sleep_in_steps(float(data["seconds"]))
        record_finish(ctx.job_id)
        return {"slept": float(data["seconds"])}

    return app


app = register(App())

if __name__ == "__main__":
    raise SystemExit(run_supervisor(app))
