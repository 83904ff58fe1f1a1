"""A running supervisor against a PostgreSQL that stops, kills sessions or refuses clients.

Every test here uses a server of its own (see ``apps.private_server``), never the shared
test server, because it stops that server or changes its roles.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from apps import outage
from apps.harness import SupervisorLauncher, launcher, wait_until
from apps.private_server import PrivateServer

from jobvisor import App, Settings

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

WORKER_DIED = re.compile(r"worker \S+ \(\S+\) died")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateServer]:
    private = PrivateServer(tmp_path_factory.mktemp("private"))
    try:
        yield private
    finally:
        private.remove()


@pytest.fixture
def database(server: PrivateServer) -> Iterator[str]:
    """A fresh database on the private server; returns its DSN."""
    name = f"outage_{time.monotonic_ns()}"
    server.execute(f'CREATE DATABASE "{name}"')
    try:
        yield make_conninfo(server.dsn, dbname=name)
    finally:
        server.start()  # a test that stopped the server may have failed before restarting it
        server.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def supervisors(jobvisor_env: dict[str, str], tmp_path: Path) -> Iterator[SupervisorLauncher]:
    with launcher(jobvisor_env, tmp_path / "logs") as started:
        yield started


def producer(dsn: str) -> App:
    return outage.register(App(dsn, settings=Settings.load(environ={})))


def counts(app: App) -> dict[str, int]:
    rows = app.connect().execute(
        "SELECT status::text AS status, count(*) AS n FROM background_jobs GROUP BY 1"
    ).fetchall()
    return {row["status"]: row["n"] for row in rows}


def test_server_restart_loses_no_job(server, database, supervisors):
    app = producer(database)
    ids = app.enqueue_many([{"job_type": "nap", "data": {"seconds": 0.5}} for _ in range(40)])
    supervisor = supervisors.start("outage", env={"JOBVISOR_DSN": database})
    wait_until(lambda: counts(app).get("completed", 0) >= 4, 30, supervisor.log_tail)
    app.close()

    server.stop()
    time.sleep(10)
    assert supervisor.running(), "the supervisor died while the server was down"
    server.start()

    app = producer(database)
    wait_until(lambda: counts(app) == {"completed": 40}, 90, lambda: f"{counts(app)}\n{supervisor.log_tail()}")
    rows = app.connect().execute("SELECT id FROM background_jobs WHERE status = 'completed'").fetchall()
    assert sorted(row["id"] for row in rows) == sorted(ids)
    assert supervisor.running()
    app.close()


def test_killed_listen_session_is_replaced(server, database, supervisors):
    app = producer(database)
    env = {"JOBVISOR_DSN": database, "JOB_PROCESSING_INTERVAL": "30000", "MAX_CONCURRENT_JOBS": "1"}
    supervisor = supervisors.start("outage", env=env)
    wait_until(lambda: supervisor.worker_starts("nap"), 30, supervisor.log_tail)
    time.sleep(1.0)  # let the idle worker reach its wait

    killed = server.execute(
        "SELECT pg_terminate_backend(pid) AS done FROM pg_stat_activity "
        "WHERE application_name LIKE 'jobvisor-%%' AND datname = %s",
        (conninfo_to_dict(database)["dbname"],),
    )
    assert killed, "no jobvisor session was found to terminate"
    time.sleep(0.5)

    [job_id] = app.enqueue_many([{"job_type": "nap", "data": {"seconds": 0}}])
    enqueued = time.monotonic()
    wait_until(lambda: counts(app).get("completed") == 1, 15, supervisor.log_tail)
    # The poll interval is 30 s, so only a renewed LISTEN explains a start this soon.
    assert time.monotonic() - enqueued < 10
    app.close()


def test_role_connection_limit_causes_no_crash(server, database, supervisors):
    # Superusers are exempt from CONNECTION LIMIT, so the role is an ordinary one that owns
    # the database, and it creates the schema itself.
    # The role lives on the private server, which is deleted with the test module.
    role = f"limited_{time.monotonic_ns()}"
    server.execute(f'CREATE ROLE "{role}" LOGIN')
    server.execute(f'ALTER DATABASE "{conninfo_to_dict(database)["dbname"]}" OWNER TO "{role}"')
    limited = make_conninfo(database, user=role)
    app = producer(limited)
    app.enqueue_many([{"job_type": "nap", "data": {"seconds": 0.2}} for _ in range(30)])
    app.close()
    server.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT 2')
    supervisor = supervisors.start("outage", env={"JOBVISOR_DSN": limited})

    time.sleep(8)
    assert supervisor.running()
    assert "too many connections" in supervisor.log(), supervisor.log_tail()
    assert WORKER_DIED.search(supervisor.log()) is None, supervisor.log_tail()
    workers = {child.pid for child in supervisor.children()}
    assert len(workers) == 4
    connections = server.execute(
        "SELECT count(*) AS n FROM pg_stat_activity WHERE usename = %s", (role,)
    )[0]["n"]
    assert connections <= 2

    server.execute(f'ALTER ROLE "{role}" CONNECTION LIMIT -1')
    app = producer(limited)
    wait_until(lambda: counts(app) == {"completed": 30}, 60, lambda: f"{counts(app)}\n{supervisor.log_tail()}")
    app.close()
    assert {child.pid for child in supervisor.children()} == workers, "workers were restarted"
    assert WORKER_DIED.search(supervisor.log()) is None, supervisor.log_tail()
    assert "paused" not in supervisor.log(), supervisor.log_tail()


def test_connection_cap_bounds_workers(server, database, supervisors):
    app = producer(database)
    app.enqueue_many([{"job_type": "nap", "data": {"seconds": 0.3}} for _ in range(30)])
    env = {"JOBVISOR_DSN": database, "JOBVISOR_MAX_CONNECTIONS": "3", "MAX_CONCURRENT_JOBS": "4"}
    supervisor = supervisors.start("outage", env=env)
    dbname = conninfo_to_dict(database)["dbname"]

    peak = 0
    while counts(app).get("completed", 0) < 30 and supervisor.running():
        sessions = server.execute(
            "SELECT count(*) AS n FROM pg_stat_activity "
            "WHERE datname = %s AND application_name LIKE 'jobvisor-%%' "
            "AND application_name <> 'jobvisor-producer'",
            (dbname,),
        )[0]["n"]
        peak = max(peak, sessions)
        time.sleep(0.1)
    assert counts(app) == {"completed": 30}, supervisor.log_tail()
    assert peak <= 3, f"{peak} connections with JOBVISOR_MAX_CONNECTIONS=3"
    assert len(supervisor.worker_pids()) == 2
    app.close()
