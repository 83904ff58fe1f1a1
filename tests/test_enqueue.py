"""Enqueueing: what is stored for valid input, and what is rejected without storing anything."""

from __future__ import annotations

import datetime as dt
import uuid

import psycopg
import pytest
from psycopg.conninfo import make_conninfo
from psycopg.rows import dict_row

from jobvisor import App, Settings
from jobvisor.errors import ConfigError, InvalidJobError, UnknownJobTypeError


def job_count(db) -> int:
    return db.execute("SELECT count(*) AS n FROM background_jobs").fetchone()["n"]


def register(app: App, *names: str) -> App:
    for name in names:
        app.job(name)(lambda ctx, data: None)
    return app


# Most tests here share one database per module, emptied before each test, because creating
# a database per test costs more than the tests themselves.


@pytest.fixture(scope="module")
def module_dsn(server_dsn, template_database):
    name = f"jobvisor_test_enqueue_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_database}"')
    yield make_conninfo(server_dsn, dbname=name)
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def db(module_dsn):
    with psycopg.connect(module_dsn, autocommit=True, row_factory=dict_row) as conn:
        conn.execute("TRUNCATE background_jobs RESTART IDENTITY")
        yield conn


@pytest.fixture
def app(module_dsn, db):
    app = register(
        App(module_dsn, settings=Settings.load(environ={})), "plain", "auto-story", "storybook"
    )
    yield app
    app.close()


@pytest.fixture
def small_app(module_dsn, db):
    settings = Settings.load(environ={}, max_payload_bytes=1000)
    app = register(App(module_dsn, settings=settings), "plain")
    yield app
    app.close()


# Input data that jsonb cannot store


class Opaque:
    pass


@pytest.mark.parametrize(
    ("data", "named", "path"),
    [
        ({1, 2}, "set", "$"),
        (Opaque(), "Opaque", "$"),
        (b"raw", "bytes", "$"),
        ({"a": [1, {"b": dt.date(2024, 1, 1)}]}, "date", "$.a[1].b"),
        ({"a": [1, {"b": {1, 2}}]}, "set", "$.a[1].b"),
        ({(1, 2): "tuple key"}, "tuple", "$ (key (1, 2))"),
    ],
    ids=["set", "object", "bytes", "nested-date", "nested-set", "tuple-key"],
)
def test_unserializable_type_rejected(app, db, data, named, path):
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", data)

    message = str(caught.value)
    assert f"type {named} at {path}," in message
    assert "input_data" in message
    assert job_count(db) == 0


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"k": "a\x00b"}, "$.k"),
        ({"k\x00": 1}, "$ (key 'k\\x00')"),
        ({"a": [{"b": "x\x00"}]}, "$.a[0].b"),
        ({"a": {"b\x00c": "v"}}, "$.a (key 'b\\x00c')"),
        ("top\x00", "$"),
    ],
    ids=["value", "key", "nested-value", "nested-key", "top-level"],
)
def test_nul_character_rejected(app, db, data, path):
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", data)

    message = str(caught.value)
    assert "NUL" in message
    assert f"at {path}" in message
    assert job_count(db) == 0


