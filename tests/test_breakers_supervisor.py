"""Circuit breakers seen by a running supervisor and its workers, against a local service."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from apps import flaky
from apps.harness import SupervisorLauncher, job_rows, launcher, wait_until

from jobvisor import App, Settings
from jobvisor.telemetry import shm

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


class FlakyService:
    """An HTTP server on 127.0.0.1 that fails its first ``failures`` requests with 500.

    The first successful response comes ``probe_delay_s`` late, so that any request sent
    while that probe is in flight would show up in ``arrivals``.
    """

    def __init__(self, failures: int, probe_delay_s: float) -> None:
        self.failures = failures
        self.probe_delay_s = probe_delay_s
        self.arrivals: list[tuple[float, int]] = []  # (time.time(), status sent)
        self._lock = threading.Lock()
        service = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with service._lock:
                    number = len(service.arrivals)
                    status = 500 if number < service.failures else 200
                    service.arrivals.append((time.time(), status))
                if number == service.failures:
                    time.sleep(service.probe_delay_s)
                body = json.dumps({"n": number}).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def service() -> Iterator[FlakyService]:
    flaky_service = FlakyService(failures=3, probe_delay_s=1.0)
    try:
        yield flaky_service
    finally:
        flaky_service.close()


@pytest.fixture
def supervisors(jobvisor_env: dict[str, str], tmp_path: Path) -> Iterator[SupervisorLauncher]:
    with launcher(jobvisor_env, tmp_path / "logs") as started:
        yield started


def test_open_breaker_holds_jobs_then_probe_closes(service, supervisors, database_dsn, jobvisor_env):
    producer = flaky.register(App(database_dsn, settings=Settings.load(environ={})))
    ids = producer.enqueue_many([{"job_type": "ai", "data": {}} for _ in range(10)])
    env = {"FLAKY_URL": service.url, "JOBVISOR_SNAPSHOT_INTERVAL": "1"}
    supervisor = supervisors.start("flaky", env=env)

    # Three failed calls open the breaker in shared memory, where every worker reads it.
    def segment() -> str | None:
        path = Path(jobvisor_env["JOBVISOR_HOME"]) / "telemetry" / "snapshot.json"
        return json.loads(path.read_bytes())["node"]["telemetry_segment"] if path.exists() else None

    block = shm.attach(wait_until(segment, 20, supervisor.log_tail))
    try:
        def opened() -> bool:
            index = block.find_breaker("openai")
            return index is not None and block.read_breaker(index).state == shm.BreakerState.OPEN

        wait_until(opened, 20, lambda: f"{service.arrivals}\n{supervisor.log_tail()}", interval=0.02)

        # The job whose failure opened the breaker goes back to pending a moment later.
        def held() -> list[str] | None:
            statuses = [row["status"] for row in job_rows(producer.connect(), ids)]
            return statuses if "processing" not in statuses else None

        statuses = wait_until(held, 2.0, lambda: f"{job_rows(producer.connect(), ids)}")
        assert "failed" not in statuses
        assert opened(), "the breaker should still be open within its 3 s reset timeout"
        wait_until(lambda: block.read_breaker(block.find_breaker("openai")).state
                   == shm.BreakerState.CLOSED, 30, supervisor.log_tail)
    finally:
        block.close()

    wait_until(
        lambda: {row["status"] for row in job_rows(producer.connect(), ids)} == {"completed"},
        30, lambda: f"{job_rows(producer.connect(), ids)}\n{supervisor.log_tail()}",
    )  # fmt: skip
    times = [at for at, _ in service.arrivals]
    assert [status for _, status in service.arrivals[:4]] == [500, 500, 500, 200]
    # While open, nothing reached the service for the 3 s reset timeout.
    assert times[3] - times[2] >= 3.0 - 0.2, service.arrivals
    # The probe was alone: no request arrived during its 1 s response.
    assert all(at >= times[3] + 1.0 for at in times[4:]), service.arrivals
    assert len(service.arrivals) == 13  # 3 failures, then one call per job
    log = supervisor.log()
    assert "held back: the openai circuit breaker is open" in log
    producer.close()


def test_outage_does_not_use_up_retries(supervisors, database_dsn):
    # Six failures: two before the breaker opens, the one that opens it, then three failed
    # probes. Each job may be retried once, so counting every failure would fail some.
    outage = FlakyService(failures=6, probe_delay_s=0.0)
    try:
        producer = flaky.register(App(database_dsn, settings=Settings.load(environ={})))
        ids = producer.enqueue_many([{"job_type": "ai-fragile", "data": {}} for _ in range(4)])
        supervisor = supervisors.start("flaky", env={"FLAKY_URL": outage.url})

        wait_until(
            lambda: {row["status"] for row in job_rows(producer.connect(), ids)} == {"completed"},
            60, lambda: f"{job_rows(producer.connect(), ids)}\n{supervisor.log_tail()}",
        )  # fmt: skip
        statuses = [status for _, status in outage.arrivals]
        assert statuses[:6] == [500] * 6
        assert "postponed" in supervisor.log()
        producer.close()
    finally:
        outage.close()
