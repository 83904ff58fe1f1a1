"""The SQL functions that producers and consumers in any language call from psql."""

from __future__ import annotations

import psycopg
import pytest
from psycopg.rows import dict_row


def insert_jobs(db, job_type, count, **columns):
    """Insert count pending jobs of job_type with plain SQL and return their ids in order."""
    names = ", ".join(["type", *columns])
    placeholders = ", ".join(["%s"] * (len(columns) + 1))
    ids = []
    for _ in range(count):
        row = db.execute(
            f"INSERT INTO background_jobs ({names}) VALUES ({placeholders}) RETURNING id",
            [job_type, *columns.values()],
        ).fetchone()
        ids.append(row["id"])
    return ids


def get_job(db, job_id):
    return db.execute(
        "SELECT *, status::text AS status FROM background_jobs WHERE id = %s", (job_id,)
    ).fetchone()


def open_transaction(database_dsn):
    """A connection whose first statement starts a transaction that stays open."""
    return psycopg.connect(database_dsn, row_factory=dict_row)


# get_next_pending_jobs


def test_next_pending_disjoint_in_transactions(database_dsn, db):
    insert_jobs(db, "a", 6)
    first = open_transaction(database_dsn)
    second = open_transaction(database_dsn)
    try:
        first_rows = first.execute("SELECT * FROM get_next_pending_jobs(2)").fetchall()
        second_rows = second.execute("SELECT * FROM get_next_pending_jobs(2)").fetchall()
        first_pid = first.info.backend_pid
        second_pid = second.info.backend_pid
        first.commit()
        second.commit()
    finally:
        first.close()
        second.close()

    first_ids = {row["id"] for row in first_rows}
    second_ids = {row["id"] for row in second_rows}
    assert len(first_ids) == 2
    assert len(second_ids) == 2
    assert first_ids.isdisjoint(second_ids)
    for job_id in first_ids:
        job = get_job(db, job_id)
        assert job["status"] == "processing"
        assert job["locked_by"] == f"sql:{first_pid}"
        assert job["started_at"] is not None
    for job_id in second_ids:
        assert get_job(db, job_id)["locked_by"] == f"sql:{second_pid}"
    pending = db.execute(
        "SELECT count(*) AS n FROM background_jobs WHERE status = 'pending'"
    ).fetchone()
    assert pending["n"] == 2


def test_next_pending_lease_and_worker(db):
    insert_jobs(db, "a", 1)

    row = db.execute(
        "SELECT *, extract(epoch FROM lease_expires_at - now())::float AS lease_s"
        " FROM get_next_pending_jobs(5, 'etl-node-1', 90)"
    ).fetchone()

    assert row["locked_by"] == "etl-node-1"
    assert row["lease_s"] == pytest.approx(90, abs=1)


def test_next_pending_leaves_unclaimed_rows(database_dsn, db):
    insert_jobs(db, "a", 2)
    insert_jobs(db, "b", 2)
    first = open_transaction(database_dsn)
    second = open_transaction(database_dsn)
    try:
        first_rows = first.execute("SELECT id FROM get_next_pending_jobs(2)").fetchall()
        second_rows = second.execute("SELECT id FROM get_next_pending_jobs(2)").fetchall()
    finally:
        first.rollback()
        second.rollback()
        first.close()
        second.close()

    assert len(first_rows) == 2
    assert len(second_rows) == 2


def test_next_pending_priority_order(db):
    low = insert_jobs(db, "a", 1, priority=0)[0]
    high = insert_jobs(db, "b", 1, priority=5)[0]
    premium = insert_jobs(db, "a", 1, priority=0, user_type="premium")[0]
    insert_jobs(db, "c", 1, priority=10, run_at="2999-01-01T00:00:00Z")

    rows = db.execute("SELECT id FROM get_next_pending_jobs(10)").fetchall()

    assert [row["id"] for row in rows] == [high, premium, low]


def test_next_pending_empty_queue(db):
    rows = db.execute("SELECT * FROM get_next_pending_jobs(3)").fetchall()

    assert rows == []


# update_job_status


def test_update_status_to_processing(db):
    job_id = insert_jobs(db, "a", 1)[0]

    updated = db.execute(
        "SELECT update_job_status(%s, 'processing', 20, 'download') AS ok", (job_id,)
    ).fetchone()

    job = get_job(db, job_id)
    assert updated["ok"] is True
    assert job["status"] == "processing"
    assert job["progress"] == 20
    assert job["current_step"] == "download"
    assert job["started_at"] is not None
    assert job["locked_by"] is not None
    assert job["lease_expires_at"] is not None
    assert job["completed_at"] is None


@pytest.mark.parametrize("final", ["completed", "failed", "cancelled"])
def test_update_status_to_finished(db, final):
    job_id = insert_jobs(db, "a", 1)[0]
    db.execute("SELECT update_job_status(%s, 'processing', 0, NULL)", (job_id,))

    db.execute("SELECT update_job_status(%s, %s, 100, 'done')", (job_id, final))

    job = get_job(db, job_id)
    assert job["status"] == final
    assert job["completed_at"] is not None
    assert job["locked_by"] is None
    assert job["lease_expires_at"] is None


