"""The compared systems, each behind the QueueSystem interface of ``bench.systems.base``."""

from __future__ import annotations

from pathlib import Path

from bench.systems.base import Drain, QueueSystem

SYSTEMS = ("floor", "jobvisor", "pgqueuer-asyncpg", "pgqueuer-psycopg", "procrastinate")


def make_system(name: str, dsn: str, workdir: Path) -> QueueSystem:
    """Return the system called ``name`` on the scratch database ``dsn``."""
    if name == "floor":
        from bench.systems.floor import FloorSystem

        return FloorSystem(dsn, workdir)
    if name == "jobvisor":
        from bench.systems.jobvisor_system import JobvisorSystem

        return JobvisorSystem(dsn, workdir)
    if name in ("pgqueuer-asyncpg", "pgqueuer-psycopg"):
        from bench.systems.pgqueuer_system import PgQueuerSystem

        return PgQueuerSystem(dsn, workdir, driver=name.split("-", 1)[1])
    if name == "procrastinate":
        from bench.systems.procrastinate_system import ProcrastinateSystem

        return ProcrastinateSystem(dsn, workdir)
    raise ValueError(f"unknown system {name!r}; choose one of {', '.join(SYSTEMS)}")


__all__ = ["SYSTEMS", "Drain", "QueueSystem", "make_system"]
