"""Claim order: base priority, user tier, retries and aging decide which job runs first.

score = base priority + tier (premium +3, admin +5) + 0.5 per retry
        + min(5, minutes since run_at / 10)
Ties go to the earlier run_at, then to the lower id.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import psycopg
import pytest
from psycopg.rows import dict_row

from jobvisor.workers import Worker

TYPE_BASE = {
    "auto-story": 3,
    "storybook": 2,
    "scenes": 2,
    "cartoonize": 1,
    "image-generation": 1,
    "plain": 0,
}
TIER_BONUS = {"premium": 3, "admin": 5}


def run_worker(app, types, timeout=30.0):
    """Run one Worker in a thread until it is idle, and fail the test after timeout seconds."""
    worker = Worker(app, types, exit_when_idle=True)
    errors: list[BaseException] = []

    def target():
        try:
            worker.run()
        except BaseException as error:  # noqa: BLE001 - reported to the test below
            errors.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        worker.stop()
        thread.join(5)
        pytest.fail(f"worker still running after {timeout} s")
    if errors:
        raise errors[0]


def recording(app, concurrency=None):
    """Register every type of TYPE_BASE with a handler that appends the job id to app.ran."""
    app.ran = []
    for name in TYPE_BASE:
        app.job(name, concurrency=concurrency)(lambda ctx, data: app.ran.append(ctx.job_id))
    return app


@pytest.fixture
def recording_app(make_app):
    # Per-type running limits also shape the order of a batch, so they are lifted here and
    # only the score decides.
    return recording(make_app(), concurrency=100)


@dataclass
class Spec:
    label: str
    type: str
    user_type: str | None = None
    priority: int | None = None
    retries: int = 0
    # Minutes between run_at and now. created_at gets the same age unless created_minutes is set.
    age_minutes: float = 0.0
    created_minutes: float | None = None

    def score(self) -> float:
        base = TYPE_BASE[self.type] if self.priority is None else self.priority
        tier = TIER_BONUS.get(self.user_type or "", 0)
        aging = min(5.0, self.age_minutes / 10.0)
        return base + tier + 0.5 * self.retries + aging


def enqueue_specs(app, db, specs: list[Spec]) -> dict[int, Spec]:
    """Enqueue each spec, then set its retry count and backdate it, all against one now()."""
    by_id = {}
    for spec in specs:
        job_id = app.enqueue(spec.type, {}, user_type=spec.user_type, priority=spec.priority)
        by_id[job_id] = spec
    with db.transaction():
        for job_id, spec in by_id.items():
            created = spec.age_minutes if spec.created_minutes is None else spec.created_minutes
            db.execute(
                "UPDATE background_jobs"
                " SET retry_count = %s,"
                "     run_at = now() - make_interval(secs => %s),"
                "     created_at = now() - make_interval(secs => %s)"
                " WHERE id = %s",
                (spec.retries, spec.age_minutes * 60, created * 60, job_id),
            )
    return by_id


def expected_order(by_id: dict[int, Spec]) -> list[int]:
    def key(job_id):
        spec = by_id[job_id]
        return (-spec.score(), -spec.age_minutes, job_id)

    return sorted(by_id, key=key)


def labels(by_id: dict[int, Spec], ids: list[int]) -> list[str]:
    return [by_id[job_id].label for job_id in ids]


def test_claim_order_matches_formula(recording_app, db):
    # Scores differ by at least 0.1 except where two jobs both reached the +5 aging cap. A
    # test run lasts seconds, which moves an uncapped score by about 0.002 per second.
    specs = [
        Spec("plain-new", "plain"),
        Spec("plain-7min", "plain", age_minutes=7),
        Spec("plain-70min", "plain", age_minutes=70),
        Spec("plain-80min", "plain", age_minutes=80),
        Spec("plain-4-retries", "plain", retries=4),
        Spec("plain-priority-10", "plain", priority=10),
        Spec("plain-delayed", "plain", age_minutes=1, created_minutes=60),
        Spec("storybook-60min", "storybook", age_minutes=60),
        Spec("scenes-90min", "scenes", age_minutes=90),
        Spec("scenes-35min", "scenes", age_minutes=35),
        Spec("storybook-premium", "storybook", user_type="premium", age_minutes=3),
        Spec("cartoonize-2-retries", "cartoonize", retries=2, age_minutes=25),
        Spec("image-admin-retry", "image-generation", user_type="admin", retries=1),
        Spec("auto-story-retry", "auto-story", retries=1),
        Spec("auto-story-admin-low", "auto-story", user_type="admin", priority=-10),
        Spec("auto-story-12min", "auto-story", age_minutes=12),
        Spec("plain-basic-tier", "plain", user_type="basic", age_minutes=2),
    ]
    by_id = enqueue_specs(recording_app, db, specs)

    run_worker(recording_app, list(TYPE_BASE))

    assert labels(by_id, recording_app.ran) == labels(by_id, expected_order(by_id))


def test_static_priority_column(recording_app, db):
    by_id = enqueue_specs(
        recording_app,
        db,
        [
            Spec("a", "cartoonize", user_type="premium", retries=3),
            Spec("b", "plain", user_type="admin", priority=-2),
        ],
    )

    rows = db.execute("SELECT id, static_priority FROM background_jobs ORDER BY id").fetchall()
    first, second = rows
    assert first["static_priority"] == 5.5
    assert second["static_priority"] == 3.0
    assert list(by_id) == [first["id"], second["id"]]


def test_old_low_priority_overtakes(recording_app, db):
    by_id = enqueue_specs(
        recording_app,
        db,
        [
            Spec("auto-story-new", "auto-story"),
            Spec("plain-45min", "plain", age_minutes=45),
            Spec("plain-10min", "plain", age_minutes=10),
        ],
    )

    run_worker(recording_app, list(TYPE_BASE))

    assert labels(by_id, recording_app.ran) == ["plain-45min", "auto-story-new", "plain-10min"]


def test_aging_capped_at_5(recording_app, db):
    by_id = enqueue_specs(
        recording_app,
        db,
        [
            Spec("plain-3h", "plain", age_minutes=180),
            Spec("priority-6-new", "plain", priority=6),
            Spec("priority-4-new", "plain", priority=4),
        ],
    )

    run_worker(recording_app, list(TYPE_BASE))

    assert labels(by_id, recording_app.ran) == ["priority-6-new", "plain-3h", "priority-4-new"]


def test_aging_counts_from_run_at(recording_app, db):
    by_id = enqueue_specs(
        recording_app,
        db,
        [
            Spec("created-2h-due-now", "plain", age_minutes=0, created_minutes=120),
            Spec("cartoonize-new", "cartoonize"),
        ],
    )

    run_worker(recording_app, list(TYPE_BASE))

    assert labels(by_id, recording_app.ran) == ["cartoonize-new", "created-2h-due-now"]


def test_capped_tie_goes_to_earlier_run_at(recording_app, db):
    by_id = enqueue_specs(
        recording_app,
        db,
        [
            Spec("storybook-60min", "storybook", age_minutes=60),
            Spec("scenes-90min", "scenes", age_minutes=90),
            Spec("plain-priority-2-75min", "plain", priority=2, age_minutes=75),
        ],
    )

    run_worker(recording_app, ["storybook", "scenes", "plain"])

    assert labels(by_id, recording_app.ran) == [
        "scenes-90min",
        "plain-priority-2-75min",
        "storybook-60min",
    ]


def test_equal_score_across_types_lower_id_first(recording_app, db):
    by_id = enqueue_specs(
        recording_app,
        db,
        [
            Spec("plain-premium-12min", "plain", user_type="premium", age_minutes=12),
            Spec("auto-story-12min", "auto-story", age_minutes=12),
        ],
    )

    run_worker(recording_app, ["plain", "auto-story"])

    assert labels(by_id, recording_app.ran) == ["plain-premium-12min", "auto-story-12min"]


def test_equal_run_at_in_type_lower_id_first(recording_app, db):
    first = recording_app.enqueue("plain", {})
    second = recording_app.enqueue("plain", {})
    # Updating the higher id first gives the lower id the newer row version.
    for job_id in (second, first):
        db.execute(
            "UPDATE background_jobs SET run_at = '2024-01-01T00:00:00Z' WHERE id = %s", (job_id,)
        )

    run_worker(recording_app, ["plain"])

    assert recording_app.ran == [first, second]


def test_type_limit_keeps_priority_order(make_app, db):
    # short_job_s=60 counts every job as short, so batches grow wherever the worker lets them.
    app = recording(make_app(short_job_s=60))
    by_id = enqueue_specs(
        app,
        db,
        [
            Spec("image-1", "image-generation", priority=10, age_minutes=3),
            Spec("image-2", "image-generation", priority=10, age_minutes=2),
            Spec("image-3", "image-generation", priority=10, age_minutes=1),
            Spec("plain-3", "plain", priority=3),
            Spec("plain-2", "plain", priority=2),
            Spec("plain-1", "plain", priority=1),
            Spec("auto-story-low", "auto-story", user_type="admin", priority=-10),
        ],
    )

    run_worker(app, ["image-generation", "plain", "auto-story"])

    assert labels(by_id, app.ran) == labels(by_id, expected_order(by_id))


def test_future_run_at_not_claimed(recording_app, db):
    later = recording_app.enqueue("auto-story", {}, priority=10, delay=3600)
    now = recording_app.enqueue("plain", {})

    rows = db.execute(
        "SELECT id FROM claim_jobs(ARRAY['plain', 'auto-story'], 'w', 10, 60)"
    ).fetchall()

    assert [row["id"] for row in rows] == [now]
    status = db.execute(
        "SELECT status::text AS status FROM background_jobs WHERE id = %s", (later,)
    ).fetchone()
    assert status["status"] == "pending"


# The claim reads the head of each (type, static priority) group from the claim index.


def plan_nodes(node: dict) -> list[dict]:
    nodes = [node]
    for child in node.get("Plans", []):
        nodes.extend(plan_nodes(child))
    return nodes


@pytest.mark.timeout(120)
def test_claim_reads_group_heads_only(database_dsn, db):
    db.execute(
        "INSERT INTO background_jobs (type, run_at, created_at)"
        " SELECT 't', now() - make_interval(secs => i), now() - make_interval(secs => i)"
        " FROM generate_series(1, 200000) AS i"
    )
    db.execute("INSERT INTO background_jobs (type, user_type) VALUES ('other', 'admin')")
    db.execute("ANALYZE background_jobs")

    explained = db.execute(
        "EXPLAIN (FORMAT JSON) SELECT * FROM pending_group_heads(ARRAY['t'])"
    ).fetchone()
    plan = explained["QUERY PLAN"][0]["Plan"]
    nodes = plan_nodes(plan)
    node_types = {node["Node Type"] for node in nodes}
    scanned = {
        node.get("Index Name")
        for node in nodes
        if node.get("Relation Name") == "background_jobs"
    }
    assert "Sort" not in node_types
    assert "Seq Scan" not in node_types
    assert scanned == {"background_jobs_claim_idx"}

    oldest = [
        row["id"]
        for row in db.execute(
            "SELECT id FROM background_jobs WHERE type = 't' ORDER BY run_at LIMIT 10"
        )
    ]

    # pg_stat_xact_user_tables counts the reads of the current transaction, including
    # those made inside claim_jobs.
    with psycopg.connect(database_dsn, row_factory=dict_row) as conn:
        claimed = conn.execute("SELECT id FROM claim_jobs(ARRAY['t'], 'w', 10, 60)").fetchall()
        reads = conn.execute(
            "SELECT seq_scan, idx_tup_fetch FROM pg_stat_xact_user_tables"
            " WHERE relname = 'background_jobs'"
        ).fetchone()
        conn.commit()

    assert [row["id"] for row in claimed] == oldest
    assert reads["seq_scan"] == 0
    assert reads["idx_tup_fetch"] < 1000
