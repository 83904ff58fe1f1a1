"""One job type, ``nap``, that sleeps ``{"seconds": S}`` and touches no database itself.

Outage tests use it because a handler that wrote to the stopped server would fail on its
own, and the tests check what jobvisor does, not what the handler does.
"""

from __future__ import annotations

from typing import Any

from apps.recording import run_supervisor, sleep_in_steps
from jobvisor import App, JobContext


def register(app: App) -> App:
    @app.job("nap", concurrency=4, max_retries=5, timeout=60)
    def nap(ctx: JobContext, data: Any) -> dict[str, float]:
        sleep_in_steps(float(data["seconds"]))
        return {"slept": float(data["seconds"])}

    return app


app = register(App())

if __name__ == "__main__":
    raise SystemExit(run_supervisor(app))
