"""One job type, ``stuck``, whose handler blocks SIGALRM and sleeps for a minute.

With SIGALRM blocked the worker's soft timeout never fires, so only the supervisor's hard
timeout (job timeout 1 s plus ``hard_timeout_grace_s`` 1 s) can end the job.
"""

from __future__ import annotations

import signal
import time
from typing import Any

from apps.recording import record_start, run_supervisor
from jobvisor import App, JobContext, Settings


def register(app: App) -> App:
    @app.job("stuck", concurrency=1, max_retries=1, timeout=1)
    def stuck(ctx: JobContext, data: Any) -> None:
        record_start(ctx.job_id)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGALRM})
        time.sleep(60)

    return app


app = register(App(settings=Settings.load(hard_timeout_grace_s=1)))

if __name__ == "__main__":
    raise SystemExit(run_supervisor(app))
