"""A Procrastinate worker process, and the App that both it and the producer use.

Run: ``python -m bench.workers.procrastinate_worker --dsn DSN --concurrency C --name NAME``.
"""

from __future__ import annotations

import argparse
import logging

from procrastinate import App, PsycopgConnector
from psycopg.conninfo import make_conninfo

from bench.stamps import record_start

QUEUE = "bench"


def make_app(dsn: str, *, application_name: str, pool_size: int) -> App:
    """Return a Procrastinate App with the ``noop`` and ``stamp`` tasks on ``dsn``.

    ``pool_size`` is the number of connections of the psycopg pool, which the listener and
    every concurrent job share.
    """
    connector = PsycopgConnector(
        conninfo=make_conninfo(dsn, application_name=application_name),
        min_size=pool_size,
        max_size=pool_size,
    )
    app = App(connector=connector)

    @app.task(name="noop", queue=QUEUE)
    async def noop() -> None:
        """Do nothing: the job measures the queue, not the work."""

    @app.task(name="stamp", queue=QUEUE)
    async def stamp(seq: int) -> None:
        """Record when the handler started, for the enqueue-to-start latency."""
        record_start(seq)

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one Procrastinate worker for the bench.")
    parser.add_argument("--dsn", required=True, help="database of the run")
    parser.add_argument("--name", required=True, help="worker name and application_name")
    parser.add_argument("--concurrency", type=int, required=True,
                        help="jobs this process runs at once (asyncio sub-workers)")
    parser.add_argument("--pool-size", type=int, required=True,
                        help="connections in this process's pool")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    app = make_app(args.dsn, application_name=args.name, pool_size=args.pool_size)
    app.run_worker(
        queues=[QUEUE],
        name=args.name,
        concurrency=args.concurrency,
        delete_jobs="never",
        listen_notify=True,
    )


if __name__ == "__main__":
    main()
