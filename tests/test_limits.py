"""Per-user and per-type running limits, checked from the times the handlers recorded.

Each handler stores its start and finish with the database clock, inside the span in which
its job is ``processing``. So if the claim lets more jobs of one user or one type run at
once than the limit, some instant covered by that many recorded spans shows it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from apps import users
from apps.harness import SupervisorLauncher, launcher, status_counts
from apps.recording import RUNS_TABLE_SQL

pytestmark = [pytest.mark.timeout(180), pytest.mark.slow]

USERS = ("ana", "bo", "chen")


@pytest.fixture
def supervisors(jobvisor_env: dict[str, str], tmp_path: Path, db) -> Iterator[SupervisorLauncher]:
    db.execute(RUNS_TABLE_SQL)
    with launcher(jobvisor_env, tmp_path / "logs") as started:
        yield started


def max_overlap(spans: list[tuple[Any, Any]]) -> int:
    """Return the largest number of (start, end) spans that cover one instant.

    A span that ends at the instant another starts does not overlap it.
    """
    events = sorted([(start, 1) for start, _ in spans] + [(end, -1) for _, end in spans],
                    key=lambda event: (event[0], event[1]))
    running = peak = 0
    for _, change in events:
        running += change
        peak = max(peak, running)
    return peak


def spans_by(db, column: str) -> dict[str, list[tuple[Any, Any]]]:
    rows = db.execute(
        f"SELECT j.{column} AS key, r.started_at, r.finished_at "
        "FROM handler_runs AS r JOIN background_jobs AS j ON j.id = r.job_id"
    ).fetchall()
    grouped: dict[str, list[tuple[Any, Any]]] = defaultdict(list)
    for row in rows:
        assert row["finished_at"] is not None, f"a run never finished: {row}"
        grouped[row["key"]].append((row["started_at"], row["finished_at"]))
    return grouped


def enqueue_user_jobs(app, count: int) -> list[int]:
    return app.enqueue_many(
        [
            {"job_type": "user-job", "data": {"seconds": 0.05 + 0.05 * (n % 3)}, "user_id": USERS[n % 3]}
            for n in range(count)
        ]
    )


def run_to_completion(supervisors: SupervisorLauncher, count: int, env: dict[str, str]) -> None:
    started = [
        supervisors.start("users", name=f"node-{n + 1}", exit_when_idle=True, env=env)
        for n in range(count)
    ]
    for supervisor in started:
        assert supervisor.wait_exit(150) == 0, supervisor.log_tail()


@pytest.mark.parametrize("nodes", [1, 2])
def test_user_limit_holds_at_every_instant(supervisors, make_app, db, nodes):
    job_ids = enqueue_user_jobs(users.register(make_app()), 300)
    env = {"MAX_JOBS_PER_USER": "2", "MAX_CONCURRENT_JOBS": str(8 // nodes)}

    run_to_completion(supervisors, nodes, env)

    assert status_counts(db) == {"completed": 300}
    spans = spans_by(db, "user_id")
    assert sorted(spans) == sorted(USERS)
    assert sum(len(items) for items in spans.values()) == len(job_ids)
    for user, items in spans.items():
        assert max_overlap(items) <= 2, f"user {user} had {max_overlap(items)} jobs running at once"
    # With 8 workers and 3 users, each user does reach the limit. A test that never ran two
    # jobs of a user at once would prove nothing.
    assert any(max_overlap(items) == 2 for items in spans.values()), {
        user: max_overlap(items) for user, items in spans.items()
    }


@pytest.mark.parametrize("nodes", [1, 2])
def test_type_limit_holds_at_every_instant(supervisors, make_app, db, nodes):
    app = users.register(make_app())
    app.enqueue_many([{"job_type": "narrow", "data": {"seconds": 0.1}} for _ in range(60)])
    # Per-type limits count over all nodes: two supervisors with 4 workers each share 2.
    env = {"MAX_JOBS_PER_USER": "50", "MAX_CONCURRENT_JOBS": "4"}

    run_to_completion(supervisors, nodes, env)

    assert status_counts(db) == {"completed": 60}
    spans = spans_by(db, "type")["narrow"]
    assert len(spans) == 60
    assert max_overlap(spans) == 2, f"narrow (limit 2) had {max_overlap(spans)} jobs running at once"
