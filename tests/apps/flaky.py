"""Job types ``ai`` and ``ai-fragile`` (one retry) that call "openai" through ``ctx.http``.

The service is a local test server at ``$FLAKY_URL``. The breaker of "openai" resets after
3 s here, so that tests need not wait the default 120 s.
"""

from __future__ import annotations

import os
from typing import Any

from apps.recording import run_supervisor
from jobvisor import App, JobContext
from jobvisor.net.http import RetryPolicy

BREAKERS = {"openai": {"reset_timeout_s": 3.0, "half_open_timeout_s": 10.0}}


def register(app: App) -> App:
    @app.job("ai", services=["openai"], concurrency=2, max_retries=5, timeout=60)
    def ai(ctx: JobContext, data: Any) -> Any:
        client = ctx.http(
            "openai", base_url=os.environ["FLAKY_URL"], api_key="test-key",
            retries=RetryPolicy(total=0),
        )  # fmt: skip
        return client.get(f"/complete?job={ctx.job_id}").json()

    @app.job("ai-fragile", services=["openai"], concurrency=2, max_retries=1, timeout=60)
    def ai_fragile(ctx: JobContext, data: Any) -> Any:
        return ai(ctx, data)

    return app


app = register(App(breakers=BREAKERS))

if __name__ == "__main__":
    raise SystemExit(run_supervisor(app))
