"""Supervisor processes end to end: several nodes on one database, shutdown on signals,
crash-looping job types and the hard timeout.

Each test runs test applications from ``tests/apps`` as supervisor subprocesses against
the test's own database and checks the jobs table and the handlers' run records.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from apps import crashloop, noop, slow, stuck
from apps.harness import (
    SupervisorLauncher,
    job_rows,
    launcher,
    process_gone,
    runs,
    status_counts,
    wait_for_runs,
    wait_until,
)
from apps.recording import RUNS_TABLE_SQL

pytestmark = [pytest.mark.timeout(120), pytest.mark.slow]


@pytest.fixture
def supervisors(jobvisor_env: dict[str, str], tmp_path: Path, db) -> Iterator[SupervisorLauncher]:
    db.execute(RUNS_TABLE_SQL)
    with launcher(jobvisor_env, tmp_path / "logs") as started:
        yield started


def test_two_supervisors_run_each_job_once(supervisors, make_app, db):
    producer = noop.register(make_app())
    # The jobs wait an hour, so that both supervisors are up before any can be claimed.
    job_ids = producer.enqueue_many(
        [{"job_type": "noop", "data": {"n": n}, "delay": 3600} for n in range(5000)]
    )
    assert len(set(job_ids)) == 5000

    first = supervisors.start("noop", name="first", exit_when_idle=True)
    second = supervisors.start("noop", name="second", exit_when_idle=True)
    wait_until(
        lambda: first.worker_starts("noop") and second.worker_starts("noop"),
        30,
        lambda: "both supervisors should start an idle noop worker\n" + supervisors.logs(),
    )
    released = db.execute(
        "UPDATE background_jobs SET run_at = now() WHERE status = 'pending'"
    ).rowcount
    assert released == 5000
    db.execute("SELECT pg_notify('jobvisor_jobs', 'noop')")

    started = time.monotonic()
    assert first.wait_exit(90) == 0, first.log_tail()
    assert second.wait_exit(max(1.0, 90 - (time.monotonic() - started))) == 0, second.log_tail()

    counts = status_counts(db)
    assert counts == {"completed": 5000}, counts
    run_rows = runs(db)
    assert len(run_rows) == 5000, f"{len(run_rows)} handler runs for 5000 jobs"
    run_ids = [row["job_id"] for row in run_rows]
    assert sorted(run_ids) == sorted(job_ids)
    retried = db.execute(
        "SELECT count(*) AS n FROM background_jobs WHERE retry_count > 0"
    ).fetchone()["n"]
    assert retried == 0

    first_pids, second_pids = first.worker_pids(), second.worker_pids()
    by_first = sum(1 for row in run_rows if row["pid"] in first_pids)
    by_second = sum(1 for row in run_rows if row["pid"] in second_pids)
    assert by_first + by_second == 5000, (
        f"{5000 - by_first - by_second} runs came from processes that neither supervisor started"
    )
    assert by_first > 0, f"runs: first supervisor {by_first}, second {by_second}"
    assert by_second > 0, f"runs: first supervisor {by_first}, second {by_second}"


def test_sigterm_lets_running_jobs_finish(supervisors, make_app, db):
    producer = slow.register(make_app())
    job_ids = producer.enqueue_many(
        [{"job_type": "slow", "data": {"seconds": 3}} for _ in range(14)]
    )
    supervisor = supervisors.start("slow")

    running = wait_for_runs(db, 4, supervisor)
    workers = supervisor.children()
    assert len(workers) == 4
    running_ids = sorted(row["job_id"] for row in running)

    signalled = time.monotonic()
    supervisor.send(signal.SIGTERM)
    code = supervisor.wait_exit(20)
    elapsed = time.monotonic() - signalled
    assert code == 0, supervisor.log_tail()
    # The running jobs had at most 3 s left, and the drain timeout is 20 s.
    assert elapsed < 12, f"the supervisor took {elapsed:.1f} s to drain jobs with 3 s left"

    run_rows = runs(db)
    assert len(run_rows) == 4, f"jobs started after SIGTERM: {run_rows}"
    unfinished = [row for row in run_rows if row["finished_at"] is None]
    assert unfinished == [], "running jobs were cut off instead of finishing"
    for job in job_rows(db, running_ids):
        assert job["status"] == "completed", job
        assert job["retry_count"] == 0, job
    rest = job_rows(db, sorted(set(job_ids) - set(running_ids)))
    assert len(rest) == 10
    for job in rest:
        assert job["status"] == "pending", job
        assert job["retry_count"] == 0, job
    assert "processing" not in status_counts(db)
    for worker in workers:
        assert process_gone(worker.pid), f"worker {worker.pid} outlived its supervisor"


def test_second_signal_stops_at_once(supervisors, make_app, db):
    producer = slow.register(make_app())
    job_ids = producer.enqueue_many(
        [{"job_type": "slow", "data": {"seconds": 30}} for _ in range(6)]
    )
    supervisor = supervisors.start("slow")

    running = wait_for_runs(db, 4, supervisor)
    workers = supervisor.children()
    assert len(workers) == 4
    running_ids = sorted(row["job_id"] for row in running)

    supervisor.send(signal.SIGTERM)
    wait_until(
        lambda: "stopping" in supervisor.log(),
        5,
        lambda: "the supervisor should log that it is stopping\n" + supervisor.log_tail(),
    )
    signalled = time.monotonic()
    supervisor.send(signal.SIGINT)
    code = supervisor.wait_exit(10)
    elapsed = time.monotonic() - signalled
    assert elapsed < 5, f"the supervisor took {elapsed:.1f} s to stop after the second signal"
    assert code == 0, supervisor.log_tail()

    assert "processing" not in status_counts(db)
    assert all(row["finished_at"] is None for row in runs(db)), (
        "a 30 s job finished after the second signal"
    )
    for job in job_rows(db, running_ids):
        assert job["status"] == "pending", job
        # The supervisor interrupted the attempt, so it does not count against the job.
        assert job["retry_count"] == 0, job
        assert len(job["attempts"]) == 1, job["attempts"]
        assert "second signal" in job["attempts"][0]["error"], job["attempts"]
    for job in job_rows(db, sorted(set(job_ids) - set(running_ids))):
        assert job["status"] == "pending", job
        assert job["retry_count"] == 0, job
    for worker in workers:
        assert process_gone(worker.pid), f"worker {worker.pid} outlived its supervisor"


def test_crash_loop_pauses_job_type(supervisors, make_app, db):
    producer = crashloop.register(make_app())
    [crashing_id] = producer.enqueue_many([{"job_type": "crasher", "data": {}}])
    healthy_ids = producer.enqueue_many(
        [{"job_type": "healthy", "data": {"n": n}} for n in range(20)]
    )
    supervisor = supervisors.start("crashloop", env={"MAX_CONCURRENT_JOBS": "2"})

    def paused_line() -> str | None:
        for line in supervisor.log().splitlines():
            if " ERROR " in line and "paused" in line and "crasher" in line:
                return line
        return None

    wait_until(
        paused_line,
        60,
        lambda: (
            f"no ERROR line about pausing crasher; {len(supervisor.worker_starts('crasher'))} crasher workers "
            f"started\n{supervisor.log_tail()}"
        ),
        interval=0.2,
    )

    # More than 5 crashes in 60 s pause the type: the 6th crash does it.
    starts = supervisor.worker_starts("crasher")
    assert len(starts) == 6, [s.pid for s in starts]
    gaps = [later.time - earlier.time for earlier, later in itertools.pairwise(starts)]
    for index, gap in enumerate(gaps):
        # Restart backoff doubles from 0.5 s: 0.5, 1, 2, 4, 8 s.
        backoff = 0.5 * 2**index
        assert gap >= backoff - 0.05, (
            f"restart {index + 1} came {gap:.2f} s after the previous one: {gaps}"
        )
        assert gap <= backoff + 4, (
            f"restart {index + 1} came {gap:.2f} s after the previous one: {gaps}"
        )
    assert gaps[-1] >= 3 * gaps[0], f"gaps between restarts do not grow: {gaps}"

    # The supervisor logs the pause before it requeues the job of the 6th crashed worker.
    crashing = wait_until(
        lambda: next(
            (job for job in job_rows(db, [crashing_id]) if job["status"] != "processing"), None
        ),
        5,
        lambda: f"the crashed job should be requeued: {job_rows(db, [crashing_id])}",
    )
    assert crashing["status"] == "pending", crashing
    assert crashing["retry_count"] == 6, crashing
    assert len(crashing["attempts"]) == 6, crashing["attempts"]
    for attempt, start in zip(crashing["attempts"], starts):
        assert "exit code 1" in attempt["error"], attempt
        assert f":{start.pid}:" in attempt["worker"], (attempt, start)
    assert len(runs(db, crashing_id)) == 6

    healthy = job_rows(db, healthy_ids)
    assert [job["status"] for job in healthy] == ["completed"] * 20, healthy
    assert all(job["retry_count"] == 0 for job in healthy), healthy
    assert len(runs(db)) - 6 == 20, "each healthy job should run once"
    # The healthy jobs finished while the other type was still crashing.
    order = db.execute(
        "SELECT max(completed_at) AS last_healthy, "
        "(SELECT (attempts -> -1 ->> 'at')::timestamptz FROM background_jobs WHERE id = %s) AS last_crash "
        "FROM background_jobs WHERE type = 'healthy'",
        (crashing_id,),
    ).fetchone()
    assert order["last_healthy"] < order["last_crash"], order

    # Allocation runs every second, so a 2.5 s watch spans at least two allocation rounds,
    # and the paused type must get no new worker in any of them.
    observed_until = time.monotonic() + 2.5
    while time.monotonic() < observed_until:
        assert len(supervisor.worker_starts("crasher")) == 6, supervisor.log_tail()
        time.sleep(0.1)
    assert all(process_gone(start.pid) for start in starts)

    supervisor.send(signal.SIGTERM)
    assert supervisor.wait_exit(20) == 0, supervisor.log_tail()
    crashing = job_rows(db, [crashing_id])[0]
    assert crashing["status"] == "pending", crashing
    assert crashing["retry_count"] == 6, crashing
    assert "processing" not in status_counts(db)


def test_hard_timeout_kills_stuck_worker(supervisors, make_app, db):
    producer = stuck.register(make_app())
    [job_id] = producer.enqueue_many([{"job_type": "stuck", "data": {}}])
    supervisor = supervisors.start("stuck", exit_when_idle=True)

    code = supervisor.wait_exit(40)
    assert code == 0, supervisor.log_tail()

    job = job_rows(db, [job_id])[0]
    # max_retries=1: the first kill requeues the job, the second fails it.
    assert job["status"] == "failed", job
    assert "timed out" in job["error"], job
    attempts = job["attempts"]
    assert len(attempts) == 2, attempts
    for attempt in attempts:
        assert "timed out" in attempt["error"], attempt

    run_rows = runs(db, job_id)
    assert len(run_rows) == 2, run_rows
    assert run_rows[0]["pid"] != run_rows[1]["pid"]
    assert all(row["finished_at"] is None for row in run_rows)
    for row, attempt in zip(run_rows, attempts):
        assert f":{row['pid']}:" in attempt["worker"], (row, attempt)
        killed_after = db.execute(
            "SELECT extract(epoch FROM %s::timestamptz - %s::timestamptz) AS s",
            (attempt["at"], row["started_at"]),
        ).fetchone()["s"]
        # The kill is due 2 s in (job timeout 1 s plus grace 1 s), and the supervisor checks
        # every 0.5 s.
        assert 1.9 <= float(killed_after) <= 4.0, (
            f"worker {row['pid']} was killed {killed_after} s after the job started"
        )
    assert "processing" not in status_counts(db)
    # Two attempts ran, so one retry was made, as for a job whose handler raised twice.
    assert job["retry_count"] == 1, job
