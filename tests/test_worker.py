"""The worker's claim loop run in-process: retries, timeouts, results, progress, wake-ups."""

from __future__ import annotations

import collections
import itertools
import threading
import time

import pytest

from jobvisor.db.store import JobStore
from jobvisor.errors import InvalidJobError
from jobvisor.workers import Worker


class WorkerThread:
    """A Worker running in a background thread, with its exception kept for the test."""

    def __init__(self, app, types, *, exit_when_idle=True):
        self.worker = Worker(app, types, exit_when_idle=exit_when_idle)
        self.errors: list[BaseException] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        try:
            self.worker.run()
        except BaseException as error:  # noqa: BLE001 - re-raised in join()
            self.errors.append(error)

    def start(self):
        self.thread.start()
        return self

    def join(self, timeout=30.0):
        self.thread.join(timeout)
        if self.thread.is_alive():
            self.worker.stop()
            self.thread.join(5)
            pytest.fail(f"worker still running after {timeout} s")
        if self.errors:
            raise self.errors[0]

    def stop(self):
        self.worker.stop()
        self.join(5)


def run_worker(app, types, timeout=30.0):
    """Run one Worker until no job of its types is pending or processing."""
    WorkerThread(app, types).start().join(timeout)


def get_job(db, job_id):
    return db.execute(
        "SELECT *, status::text AS status FROM background_jobs WHERE id = %s", (job_id,)
    ).fetchone()