def test_update_status_back_to_pending(db):
    job_id = insert_jobs(db, "a", 1)[0]
    db.execute("SELECT update_job_status(%s, 'processing', 50, 'half')", (job_id,))

    db.execute("SELECT update_job_status(%s, 'pending', 0, NULL)", (job_id,))

    job = get_job(db, job_id)
    assert job["status"] == "pending"
    assert job["locked_by"] is None
    assert job["completed_at"] is None


def test_update_status_missing_job(db):
    updated = db.execute("SELECT update_job_status(999999, 'processing', 0, NULL) AS ok").fetchone()

    assert updated["ok"] is False


@pytest.mark.parametrize(
    ("status", "progress", "error"),
    [
        ("processing", 150, psycopg.errors.CheckViolation),
        ("processing", -1, psycopg.errors.CheckViolation),
        ("bogus", 0, psycopg.errors.InvalidTextRepresentation),
    ],
    ids=["progress-150", "progress-negative", "unknown-status"],
)
def test_update_status_rejects_invalid(db, status, progress, error):
    job_id = insert_jobs(db, "a", 1)[0]

    with pytest.raises(error):
        db.execute("SELECT update_job_status(%s, %s, %s, NULL)", (job_id, status, progress))

    job = get_job(db, job_id)
    assert job["status"] == "pending"
    assert job["progress"] == 0


# complete_job


def test_complete_job_stores_result(db):
    job_id = insert_jobs(db, "a", 1)[0]
    db.execute("SELECT * FROM get_next_pending_jobs(1)")

    first = db.execute(
        "SELECT complete_job(%s, %s::jsonb) AS ok", (job_id, '{"url": "s3://x/1.png"}')
    ).fetchone()
    again = db.execute("SELECT complete_job(%s, '{}'::jsonb) AS ok", (job_id,)).fetchone()

    job = get_job(db, job_id)
    assert first["ok"] is True
    assert again["ok"] is False
    assert job["status"] == "completed"
    assert job["result_data"] == {"url": "s3://x/1.png"}
    assert job["progress"] == 100
    assert job["completed_at"] is not None
    assert job["locked_by"] is None


def test_complete_job_missing_returns_false(db):
    row = db.execute("SELECT complete_job(424242, 'null'::jsonb) AS ok").fetchone()

    assert row["ok"] is False


@pytest.mark.parametrize("final", ["failed", "cancelled"])
def test_complete_job_finished_returns_false(db, final):
    job_id = insert_jobs(db, "a", 1)[0]
    db.execute("SELECT update_job_status(%s, %s, 0, NULL)", (job_id, final))

    row = db.execute("SELECT complete_job(%s, '1'::jsonb) AS ok", (job_id,)).fetchone()

    assert row["ok"] is False
    assert get_job(db, job_id)["status"] == final


# cleanup_old_jobs


def test_cleanup_deletes_in_batches(db):
    for index in range(35):
        status = ("completed", "failed", "cancelled")[index % 3]
        db.execute(
            "INSERT INTO background_jobs (type, status, created_at, completed_at)"
            " VALUES ('a', %s, now() - interval '60 days',"
            "         now() - interval '40 days' - make_interval(mins => %s))",
            (status, index),
        )
    recent = [
        db.execute(
            "INSERT INTO background_jobs (type, status, completed_at)"
            " VALUES ('a', 'completed', now() - interval '10 days') RETURNING id"
        ).fetchone()["id"]
        for _ in range(5)
    ]
    old_pending = insert_jobs(db, "a", 3, created_at="2000-01-01T00:00:00Z")
    newest_old = db.execute(
        "SELECT id FROM background_jobs WHERE completed_at < now() - interval '30 days'"
        " ORDER BY completed_at DESC LIMIT 25"
    ).fetchall()

    first = db.execute("SELECT cleanup_old_jobs(30, 10) AS n").fetchone()["n"]
    after_first = db.execute(
        "SELECT id FROM background_jobs WHERE completed_at < now() - interval '30 days'"
    ).fetchall()
    rest = [db.execute("SELECT cleanup_old_jobs(30, 10) AS n").fetchone()["n"] for _ in range(4)]

    assert [first, *rest] == [10, 10, 10, 5, 0]
    assert {row["id"] for row in after_first} == {row["id"] for row in newest_old}
    remaining = {row["id"] for row in db.execute("SELECT id FROM background_jobs")}
    assert remaining == set(recent) | set(old_pending)


def test_cleanup_keeps_unfinished(db):
    processing = insert_jobs(db, "a", 1)[0]
    db.execute("SELECT update_job_status(%s, 'processing', 0, NULL)", (processing,))
    db.execute("UPDATE background_jobs SET created_at = '2000-01-01', started_at = '2000-01-01'")

    deleted = db.execute("SELECT cleanup_old_jobs(0) AS n").fetchone()["n"]

    assert deleted == 0
    assert get_job(db, processing)["status"] == "processing"


