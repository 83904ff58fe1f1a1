"""Two job types: ``crasher``, whose handler ends its worker process with exit code 1, and
``healthy``, whose handler only records that it ran.

``crasher`` allows 10 retries, more than the crashes that pause a job type, so that the
pause, not the retry limit, stops its restarts.
"""

from __future__ import annotations

import os
from typing import Any

from apps.recording import record_run, record_start, run_supervisor
from jobvisor import App, JobContext


def register(app: App) -> App:
    @app.job("crasher", concurrency=1, max_retries=10)
    def crasher(ctx: JobContext, data: Any) -> None:
        record_start(ctx.job_id)
        os._exit(1)

    @app.job("healthy", concurrency=1, max_retries=3)
    def healthy(ctx: JobContext, data: Any) -> dict[str, int]:
        record_run(ctx.job_id)
        return {"job": ctx.job_id}

    return app


app = register(App())

if __name__ == "__main__":
    raise SystemExit(run_supervisor(app))
