"""One job type, ``noop``, whose handler only records that it ran."""

from __future__ import annotations

from typing import Any

from apps.recording import record_run, run_supervisor
from jobvisor import App, JobContext


def register(app: App) -> App:
    @app.job("noop", concurrency=4, max_retries=3)
    def noop(ctx: JobContext, data: Any) -> dict[str, int]:
        record_run(ctx.job_id)
        return {"job": ctx.job_id}

    return app


app = register(App())

if __name__ == "__main__":
    raise SystemExit(run_supervisor(app))