def test_cleanup_rejects_negative_days(db):
    with pytest.raises(psycopg.errors.RaiseException) as caught:
        db.execute("SELECT cleanup_old_jobs(-1, 10)")

    assert "days_to_keep must be >= 0, got -1" in str(caught.value)


# requeue_jobs


def claim(db, job_type, worker="node-a"):
    return db.execute(
        "SELECT * FROM claim_jobs(ARRAY[%s], %s, 1, 60)", (job_type, worker)
    ).fetchone()


def test_requeue_counts_attempt(db):
    job_id = insert_jobs(db, "a", 1)[0]
    claim(db, "a")

    returned = db.execute(
        "SELECT id, status::text AS status FROM requeue_jobs(ARRAY[%s]::bigint[], 'node lost')",
        (job_id,),
    ).fetchall()

    job = get_job(db, job_id)
    assert returned == [{"id": job_id, "status": "pending"}]
    assert job["status"] == "pending"
    assert job["retry_count"] == 1
    assert job["error"] == "node lost"
    assert job["locked_by"] is None
    assert job["lease_expires_at"] is None
    assert job["completed_at"] is None
    assert len(job["attempts"]) == 1
    assert job["attempts"][0]["error"] == "node lost"
    assert job["attempts"][0]["worker"] == "node-a"
    assert job["attempts"][0]["attempt"] == 1


def test_requeue_without_counting(db):
    job_id = insert_jobs(db, "a", 1)[0]
    claim(db, "a")

    db.execute("SELECT * FROM requeue_jobs(ARRAY[%s]::bigint[], 'shutdown', false)", (job_id,))

    job = get_job(db, job_id)
    assert job["status"] == "pending"
    assert job["retry_count"] == 0
    assert job["error"] is None


def test_requeue_ignores_unclaimed(db):
    pending = insert_jobs(db, "a", 1)[0]

    returned = db.execute(
        "SELECT id FROM requeue_jobs(ARRAY[%s]::bigint[], 'node lost')", (pending,)
    ).fetchall()

    job = get_job(db, pending)
    assert returned == []
    assert job["retry_count"] == 0
    assert job["attempts"] == []


def test_requeue_spent_retries_fails_job(db):
    job_id = insert_jobs(db, "a", 1, max_retries=1, retry_count=1)[0]
    claim(db, "a")

    db.execute("SELECT * FROM requeue_jobs(ARRAY[%s]::bigint[], 'node lost')", (job_id,))

    job = get_job(db, job_id)
    assert job["status"] == "failed"
    assert job["error"] == "node lost"
    assert job["completed_at"] is not None
    assert job["locked_by"] is None


def test_requeue_spent_retries_count(db):
    job_id = insert_jobs(db, "a", 1, max_retries=1, retry_count=1)[0]
    claim(db, "a")

    db.execute("SELECT * FROM requeue_jobs(ARRAY[%s]::bigint[], 'node lost')", (job_id,))

    assert get_job(db, job_id)["retry_count"] == 1


# Notifications


def listener(database_dsn):
    conn = psycopg.connect(database_dsn, autocommit=True)
    conn.execute("LISTEN jobvisor_jobs")
    return conn


def test_insert_notifies_once_per_type(database_dsn, db):
    with listener(database_dsn) as listening:
        db.execute(
            "INSERT INTO background_jobs (type)"
            " SELECT t FROM unnest(ARRAY['a', 'a', 'b', 'a', 'c', 'b']) AS t"
        )
        payloads = [note.payload for note in listening.notifies(timeout=0.5, stop_after=10)]

    assert sorted(payloads) == ["a", "b", "c"]


def test_requeue_notifies(database_dsn, db):
    job_id = insert_jobs(db, "r", 1)[0]
    claim(db, "r")

    with listener(database_dsn) as listening:
        db.execute("SELECT * FROM requeue_jobs(ARRAY[%s]::bigint[], 'node lost')", (job_id,))
        payloads = [note.payload for note in listening.notifies(timeout=1.0, stop_after=1)]

    assert payloads == ["r"]


# claim_jobs running limits


def claim_capped(db, worker, batch, type_limit=None, max_per_user=None):
    rows = db.execute(
        "SELECT id, user_id FROM claim_jobs(ARRAY['capped'], %s, %s, 60, %s, %s)",
        (worker, batch, None if type_limit is None else [type_limit], max_per_user),
    ).fetchall()
    return rows


def test_type_limit_counts_workers_not_rows(db):
    insert_jobs(db, "capped", 120)

    first = claim_capped(db, "w1", 50, type_limit=2)
    second = claim_capped(db, "w2", 50, type_limit=2)
    third = claim_capped(db, "w3", 50, type_limit=2)
    again = claim_capped(db, "w1", 10, type_limit=2)

    assert len(first) == 50
    assert len(second) == 50
    assert third == []
    assert len(again) == 10


def test_user_limit_counts_workers_not_rows(db):
    insert_jobs(db, "capped", 30, user_id="ana")

    first = claim_capped(db, "w1", 20, max_per_user=1)
    second = claim_capped(db, "w2", 20, max_per_user=1)

    assert len(first) == 20
    assert second == []
