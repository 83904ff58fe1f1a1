"""A PgQueuer worker process, and the connection helpers that the producer shares.

Run: ``python -m bench.workers.pgqueuer_worker --dsn DSN --driver asyncpg --batch-size B
--name NAME``.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
from typing import Any

from pgqueuer import AsyncpgDriver, Job, PgQueuer, PsycopgDriver, Queries
from psycopg.conninfo import conninfo_to_dict

from bench.stamps import record_start

DRIVERS = ("asyncpg", "psycopg")


def asyncpg_parameters(dsn: str) -> dict[str, Any]:
    """Return asyncpg.connect keyword arguments for a libpq DSN (URI or key=value)."""
    params = conninfo_to_dict(dsn)
    mapping = {"host": "host", "port": "port", "user": "user", "password": "password",
               "dbname": "database"}
    result: dict[str, Any] = {}
    for libpq_name, asyncpg_name in mapping.items():
        if params.get(libpq_name):
            result[asyncpg_name] = params[libpq_name]
    if "port" in result:
        result["port"] = int(result["port"])
    return result


async def open_connection(dsn: str, driver: str, application_name: str) -> Any:
    """Open an autocommit connection of the given driver."""
    if driver == "asyncpg":
        import asyncpg

        return await asyncpg.connect(
            **asyncpg_parameters(dsn), server_settings={"application_name": application_name}
        )
    if driver == "psycopg":
        import psycopg

        return await psycopg.AsyncConnection.connect(
            dsn, autocommit=True, application_name=application_name
        )
    raise ValueError(f"unknown PgQueuer driver {driver!r}; use one of {', '.join(DRIVERS)}")


def wrap(connection: Any, driver: str) -> AsyncpgDriver | PsycopgDriver:
    """Return PgQueuer's driver object for a connection opened by open_connection."""
    if driver == "asyncpg":
        return AsyncpgDriver(connection)
    return PsycopgDriver(connection)


def queries_for(connection: Any, driver: str) -> Queries:
    return Queries(wrap(connection, driver))


async def run_worker(dsn: str, driver: str, name: str, batch_size: int) -> None:
    connection = await open_connection(dsn, driver, name)
    pgq = PgQueuer(wrap(connection, driver))

    @pgq.entrypoint("noop")
    async def noop(job: Job) -> None:
        """Do nothing: the job measures the queue, not the work."""

    @pgq.entrypoint("stamp")
    async def stamp(job: Job) -> None:
        """Record when the handler started, for the enqueue-to-start latency."""
        record_start(int(job.payload or b"0"))

    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, pgq.shutdown.set)
    await pgq.run(batch_size=batch_size)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run one PgQueuer worker for the bench.")
    parser.add_argument("--dsn", required=True, help="database of the run")
    parser.add_argument("--driver", choices=DRIVERS, required=True, help="database driver")
    parser.add_argument("--name", required=True, help="application_name of the connection")
    parser.add_argument("--batch-size", type=int, required=True, help="jobs per dequeue")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    asyncio.run(run_worker(args.dsn, args.driver, args.name, args.batch_size))


if __name__ == "__main__":
    main()
