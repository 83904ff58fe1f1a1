"""The server under test and the scratch databases that each measurement runs in."""

from __future__ import annotations

import contextlib
import logging
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from jobvisor.db.dsn import configured_dsn, redact
from jobvisor.db.embedded import ensure_embedded_server

logger = logging.getLogger(__name__)

SCRATCH_PREFIX = "bench_"


def server_dsn(explicit: str | None = None) -> str:
    """Return the DSN to benchmark against.

    The order is jobvisor's own: ``--dsn``, ``JOBVISOR_DSN``, ``DATABASE_URL``, then the
    embedded server under ``$JOBVISOR_HOME/pgdata``, started if it is not running.
    """
    return configured_dsn(explicit) or ensure_embedded_server()


def dsn_for(dsn: str, dbname: str, **params: Any) -> str:
    """Return ``dsn`` pointed at database ``dbname``, with extra libpq parameters."""
    return make_conninfo(dsn, dbname=dbname, **params)


def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """Open an autocommit connection that returns rows as dicts."""
    return psycopg.connect(dsn, autocommit=True, row_factory=dict_row, **kwargs)


def server_facts(dsn: str) -> dict[str, str]:
    """Return the server's version and the settings that shape write throughput."""
    names = ("server_version", "shared_buffers", "synchronous_commit", "fsync", "max_connections")
    facts = {}
    with connect(dsn) as conn:
        for name in names:
            row = conn.execute(sql.SQL("SHOW {}").format(sql.Identifier(name))).fetchone()
            facts[name] = str(row[name]) if row else "unknown"
    return facts


@contextlib.contextmanager
def scratch_database(dsn: str, system: str) -> Iterator[str]:
    """Create database ``bench_<system>_<random>``, yield its DSN, and drop it afterwards.

    The drop uses ``WITH (FORCE)``, so connections that a killed worker left open do not
    keep the database alive. It runs on every exit path, including errors and Ctrl-C.
    """
    name = f"{SCRATCH_PREFIX}{system.replace('-', '_')}_{secrets.token_hex(4)}"
    with connect(dsn) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    logger.info("created scratch database %s on %s", name, redact(dsn))
    try:
        yield dsn_for(dsn, name)
    finally:
        drop_database(dsn, name)


def drop_database(dsn: str, name: str) -> None:
    """Drop database ``name`` if it exists, closing its connections first."""
    with connect(dsn) as admin:
        admin.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )
    logger.info("dropped scratch database %s", name)


def leftover_scratch_databases(dsn: str) -> list[str]:
    """Return the names of scratch databases that still exist on the server."""
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT datname FROM pg_database WHERE datname LIKE %s ORDER BY datname",
            (SCRATCH_PREFIX + "%",),
        ).fetchall()
    return [row["datname"] for row in rows]


def application_names(dsn: str, prefix: str) -> list[str]:
    """Return ``application_name`` of every backend of this database that starts with ``prefix``."""
    with connect(dsn) as conn:
        rows = conn.execute(
            "SELECT application_name FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE %s",
            (prefix + "%",),
        ).fetchall()
    return [row["application_name"] for row in rows]