def wait_until_idle(db, timeout=10.0):
    """Wait until a worker sits in its idle wait, after its last backlog query."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = db.execute(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'jobvisor-worker%'"
            " AND state = 'idle' AND query LIKE '%pending_group_heads%'"
        ).fetchone()
        if row["n"] > 0:
            return
        time.sleep(0.02)
    pytest.fail("worker did not become idle")


# Retries


def test_fails_twice_then_completes(make_app, db):
    app = make_app(retry_base_delay_s=0.05)
    attempts_seen = []

    @app.job("flaky", max_retries=3)
    def flaky(ctx, data):
        attempts_seen.append(ctx.attempt)
        if ctx.attempt < 3:
            raise RuntimeError(f"boom {ctx.attempt}")
        return {"ok": True}

    job_id = app.enqueue("flaky", {})
    run_worker(app, ["flaky"])

    job = get_job(db, job_id)
    assert attempts_seen == [1, 2, 3]
    assert job["status"] == "completed"
    assert job["retry_count"] == 2
    assert job["result_data"] == {"ok": True}
    assert job["error"] is None
    assert job["completed_at"] is not None
    assert job["progress"] == 100
    assert [entry["attempt"] for entry in job["attempts"]] == [1, 2]
    assert [entry["error"] for entry in job["attempts"]] == [
        "RuntimeError: boom 1",
        "RuntimeError: boom 2",
    ]
    assert all("RuntimeError: boom" in entry["traceback"] for entry in job["attempts"])


def test_retries_spent_job_failed(make_app, db):
    app = make_app(retry_base_delay_s=0.05)
    calls = []

    @app.job("doomed", max_retries=2)
    def doomed(ctx, data):
        calls.append(ctx.attempt)
        raise ValueError("bad input row 7")

    job_id = app.enqueue("doomed", {})
    run_worker(app, ["doomed"])

    job = get_job(db, job_id)
    assert calls == [1, 2, 3]
    assert job["status"] == "failed"
    assert job["error"] == "ValueError: bad input row 7"
    assert job["retry_count"] == 2
    assert job["completed_at"] is not None
    assert job["locked_by"] is None
    assert job["lease_expires_at"] is None
    assert job["result_data"] is None
    assert len(job["attempts"]) == 3
    assert all("in doomed" in entry["traceback"] for entry in job["attempts"])
    assert all(entry["worker"] for entry in job["attempts"])


def test_no_retries_fails_at_once(make_app, db):
    app = make_app()
    app.job("once", max_retries=0)(lambda ctx, data: 1 / 0)

    job_id = app.enqueue("once", {})
    run_worker(app, ["once"])

    job = get_job(db, job_id)
    assert job["status"] == "failed"
    assert job["retry_count"] == 0
    assert job["error"] == "ZeroDivisionError: division by zero"
    assert len(job["attempts"]) == 1


@pytest.mark.timeout(60)
def test_retry_delays_grow(make_app, db):
    base = 0.2
    app = make_app(retry_base_delay_s=base)
    started = []

    @app.job("backoff", max_retries=3)
    def backoff(ctx, data):
        started.append(time.monotonic())
        raise RuntimeError("again")

    app.enqueue("backoff", {})
    run_worker(app, ["backoff"])

    gaps = [later - earlier for earlier, later in itertools.pairwise(started)]
    assert len(gaps) == 3
    for n, gap in enumerate(gaps):
        ceiling = base * 2**n
        # The delay before retry n+1 lies in [ceiling / 2, ceiling], and waking up adds a little.
        assert gap >= ceiling / 2, f"gap {n} = {gap:.3f} s"
        assert gap <= ceiling + 0.3, f"gap {n} = {gap:.3f} s"
    for n in range(len(gaps) - 1):
        assert gaps[n + 1] >= gaps[n] - 0.05, f"gaps shrank: {gaps}"


# Timeouts


@pytest.mark.timeout(30, method="thread")
def test_handler_timeout_fails_job(make_app, db):
    # SIGALRM reaches only the main thread, so this worker runs in the test's thread.
    app = make_app(retry_base_delay_s=0.05)
    calls = []

    @app.job("sleepy", timeout=0.5, max_retries=1)
    def sleepy(ctx, data):
        calls.append(ctx.attempt)
        time.sleep(10)

    job_id = app.enqueue("sleepy", {})
    began = time.monotonic()
    Worker(app, ["sleepy"], exit_when_idle=True).run()
    elapsed = time.monotonic() - began

    job = get_job(db, job_id)
    assert calls == [1, 2]
    assert job["status"] == "failed"
    assert "timed out" in job["error"]
    assert len(job["attempts"]) == 2
    assert all("timed out after 0.5 s" in entry["error"] for entry in job["attempts"])
    assert elapsed < 5


# Results


RESULTS = {
    "dict": {"a": 1, "nested": {"b": [1, 2.5, "ü"]}},
    "list": [1, "two", None, {"three": 3}],
    "str": "plain text ✓",
    "none": None,
    "int": 42,
    "bool": False,
}
JSONB_TYPES = {
    "dict": "object",
    "list": "array",
    "str": "string",
    "none": "null",
    "int": "number",
    "bool": "boolean",
}


def test_results_stored_as_jsonb(make_app, db):
    app = make_app()
    app.job("echo")(lambda ctx, data: RESULTS[data])
    ids = {name: app.enqueue("echo", name) for name in RESULTS}

    run_worker(app, ["echo"])

    for name, job_id in ids.items():
        row = db.execute(
            "SELECT status::text AS status, result_data, jsonb_typeof(result_data) AS kind"
            " FROM background_jobs WHERE id = %s",
            (job_id,),
        ).fetchone()
        assert row["status"] == "completed", name
        assert row["result_data"] == RESULTS[name], name
        assert row["kind"] == JSONB_TYPES[name], name


@pytest.mark.parametrize(
    ("result", "named"),
    [({"v": float("nan")}, "NaN at $.v"), ({"s": "a\x00"}, "NUL character"), ({1, 2}, "set")],
    ids=["nan", "nul", "set"],
)
def test_unstorable_result_fails_attempt(make_app, db, result, named):
    app = make_app(retry_base_delay_s=0.05)
    app.job("bad-result", max_retries=1)(lambda ctx, data: result)

    job_id = app.enqueue("bad-result", {})
    run_worker(app, ["bad-result"])

    job = get_job(db, job_id)
    assert job["status"] == "failed"
    assert job["result_data"] is None
    assert len(job["attempts"]) == 2
    assert "cannot be stored" in job["error"]
    assert named in job["error"]


# Progress and context


def test_progress_visible_while_running(make_app, db):
    app = make_app()
    running = threading.Event()
    release = threading.Event()
    rejected = []

    @app.job("steps")
    def steps(ctx, data):
        ctx.progress(30, "step a")
        running.set()
        release.wait(10)
        for bad in (150, -1, True, "50"):
            try:
                ctx.progress(bad)
            except InvalidJobError as error:
                rejected.append(str(error))
        try:
            ctx.progress(40, "bad\x00step")
        except InvalidJobError as error:
            rejected.append(str(error))
        return "done"

    job_id = app.enqueue("steps", {})
    worker = WorkerThread(app, ["steps"]).start()
    try:
        assert running.wait(10)
        during = get_job(db, job_id)
    finally:
        release.set()
    worker.join()

    assert during["status"] == "processing"
    assert during["progress"] == 30
    assert during["current_step"] == "step a"
    assert during["locked_by"] is not None
    assert during["started_at"] is not None
    assert len(rejected) == 5
    assert "progress 150" in rejected[0]
    assert "progress -1" in rejected[1]
    assert "progress True" in rejected[2]
    assert "progress '50'" in rejected[3]
    assert "step" in rejected[4]
    after = get_job(db, job_id)
    assert after["status"] == "completed"
    assert after["progress"] == 100
    assert after["result_data"] == "done"


def test_handler_invalid_job_error_reported(make_app, db):
    app = make_app()
    app.job("overshoot", max_retries=0)(lambda ctx, data: ctx.progress(150))

    job_id = app.enqueue("overshoot", {})
    run_worker(app, ["overshoot"])

    job = get_job(db, job_id)
    assert job["status"] == "failed"
    assert "progress 150" in job["error"]
    assert "result" not in job["error"]
    assert job["attempts"][0]["traceback"] is not None


def test_context_describes_job(make_app, db):
    app = make_app()
    seen = {}

    @app.job("ctx")
    def handler(ctx, data):
        seen.update(
            job_id=ctx.job_id,
            job_type=ctx.job_type,
            attempt=ctx.attempt,
            user_id=ctx.user_id,
            user_type=ctx.user_type,
            data=data,
        )
        ctx.logger.info("running")

    job_id = app.enqueue("ctx", {"k": [1]}, user_id="u-1", user_type="premium")
    run_worker(app, ["ctx"])

    assert seen == {
        "job_id": job_id,
        "job_type": "ctx",
        "attempt": 1,
        "user_id": "u-1",
        "user_type": "premium",
        "data": {"k": [1]},
    }


# Waking up


@pytest.mark.timeout(30)
def test_notify_wakes_idle_worker(make_app, db):
    app = make_app(poll_interval_ms=30_000)
    started = []
    ran = threading.Event()

    @app.job("wake")
    def wake(ctx, data):
        started.append(time.monotonic())
        ran.set()

    worker = WorkerThread(app, ["wake"], exit_when_idle=False).start()
    try:
        wait_until_idle(db)
        enqueued = time.monotonic()
        app.enqueue("wake", {})
        assert ran.wait(10)
    finally:
        worker.stop()

    assert started[0] - enqueued < 1.0


@pytest.mark.timeout(30)
def test_delayed_job_starts_on_time(make_app, db):
    app = make_app(poll_interval_ms=30_000)
    started = []
    ran = threading.Event()

    @app.job("later")
    def later(ctx, data):
        started.append(time.monotonic())
        ran.set()

    worker = WorkerThread(app, ["later"], exit_when_idle=False).start()
    try:
        wait_until_idle(db)
        enqueued = time.monotonic()
        app.enqueue("later", {}, delay=1.5)
        assert ran.wait(10)
    finally:
        worker.stop()

    waited = started[0] - enqueued
    assert waited >= 1.4
    assert waited < 3.0


def test_other_type_notify_ignored(make_app, db):
    app = make_app(poll_interval_ms=30_000)
    app.job("mine")(lambda ctx, data: None)
    app.job("theirs")(lambda ctx, data: None)

    worker = WorkerThread(app, ["mine"], exit_when_idle=False).start()
    try:
        wait_until_idle(db)
        job_id = app.enqueue("theirs", {})
        time.sleep(0.5)
        job = get_job(db, job_id)
    finally:
        worker.stop()

    assert job["status"] == "pending"


@pytest.mark.timeout(30)
def test_blocked_worker_does_not_spin(make_app, db, monkeypatch):
    app = make_app(poll_interval_ms=30_000)
    app.job("single", concurrency=1)(lambda ctx, data: None)
    app.enqueue("single", {})
    app.enqueue("single", {})
    # Another node has claimed one job, which uses up the type's running limit of 1.
    db.execute("SELECT id FROM claim_jobs(ARRAY['single'], 'other-node', 1, 600)")

    claims = []
    real_claim = JobStore.claim

    def counting_claim(self, *args, **kwargs):
        claims.append(time.monotonic())
        return real_claim(self, *args, **kwargs)

    monkeypatch.setattr(JobStore, "claim", counting_claim)
    worker = WorkerThread(app, ["single"], exit_when_idle=False).start()
    time.sleep(1.0)
    worker.stop()

    assert len(claims) <= 10, f"{len(claims)} claims in 1 s"


# Several workers


@pytest.mark.timeout(120)
def test_parallel_workers_run_each_job_once(make_app, db):
    # A worker with nothing to claim rechecks every poll interval whether it can exit.
    app = make_app(poll_interval_ms=50)
    ran = []

    @app.job("bulk", concurrency=10_000)
    def bulk(ctx, data):
        ran.append(ctx.job_id)

    ids = app.enqueue_many([{"job_type": "bulk", "data": {"n": n}} for n in range(2000)])
    workers = [WorkerThread(app, ["bulk"]).start() for _ in range(4)]
    for worker in workers:
        worker.join(90)

    counts = collections.Counter(ran)
    repeated = {job_id: n for job_id, n in counts.items() if n > 1}
    assert repeated == {}
    assert sorted(counts) == sorted(ids)
    statuses = db.execute(
        "SELECT status::text AS status, count(*) AS n FROM background_jobs GROUP BY status"
    ).fetchall()
    assert {row["status"]: row["n"] for row in statuses} == {"completed": 2000}


@pytest.mark.timeout(60)
def test_type_limit_holds_across_workers(make_app, db):
    # A worker with nothing to claim rechecks every poll interval whether it can exit, and
    # short_job_s=0.001 keeps each worker claiming one job at a time.
    app = make_app(poll_interval_ms=50, short_job_s=0.001)
    lock = threading.Lock()
    running = [0]
    peak = [0]

    @app.job("capped", concurrency=2)
    def capped(ctx, data):
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.02)
        with lock:
            running[0] -= 1

    app.enqueue_many([{"job_type": "capped", "data": {}} for _ in range(30)])
    workers = [WorkerThread(app, ["capped"]).start() for _ in range(4)]
    for worker in workers:
        worker.join(45)

    done = db.execute(
        "SELECT count(*) AS n FROM background_jobs WHERE status = 'completed'"
    ).fetchone()
    assert done["n"] == 30
    assert peak[0] <= 2


@pytest.mark.timeout(60)
def test_user_limit_holds_across_workers(make_app, db):
    app = make_app(max_jobs_per_user=1, poll_interval_ms=50, short_job_s=0.001)
    lock = threading.Lock()
    running = collections.Counter()
    peak = collections.Counter()

    @app.job("per-user", concurrency=100)
    def per_user(ctx, data):
        with lock:
            running[ctx.user_id] += 1
            peak[ctx.user_id] = max(peak[ctx.user_id], running[ctx.user_id])
        time.sleep(0.02)
        with lock:
            running[ctx.user_id] -= 1

    app.enqueue_many(
        [{"job_type": "per-user", "data": {}, "user_id": f"u{n % 2}"} for n in range(20)]
    )
    workers = [WorkerThread(app, ["per-user"]).start() for _ in range(4)]
    for worker in workers:
        worker.join(45)

    done = db.execute(
        "SELECT count(*) AS n FROM background_jobs WHERE status = 'completed'"
    ).fetchone()
    assert done["n"] == 20
    assert peak["u0"] <= 1
    assert peak["u1"] <= 1


def test_worker_rejects_unregistered_type(make_app):
    app = make_app()
    app.job("known")(lambda ctx, data: None)

    with pytest.raises(InvalidJobError) as caught:
        Worker(app, ["known", "unknown"])

    assert "'unknown'" in str(caught.value)


def test_worker_closes_its_connection(make_app, db):
    app = make_app()
    app.job("quick")(lambda ctx, data: None)
    app.enqueue("quick", {})

    run_worker(app, ["quick"])

    # A server process leaves pg_stat_activity shortly after its client disconnects.
    deadline = time.monotonic() + 5
    while True:
        row = db.execute(
            "SELECT count(*) AS n FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'jobvisor-worker%'"
        ).fetchone()
        if row["n"] == 0 or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert row["n"] == 0
