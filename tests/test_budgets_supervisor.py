"""Memory and CPU budgets enforced by a running supervisor on its real worker processes."""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from apps import budgets
from apps.harness import SupervisorLauncher, job_rows, launcher, runs, wait_for_status, wait_until
from apps.recording import RUNS_TABLE_SQL

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]

KILLED = re.compile(r"^(?P<time>\d+\.\d+) .* killed during job (?P<job>\d+): (?P<reason>.*)$", re.M)


@pytest.fixture
def supervisors(jobvisor_env: dict[str, str], tmp_path: Path, db) -> Iterator[SupervisorLauncher]:
    db.execute(RUNS_TABLE_SQL)
    with launcher(jobvisor_env, tmp_path / "logs") as started:
        yield started


@pytest.fixture
def control_spinner() -> Iterator[psutil.Process]:
    """A process outside jobvisor that keeps one core busy."""
    process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        yield psutil.Process(process.pid)
    finally:
        process.kill()
        process.wait()


def test_memory_hog_killed_then_failed(supervisors, make_app, db):
    app = budgets.register(make_app())
    [hog] = app.enqueue_many([{"job_type": "memory-hog", "data": {"mb": 400, "seconds": 10}}])
    steady = app.enqueue_many([{"job_type": "steady", "data": {"seconds": 0.2}} for _ in range(20)])
    supervisor = supervisors.start("budgets")

    [failed] = wait_for_status(db, [hog], "failed", 60, supervisor.log_tail)
    assert failed["retry_count"] == 1, failed
    assert re.fullmatch(r"memory budget exceeded: \d+ MB > 100 MB", failed["error"]), failed["error"]
    attempts = failed["attempts"]
    assert len(attempts) == 2, attempts
    for attempt in attempts:
        assert "memory budget exceeded" in str(attempt), attempts

    # Each attempt allocates 400 MB within a fraction of a second of its start, so it
    # crosses the hard limit (200 MB) then. The kill comes at most 2 s later, plus the time
    # the allocation takes.
    kills = KILLED.findall(supervisor.log())
    assert len(kills) == 2, supervisor.log_tail()
    starts = [row["started_at"].timestamp() for row in runs(db, hog)]
    assert len(starts) == 2
    for started, (killed_at, _, reason) in zip(starts, kills, strict=True):
        assert float(killed_at) - started < 2.5, f"killed {float(killed_at) - started:.2f} s after start"
        assert re.fullmatch(r"memory budget exceeded: \d+ MB > 100 MB", reason), reason

    wait_for_status(db, steady, "completed", 30, supervisor.log_tail)
    assert supervisor.running(), "the supervisor died"


def test_spinner_held_to_cpu_budget(supervisors, make_app, db, control_spinner):
    app = budgets.register(make_app())
    [spin] = app.enqueue_many([{"job_type": "spinner", "data": {"seconds": 20}}])
    supervisor = supervisors.start("budgets")

    [run] = wait_until(lambda: runs(db, spin), 20, lambda: supervisor.log_tail())
    worker = psutil.Process(run["pid"])
    time.sleep(1.0)  # let the throttle settle on its duty cycle

    before_worker, before_control = worker.cpu_times(), control_spinner.cpu_times()
    began = time.monotonic()
    time.sleep(10.0)
    elapsed = time.monotonic() - began
    after_worker, after_control = worker.cpu_times(), control_spinner.cpu_times()

    def share(before, after) -> float:
        return 100.0 * ((after.user - before.user) + (after.system - before.system)) / elapsed

    worker_share, control_share = share(before_worker, after_worker), share(before_control, after_control)
    assert worker_share <= 30.0, f"spinner with a 20 % budget used {worker_share:.1f} % of a core"
    # On a shared 2-core machine the unthrottled control does not always get a whole core.
    assert control_share >= 60.0, f"control spinner got only {control_share:.1f} % of a core"
    assert job_rows(db, [spin])[0]["status"] == "processing"


def test_short_jobs_held_to_cpu_budget(supervisors, make_app, db):
    app = budgets.register(make_app())
    jobs = app.enqueue_many([{"job_type": "burst", "data": {"cpu_seconds": 0.4}} for _ in range(6)])
    supervisor = supervisors.start("budgets", exit_when_idle=True)

    assert supervisor.wait_exit(90) == 0, supervisor.log_tail()
    assert {row["status"] for row in job_rows(db, jobs)} == {"completed"}
    spans = runs(db)
    wall = (max(r["finished_at"] for r in spans) - min(r["started_at"] for r in spans)).total_seconds()
    # 2.4 s of CPU at 20 % of one core needs 12 s. The first second's allowance and the
    # check interval let the jobs run somewhat ahead, so the bound is 30 %, or 8 s.
    assert wall >= 2.4 / 0.30, f"6 jobs of 0.4 s CPU each with a 20 % budget took only {wall:.1f} s"


def test_workers_recycled_after_max_jobs(supervisors, make_app, db):
    app = budgets.register(make_app())
    jobs = app.enqueue_many([{"job_type": "steady", "data": {"seconds": 0.05}} for _ in range(12)])
    supervisor = supervisors.start(
        "budgets", exit_when_idle=True, env={"JOBVISOR_MAX_JOBS_PER_WORKER": "3"}
    )

    assert supervisor.wait_exit(60) == 0, supervisor.log_tail()
    assert {row["status"] for row in job_rows(db, jobs)} == {"completed"}
    runs_by_pid: dict[int, int] = {}
    for row in runs(db):
        runs_by_pid[row["pid"]] = runs_by_pid.get(row["pid"], 0) + 1
    assert max(runs_by_pid.values()) <= 3, runs_by_pid
    assert len(runs_by_pid) >= 4, runs_by_pid
    assert "died" not in supervisor.log()
