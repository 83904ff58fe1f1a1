"""Applying the numbered files in ``jobvisor/sql/migrations`` in order, once each.

All pending files run in one transaction, each with the row that records it in
``jobvisor_migrations``, so a failure applies none of them. A transaction-level advisory lock
serializes concurrent callers (two supervisors starting at once), and the caller that gets
the lock second finds the files already recorded and skips them.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from importlib import resources
from typing import Any, LiteralString, cast

import psycopg

logger = logging.getLogger(__name__)

_FILENAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
# Any fixed 64-bit key works; this one is "jobvisor" in ASCII.
_MIGRATION_LOCK_KEY = 0x6A6F62766973


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


def available_migrations() -> list[Migration]:
    folder = resources.files("jobvisor.sql").joinpath("migrations")
    found = []
    for entry in folder.iterdir():
        match = _FILENAME.match(entry.name)
        if match is None:
            continue
        found.append(Migration(int(match.group(1)), match.group(2), entry.read_text()))
    found.sort(key=lambda migration: migration.version)
    versions = [migration.version for migration in found]
    if versions != list(range(1, len(found) + 1)):
        raise RuntimeError(f"migration versions must run 1..N without gaps, found {versions}")
    return found


def applied_versions(conn: psycopg.Connection[Any]) -> set[int]:
    exists = conn.execute("SELECT to_regclass('jobvisor_migrations') IS NOT NULL AS present").fetchone()
    if not exists or not exists["present"]:
        return set()
    return {row["version"] for row in conn.execute("SELECT version FROM jobvisor_migrations")}


def migrate(conn: psycopg.Connection[Any]) -> list[Migration]:
    """Apply every migration that the database lacks; return the ones applied."""
    pending = [m for m in available_migrations() if m.version not in applied_versions(conn)]
    if not pending:
        return []

    applied = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK_KEY,))
        conn.execute(
            """
            CREATE TABLE IF NOT EXISTS jobvisor_migrations (
                version    integer PRIMARY KEY,
                name       text NOT NULL,
                applied_at timestamptz NOT NULL DEFAULT now()
            )
            """
        )
        # Another process may have applied some while this one waited for the lock.
        done = applied_versions(conn)
        for migration in pending:
            if migration.version in done:
                continue
            with conn.transaction():
                conn.execute(cast(LiteralString, migration.sql))
                conn.execute(
                    "INSERT INTO jobvisor_migrations (version, name) VALUES (%s, %s)",
                    (migration.version, migration.name),
                )
            logger.info("applied migration %04d_%s", migration.version, migration.name)
            applied.append(migration)
    return applied