def test_escaped_nul_text_accepted(app, db):
    # A backslash followed by "u0000" is six ordinary characters, not a NUL.
    data = {"k": "\\u0000"}
    job_id = app.enqueue("plain", data)

    row = db.execute("SELECT input_data FROM background_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row["input_data"] == data


@pytest.mark.parametrize(
    ("field", "value"),
    [("user_id", "u\x001"), ("user_type", "pre\x00mium")],
)
def test_nul_in_user_fields_rejected(app, db, field, value):
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", {}, **{field: value})

    message = str(caught.value)
    assert field in message
    assert "NUL" in message
    assert job_count(db) == 0


@pytest.mark.parametrize(
    ("value", "name"),
    [(float("nan"), "NaN"), (float("inf"), "Infinity"), (float("-inf"), "-Infinity")],
    ids=["nan", "inf", "-inf"],
)
def test_non_finite_number_rejected(app, db, value, name):
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", {"x": [1, {"y": value}]})

    message = str(caught.value)
    assert f"contains {name} at $.x[1].y" in message
    assert job_count(db) == 0


def test_non_finite_key_rejected(app, db):
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", {float("nan"): 1})

    assert "NaN" in str(caught.value)
    assert job_count(db) == 0


def test_lone_surrogate_rejected(app, db):
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", {"k": ["ok", "x\ud800"]})

    message = str(caught.value)
    assert "surrogate" in message
    assert "at $.k[1]" in message
    assert job_count(db) == 0


# Payload size


def test_payload_over_max_rejected(small_app, db):
    app = small_app

    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", "x" * 999)

    message = str(caught.value)
    assert "1001 bytes" in message
    assert "maximum of 1000 bytes" in message
    assert job_count(db) == 0


def test_payload_at_max_accepted(small_app, db):
    app = small_app

    # Two quotes plus 998 characters make exactly 1000 bytes of JSON.
    app.enqueue("plain", "x" * 998)

    assert job_count(db) == 1


def test_payload_size_counts_utf8_bytes(small_app, db):
    app = small_app

    # Each "é" is one character but two UTF-8 bytes: 2 + 2 * 500 = 1002 bytes.
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", "é" * 500)

    assert "1002 bytes" in str(caught.value)
    assert job_count(db) == 0


def test_default_payload_max_is_1_mib(app, db):
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", {"blob": "x" * 1_100_000})

    message = str(caught.value)
    assert "maximum of 1048576 bytes" in message
    assert job_count(db) == 0


# Job type, priority and delay


def test_unknown_job_type_rejected(app, db):
    with pytest.raises(UnknownJobTypeError) as caught:
        app.enqueue("no-such-type", {})

    message = str(caught.value)
    assert "'no-such-type'" in message
    assert "plain" in message
    assert isinstance(caught.value, InvalidJobError)
    assert job_count(db) == 0


@pytest.mark.parametrize("priority", [11, -11, 1.5, True, "3"], ids=repr)
def test_priority_out_of_range_rejected(app, db, priority):
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", {}, priority=priority)

    message = str(caught.value)
    assert f"priority {priority!r}" in message
    assert "-10 to 10" in message
    assert job_count(db) == 0


@pytest.mark.parametrize("delay", [-1, -0.001, dt.timedelta(seconds=-5)], ids=repr)
def test_negative_delay_rejected(app, db, delay):
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", {}, delay=delay)

    message = str(caught.value)
    assert repr(delay) in message
    assert "negative" in message
    assert job_count(db) == 0


@pytest.mark.parametrize("delay", [float("nan"), float("inf"), "10"], ids=repr)
def test_non_numeric_delay_rejected(app, db, delay):
    with pytest.raises(InvalidJobError) as caught:
        app.enqueue("plain", {}, delay=delay)

    assert repr(delay) in str(caught.value)
    assert job_count(db) == 0


# Database connection strings


@pytest.mark.parametrize("dsn", ["postgresql://host:notaport/db", "host=x port=abc"])
def test_malformed_dsn_rejected(dsn):
    with pytest.raises(ConfigError) as caught:
        App(dsn, settings=Settings.load(environ={}))

    assert dsn in str(caught.value)


def test_garbage_dsn_env_rejected(monkeypatch, db):
    monkeypatch.setenv("JOBVISOR_DSN", "garbage")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    app = register(App(settings=Settings.load(environ={})), "plain")

    with pytest.raises(ConfigError) as caught:
        _ = app.dsn

    message = str(caught.value)
    assert "JOBVISOR_DSN" in message
    assert "garbage" in message

    with pytest.raises(ConfigError):
        app.enqueue("plain", {})
    assert job_count(db) == 0


# Batches


def test_enqueue_many_bad_row_stores_nothing(app, db):
    rows = [{"job_type": "plain", "data": {"n": n}} for n in range(100)]
    rows[50] = {"job_type": "plain", "data": {"n": float("nan")}}

    with pytest.raises(InvalidJobError) as caught:
        app.enqueue_many(rows)

    message = str(caught.value)
    assert "row 50" in message
    assert "$.n" in message
    assert job_count(db) == 0


@pytest.mark.parametrize(
    ("bad_row", "expected"),
    [
        ({"job_type": "nope", "data": {}}, "unknown job type 'nope'"),
        ({"job_type": "plain"}, "missing key 'data'"),
        ({"job_type": "plain", "data": {}, "colour": "red"}, "unknown keys ['colour']"),
        ({"job_type": "plain", "data": {}, "priority": 99}, "priority 99"),
        ({"job_type": "plain", "data": {}, "delay": -3}, "delay -3"),
        (["plain", {}], "expected a dict"),
    ],
    ids=["type", "missing-data", "extra-key", "priority", "delay", "not-a-dict"],
)
def test_enqueue_many_names_bad_row(app, db, bad_row, expected):
    rows = [{"job_type": "plain", "data": {}} for _ in range(5)]
    rows[3] = bad_row

    with pytest.raises(InvalidJobError) as caught:
        app.enqueue_many(rows)

    message = str(caught.value)
    assert message.startswith("row 3: ")
    assert expected in message
    assert job_count(db) == 0


def test_enqueue_many_empty_returns_nothing(app, db):
    assert app.enqueue_many([]) == []
    assert job_count(db) == 0


@pytest.mark.timeout(60)
def test_enqueue_many_10000_ids_in_order(app, db):
    rows = [{"job_type": "plain", "data": {"n": n}} for n in range(10_000)]

    ids = app.enqueue_many(rows)

    stored = db.execute(
        "SELECT id, (input_data->>'n')::int AS n FROM background_jobs ORDER BY id"
    ).fetchall()
    assert len(ids) == 10_000
    assert ids == [row["id"] for row in stored]
    assert [row["n"] for row in stored] == list(range(10_000))


# What is stored


def test_enqueue_returns_new_ids(app):
    first = app.enqueue("plain", {})
    second = app.enqueue("plain", {})

    assert isinstance(first, int)
    assert second > first


def test_enqueue_stores_fields(app, db):
    data = {
        "text": "héllo ✓",
        "n": 42,
        "x": 1.25,
        "flags": [True, False, None],
        "nested": {"a": [1, [2, {"b": "c"}]]},
        "backslash": "\\u0000 stays text",
    }

    job_id = app.enqueue("plain", data, user_id=42, user_type="premium")

    row = db.execute(
        "SELECT *, status::text AS status_text FROM background_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row["type"] == "plain"
    assert row["input_data"] == data
    assert row["user_id"] == "42"
    assert row["user_type"] == "premium"
    assert row["status_text"] == "pending"
    assert row["priority"] == 0
    assert row["retry_count"] == 0
    assert row["max_retries"] == 3
    assert row["run_at"] == row["created_at"]
    assert row["locked_by"] is None
    assert row["attempts"] == []


@pytest.mark.parametrize(
    ("job_type", "priority"), [("auto-story", 3), ("storybook", 2), ("plain", 0)]
)
def test_priority_defaults_from_type(app, db, job_type, priority):
    job_id = app.enqueue(job_type, {})

    row = db.execute("SELECT priority FROM background_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row["priority"] == priority


@pytest.mark.parametrize("priority", [-10, -5, 10])
def test_explicit_priority_stored(app, db, priority):
    job_id = app.enqueue("auto-story", {}, priority=priority)

    row = db.execute("SELECT priority FROM background_jobs WHERE id = %s", (job_id,)).fetchone()
    assert row["priority"] == priority


def test_type_priority_and_retries_from_registration(module_dsn, db):
    app = App(module_dsn, settings=Settings.load(environ={}))
    app.job("custom", priority=7, max_retries=5)(lambda ctx, data: None)

    job_id = app.enqueue("custom", {})
    app.close()

    row = db.execute(
        "SELECT priority, max_retries FROM background_jobs WHERE id = %s", (job_id,)
    ).fetchone()
    assert row["priority"] == 7
    assert row["max_retries"] == 5


@pytest.mark.parametrize("delay", [30, 2.5, dt.timedelta(minutes=2)], ids=repr)
def test_delay_sets_run_at(app, db, delay):
    seconds = delay.total_seconds() if isinstance(delay, dt.timedelta) else delay

    job_id = app.enqueue("plain", {}, delay=delay)

    row = db.execute(
        "SELECT extract(epoch FROM run_at - created_at)::float AS ahead,"
        " extract(epoch FROM run_at - now())::float AS from_now"
        " FROM background_jobs WHERE id = %s",
        (job_id,),
    ).fetchone()
    assert row["ahead"] == pytest.approx(seconds, abs=1e-6)
    assert seconds - 5 < row["from_now"] <= seconds


def test_enqueue_many_stores_row_options(app, db):
    rows = [
        {"job_type": "plain", "data": {"i": 0}},
        {"job_type": "auto-story", "data": {"i": 1}, "user_id": 7, "user_type": "admin"},
        {"job_type": "storybook", "data": {"i": 2}, "priority": -4, "delay": 60},
    ]

    ids = app.enqueue_many(rows)

    stored = {
        row["id"]: row
        for row in db.execute(
            "SELECT id, type, input_data, user_id, user_type, priority,"
            " extract(epoch FROM run_at - created_at)::float AS ahead FROM background_jobs"
        )
    }
    first, second, third = (stored[job_id] for job_id in ids)
    assert first["type"] == "plain"
    assert first["input_data"] == {"i": 0}
    assert first["priority"] == 0
    assert first["ahead"] == 0
    assert second["user_id"] == "7"
    assert second["user_type"] == "admin"
    assert second["priority"] == 3
    assert third["priority"] == -4
    assert third["ahead"] == pytest.approx(60, abs=1e-6)


def test_bad_row_after_first_chunk_stores_none(app, db):
    rows = [{"job_type": "plain", "data": {"n": n}} for n in range(10_005)]
    rows.append({"job_type": "plain", "data": {"bad": float("nan")}})

    with pytest.raises(InvalidJobError) as caught:
        app.enqueue_many(rows)

    assert "row 10005" in str(caught.value)
    assert job_count(db) == 0


def test_many_chunks_keep_order(app, db):
    ids = app.enqueue_many([{"job_type": "plain", "data": {"n": n}} for n in range(25_000)])

    assert len(ids) == 25_000
    assert ids == sorted(ids)
    rows = db.execute("SELECT id, input_data FROM background_jobs ORDER BY id").fetchall()
    assert [row["input_data"]["n"] for row in rows] == list(range(25_000))
    assert [row["id"] for row in rows] == ids


def test_empty_enqueue_many_stores_nothing(app, db):
    assert app.enqueue_many([]) == []
    assert job_count(db) == 0
