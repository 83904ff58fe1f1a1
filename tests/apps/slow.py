"""One job type, ``slow``, whose handler records its start, sleeps, then records its finish.

The input is ``{"seconds": N}``.
"""

from __future__ import annotations

from typing import Any

from apps.recording import record_finish, record_start, run_supervisor, sleep_in_steps
from jobvisor import App, JobContext


def register(app: App) -> App:
    @app.job("slow", concurrency=4, max_retries=3, timeout=120)
    def slow(ctx: JobContext, data: Any) -> dict[str, float]:
        record_start(ctx.job_id)
        sleep_in_steps(float(data["seconds"]))
        record_finish(ctx.job_id)
        return {"slept": float(data["seconds"])}

    return app


app = register(App())

if __name__ == "__main__":
    raise SystemExit(run_supervisor(app))
