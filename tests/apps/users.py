"""Job types for running-limit checks; each handler records its start and finish.

- ``user-job`` (type limit 8) sleeps ``{"seconds": S}``; the tests give jobs user ids.
- ``narrow`` (type limit 2) sleeps ``{"seconds": S}``.
"""

from __future__ import annotations

from typing import Any

from apps.recording import record_finish, record_start, run_supervisor, sleep_in_steps
from jobvisor import App, JobContext


def register(app: App) -> App:
    @app.job("user-job", concurrency=8, max_retries=0, timeout=60)
    def user_job(ctx: JobContext, data: Any) -> None:
        record_start(ctx.job_id)
        sleep_in_steps(float(data["seconds"]), step=0.01)
        record_finish(ctx.job_id)

    @app.job("narrow", concurrency=2, max_retries=0, timeout=60)
    def narrow(ctx: JobContext, data: Any) -> None:
        record_start(ctx.job_id)
        sleep_in_steps(float(data["seconds"]), step=0.01)
        record_finish(ctx.job_id)

    return app


app = register(App())

if __name__ == "__main__":
    raise SystemExit(run_supervisor(app))
