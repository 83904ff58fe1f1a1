"""Opening connections, and keeping them safe across ``fork()``.

A forked child shares the parent's sockets. If the child closed an inherited connection,
libpq would send the server a Terminate message on the parent's socket and end the parent's
session. After a fork, the child therefore points every inherited connection's socket at
/dev/null and keeps the connection objects alive until it exits, so that nothing it does can
reach the parent's sessions.
"""

from __future__ import annotations

import logging
import os
import weakref
from typing import Any

import orjson
import psycopg
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row
from psycopg.types.json import set_json_loads

from jobvisor.db.dsn import redact
from jobvisor.errors import DatabaseUnavailableError

logger = logging.getLogger(__name__)

_open_connections: weakref.WeakSet[psycopg.Connection[Any]] = weakref.WeakSet()
_inherited: list[psycopg.Connection[Any]] = []


# libpq settings that notice a peer that vanished without closing the TCP connection (a
# crashed host, a dropped NAT entry): probes after 30 s idle, every 10 s, 3 misses, and a
# write that stays unacknowledged for 30 s. A DSN that sets any of them keeps its own value.
# libpq ignores them for Unix-domain sockets.
TCP_DEFAULTS = {
    "keepalives": 1,
    "keepalives_idle": 30,
    "keepalives_interval": 10,
    "keepalives_count": 3,
    "tcp_user_timeout": 30_000,
}


def connect(dsn: str, *, application_name: str = "jobvisor", **kwargs: Any) -> psycopg.Connection[Any]:
    """Open an autocommit connection that returns rows as dicts."""
    given = conninfo_to_dict(dsn)
    options = {key: value for key, value in TCP_DEFAULTS.items() if key not in given}
    try:
        conn = psycopg.connect(
            dsn,
            autocommit=True,
            row_factory=dict_row,
            application_name=application_name,
            connect_timeout=10,
            **{**options, **kwargs},
        )
    except psycopg.OperationalError as error:
        message = str(error).strip().replace("\n", " ")
        raise DatabaseUnavailableError(f"cannot connect to PostgreSQL at {redact(dsn)}: {message}") from error
    # orjson parses jsonb columns (input data, results) several times faster than json.
    set_json_loads(orjson.loads, conn)
    _open_connections.add(conn)
    return conn


def _detach_inherited_connections() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        for conn in list(_open_connections):
            if conn.closed:
                continue
            try:
                os.dup2(devnull, conn.fileno())
            except (OSError, psycopg.Error):
                continue
            _inherited.append(conn)
    finally:
        os.close(devnull)
    _open_connections.clear()


os.register_at_fork(after_in_child=_detach_inherited_connections)
