"""Recovery of jobs whose worker process died (requeued at once by its supervisor) and of
jobs whose whole node died (requeued by another supervisor once their lease expired).

Supervisors run as subprocesses with a 3 s lease; the handlers record each run in
``handler_runs``.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apps import slow
from apps.harness import (
    SupervisorLauncher,
    job_rows,
    launcher,
    process_gone,
    runs,
    status_counts,
    wait_for_runs,
    wait_for_status,
    wait_until,
)
from apps.recording import RUNS_TABLE_SQL

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


@pytest.fixture
def supervisors(jobvisor_env: dict[str, str], tmp_path: Path, db) -> Iterator[SupervisorLauncher]:
    db.execute(RUNS_TABLE_SQL)
    with launcher(jobvisor_env, tmp_path / "logs") as started:
        yield started


def test_killed_worker_job_runs_again(supervisors, make_app, db):
    producer = slow.register(make_app())
    [job_id] = producer.enqueue_many([{"job_type": "slow", "data": {"seconds": 3}}])
    supervisor = supervisors.start("slow")

    [first_run] = wait_for_runs(db, 1, supervisor)
    victim = first_run["pid"]
    assert victim in {child.pid for child in supervisor.children()}, (
        "the job ran outside the supervisor's workers"
    )
    os.kill(victim, signal.SIGKILL)
    killed_at = db.execute("SELECT clock_timestamp() AS t").fetchone()["t"]

    [job] = wait_for_status(db, [job_id], "completed", 20, supervisor.log_tail)
    assert job["retry_count"] == 1, job
    assert len(job["attempts"]) == 1, job["attempts"]
    lost = job["attempts"][0]
    assert lost["attempt"] == 1, lost
    assert f":{victim}:" in lost["worker"], lost
    assert str(victim) in lost["error"], lost
    assert "SIGKILL" in lost["error"], lost
    # The supervisor reaps the dead child at once and requeues its job without waiting for the
    # 3 s lease to expire.
    requeue_delay = db.execute(
        "SELECT extract(epoch FROM %s::timestamptz - %s::timestamptz) AS s", (lost["at"], killed_at)
    ).fetchone()["s"]
    assert float(requeue_delay) < 1.0, (
        f"the job was requeued {requeue_delay} s after its worker died"
    )

    run_rows = runs(db, job_id)
    assert len(run_rows) == 2, run_rows
    assert run_rows[0]["pid"] == victim
    assert run_rows[0]["finished_at"] is None
    assert run_rows[1]["pid"] != victim
    assert run_rows[1]["finished_at"] is not None
    assert "processing" not in status_counts(db)

    assert supervisor.running(), (
        "the supervisor exited after losing a worker\n" + supervisor.log_tail()
    )
    supervisor.send(signal.SIGTERM)
    assert supervisor.wait_exit(20) == 0, supervisor.log_tail()


def test_dead_node_jobs_recovered_by_lease(supervisors, make_app, db):
    producer = slow.register(make_app())
    job_ids = producer.enqueue_many(
        [{"job_type": "slow", "data": {"seconds": 2}} for _ in range(6)]
    )
    node_a = supervisors.start("slow", name="node-a")

    running = wait_for_runs(db, 4, node_a)
    assert len(running) == 4
    held_ids = sorted(row["job_id"] for row in running)
    workers_a = node_a.children()
    assert len(workers_a) == 4
    assert {row["pid"] for row in running} == {worker.pid for worker in workers_a}

    # The node dies: the supervisor and all its workers at once, with nothing requeued.
    os.killpg(node_a.pid, signal.SIGKILL)
    assert node_a.wait_exit(10) == -signal.SIGKILL
    wait_until(
        lambda: all(process_gone(worker.pid) for worker in workers_a),
        10,
        "the killed node's workers should be gone",
    )
    held_jobs = job_rows(db, held_ids)
    assert [job["status"] for job in held_jobs] == ["processing"] * 4, held_jobs

    killed_at = time.monotonic()
    node_b = supervisors.start("slow", name="node-b", exit_when_idle=True)
    # Lease 3 s, expired leases are swept every 5 s, then each job runs 2 s.
    assert node_b.wait_exit(40) == 0, node_b.log_tail()
    recovered_in = time.monotonic() - killed_at

    jobs = job_rows(db, job_ids)
    assert [job["status"] for job in jobs] == ["completed"] * 6, (jobs, recovered_in)
    assert "processing" not in status_counts(db)
    for job in jobs:
        if job["id"] in held_ids:
            assert job["retry_count"] == 1, job
            assert len(job["attempts"]) == 1, job["attempts"]
            assert "lease expired" in job["attempts"][0]["error"], job["attempts"]
            assert f":{node_a.pid}:" in job["attempts"][0]["worker"], job["attempts"]
        else:
            assert job["retry_count"] == 0, job
            assert job["attempts"] == [], job

    workers_b = node_b.worker_pids()
    for job_id in job_ids:
        finished = [row for row in runs(db, job_id) if row["finished_at"] is not None]
        assert len(finished) == 1, (job_id, runs(db, job_id))
        assert finished[0]["pid"] in workers_b, (job_id, finished, workers_b)
    for job_id in held_ids:
        assert len(runs(db, job_id)) == 2, runs(db, job_id)
