"""The telemetry snapshot contract and the `jobvisor telemetry` and `jobvisor health` commands.

The commands run as subprocesses on snapshot files that the tests write into a temporary
JOBVISOR_HOME. None of them needs a database.
"""

from __future__ import annotations

import copy
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jsonschema
import numpy as np
import pytest
from conftest import REPO, run_cli

from jobvisor.telemetry.health import evaluate
from jobvisor.telemetry.plot import plot_window
from jobvisor.telemetry.shm import SAMPLE_FIELDS, create
from jobvisor.telemetry.snapshot import SCHEMA, read_snapshot, snapshot_path, write_snapshot

SCHEMA_PATH = REPO / "docs" / "telemetry.schema.json"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
MIN_PNG_BYTES = 20_000  # four panels with lines at 1000 × 1000 pixels take far more
WINDOW_ROWS = 120
RING_ROWS = 300
READS = 1_000
MIN_REWRITES = 20  # rewrites that must overlap the reads for the reader test to count
FORK = multiprocessing.get_context("fork")


def sample_rows(count: int, end: float, interval_s: float = 1.0) -> list[list[float | None]]:
    """Return ``count`` rows of SAMPLE_FIELDS, one per ``interval_s``, the last at ``end``."""
    rows: list[list[float | None]] = []
    for i in range(count):
        t = end - (count - 1 - i) * interval_s
        phase = i / max(count - 1, 1)
        values: dict[str, float | None] = {
            "timestamp": t,
            "cpu_percent": 35.0 + 30.0 * math.sin(6.0 * phase),
            "memory_percent": 52.0 + 5.0 * phase,
            "active_jobs": float(1 + i % 3),
            "queue_depth": float(max(0, 14 - i // 10)),
            "throughput_per_min": 8.0 + 6.0 * phase,
            "latency_p50_s": 3.5,
            "latency_p95_s": None if i < 3 else 8.0 + phase,
            "error_rate": 0.02,
            "efficiency": 0.8,
            "processing_s": 40.0,
            "concurrency_limit": 4.0 if i < count // 2 else 3.0,
            "memory_allocated_mb": 300.0,
            "cpu_allocated_percent": 60.0,
        }
        rows.append([values.get(name, 0.0) for name in SAMPLE_FIELDS])
    return rows


def full_snapshot(
    *, now: float | None = None, workers: int = 3, window_rows: int = WINDOW_ROWS, **metrics: Any
) -> dict[str, Any]:
    """Return a snapshot with every key of the contract, changed by ``metrics``."""
    now = time.time() if now is None else now
    decisions = [
        {"at": now - 95.0, "previous": 4, "limit": 5, "rule": "queue-high",
         "reason": "queue depth 24 above 20 with CPU 42 % and memory 55 %: 4 -> 5"},
        {"at": now - 12.0, "previous": 5, "limit": 4, "rule": "load-high",
         "reason": "CPU 86 % above 80 %: 5 -> 4"},
    ]  # fmt: skip
    worker_rows = []
    for i in range(workers):
        job_type = "cartoonize" if i % 2 == 0 else "story"
        state = ("running", "throttled", "idle")[i % 3]
        worker_rows.append({
            "pid": 41000 + i,
            "worker_id": f"node-a:40999:{41000 + i}:ab{i:02x}",
            "job_type": job_type,
            "state": state,
            "job_id": None if state == "idle" else 9000 + i,
            "jobs_done": 17 + i,
            "rss_mb": 182.4 + i,
            "uss_mb": 96.2 + i,
            "cpu_percent": 54.0 if state == "running" else 3.5,
            "budget": {"memory_mb": 200, "cpu_percent": 30},
        })  # fmt: skip
    snapshot: dict[str, Any] = {
        "schema": SCHEMA,
        "written_at": now,
        "node": {
            "hostname": "node-a",
            "supervisor_pid": 40999,
            "started_at": now - 3600.0,
            "cpu_count": 8,
            "memory_total_mb": 15872.0,
            "state": "running",
            "sample_interval_s": 1.0,
            "snapshot_interval_s": 5.0,
            "telemetry_segment": None,
            "cpu_throttle": "signals",
        },
        "metrics": {
            "cpu_percent": 42.5,
            "memory_percent": 55.1,
            "memory_available_mb": 7126.0,
            "active_jobs": 2,
            "queue_depth": 3,
            "queue_depth_by_job_type": {"cartoonize": 2, "story": 1},
            "throughput_per_min": 12.0,
            "latency_p50_s": 4.2,
            "latency_p95_s": 9.8,
            "processing_avg_s": 41.0,
            "error_rate": 0.02,
            "efficiency": 0.81,
            "window_s": 60.0,
            **metrics,
        },
        "trends": {
            "samples": 5,
            "per": "minute",
            "cpu_percent": 1.5,
            "memory_percent": 0.2,
            "queue_depth": -2.0,
            "active_jobs": 0.0,
            "throughput_per_min": 0.6,
            "latency_p95_s": -0.1,
        },
        "concurrency": {
            "limit": 4,
            "base_limit": 4,
            "ceiling": 8,
            "level": 2,
            "adaptive": True,
            "cooldown_s": 30.0,
            "max_jobs_per_user": 3,
            "by_job_type": {"cartoonize": 4, "story": 2},
            "paused_job_types": [],
            "last_decision": decisions[-1],
            "decisions": decisions,
        },
        "workers": worker_rows,
        "allocations": {
            "memory": {"allocated": 400.0, "total": 2048.0, "available": 1648.0,
                       "by_job_type": {"cartoonize": 200.0, "story": 200.0}},
            "cpu": {"allocated": 60.0, "total": 560.0, "available": 500.0,
                    "by_job_type": {"cartoonize": 30.0, "story": 30.0}},
            "usage": {"memory_mb_by_job_type": {"cartoonize": 278.6, "story": 97.2},
                      "cpu_percent_by_job_type": {"cartoonize": 54.0, "story": 3.5}},
        },  # fmt: skip
        "breakers": [
            {"name": "image-api", "state": "closed", "failures": 0, "opened_at": None, "probes": 0},
            {"name": "llm-api", "state": "half_open", "failures": 5, "opened_at": now - 40.0,
             "probes": 1},
        ],  # fmt: skip
        "window": {"fields": list(SAMPLE_FIELDS), "rows": sample_rows(window_rows, now)},
    }
    snapshot["health"] = evaluate(snapshot)
    return snapshot


@pytest.fixture(scope="module")
def schema() -> dict[str, Any]:
    return json.loads(SCHEMA_PATH.read_text(encoding="utf-8"))


@pytest.fixture
def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(schema)


@pytest.fixture
def cli_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """Environment for jobvisor commands, with JOBVISOR_HOME in ``tmp_path``.

    JOBVISOR_HOME is also set in this process, so that snapshot_path() here and in the
    commands name the same file.
    """
    home = tmp_path / "home"
    monkeypatch.setenv("JOBVISOR_HOME", str(home))
    env = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "JOBVISOR_DSN"}}
    env["JOBVISOR_HOME"] = str(home)
    env["PYTHONUNBUFFERED"] = "1"
    env["COLUMNS"] = "80"
    return env


def json_output(result: Any) -> Any:
    assert result.stdout, f"no output; stderr: {result.stderr}"
    return json.loads(result.stdout)


# -- schema ----------------------------------------------------------------------------------


def test_schema_is_valid_draft_2020_12(schema: dict[str, Any]) -> None:
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema.Draft202012Validator.check_schema(schema)


def test_full_snapshot_validates(validator: jsonschema.Draft202012Validator) -> None:
    snapshot = full_snapshot()
    errors = [error.message for error in validator.iter_errors(snapshot)]
    assert errors == []


def test_written_snapshot_validates(
    cli_env: dict[str, str], validator: jsonschema.Draft202012Validator
) -> None:
    write_snapshot(full_snapshot())
    errors = [error.message for error in validator.iter_errors(read_snapshot())]
    assert errors == []


def test_idle_stopped_snapshot_validates(validator: jsonschema.Draft202012Validator) -> None:
    snapshot = full_snapshot(workers=0, window_rows=0, active_jobs=0, queue_depth=0,
                             throughput_per_min=0.0, latency_p50_s=None, latency_p95_s=None,
                             processing_avg_s=None, error_rate=None, efficiency=None)  # fmt: skip
    snapshot["node"]["state"] = "stopped"
    snapshot["concurrency"].update(level=None, last_decision=None, decisions=[])
    snapshot["breakers"] = []
    errors = [error.message for error in validator.iter_errors(snapshot)]
    assert errors == []


def test_schema_requires_every_top_level_key(
    schema: dict[str, Any], validator: jsonschema.Draft202012Validator
) -> None:
    snapshot = full_snapshot()
    assert set(schema["required"]) == set(snapshot)
    for key in schema["required"]:
        broken = copy.deepcopy(snapshot)
        del broken[key]
        assert not validator.is_valid(broken), key


MISSING_KEYS = [
    ("node", "telemetry_segment"),
    ("node", "cpu_throttle"),
    ("metrics", "error_rate"),
    ("metrics", "queue_depth_by_job_type"),
    ("trends", "latency_p95_s"),
    ("concurrency", "last_decision"),
    ("concurrency", "last_decision", "reason"),
    ("concurrency", "decisions", 0, "rule"),
    ("workers", 0, "uss_mb"),
    ("workers", 0, "budget", "cpu_percent"),
    ("allocations", "usage"),
    ("allocations", "cpu", "by_job_type"),
    ("breakers", 1, "probes"),
    ("health", "checks", 0, "message"),
    ("window", "rows"),
]


@pytest.mark.parametrize("path", MISSING_KEYS, ids=lambda path: ".".join(map(str, path)))
def test_schema_rejects_missing_key(
    path: tuple[Any, ...], validator: jsonschema.Draft202012Validator
) -> None:
    snapshot = full_snapshot()
    parent = snapshot
    for part in path[:-1]:
        parent = parent[part]
    del parent[path[-1]]
    assert not validator.is_valid(snapshot)


WRONG_VALUES = [
    (("node", "state"), "paused"),
    (("node", "cpu_throttle"), "nice"),
    (("workers", 1, "state"), "busy"),
    (("breakers", 0, "state"), "broken"),
    (("health", "status"), "skipped"),
    (("health", "checks", 0, "status"), "fine"),
    (("trends", "per"), "second"),
    (("schema",), "jobvisor.telemetry.snapshot/2"),
    (("metrics", "error_rate"), 1.5),
    (("metrics", "active_jobs"), "2"),
    (("workers", 0, "job_id"), 1.5),
    (("node", "telemetry_segment"), "other_segment"),
]


@pytest.mark.parametrize(
    ("path", "value"), WRONG_VALUES, ids=[".".join(map(str, path)) for path, _ in WRONG_VALUES]
)
def test_schema_rejects_wrong_value(
    path: tuple[Any, ...], value: Any, validator: jsonschema.Draft202012Validator
) -> None:
    snapshot = full_snapshot()
    parent = snapshot
    for part in path[:-1]:
        parent = parent[part]
    parent[path[-1]] = value
    assert not validator.is_valid(snapshot)


@pytest.mark.parametrize("section", ["node", "metrics", "trends", "concurrency", "health"])
def test_schema_rejects_unknown_key(
    section: str, validator: jsonschema.Draft202012Validator
) -> None:
    snapshot = full_snapshot()
    snapshot[section]["unexpected"] = 1
    assert not validator.is_valid(snapshot)


# -- jobvisor telemetry ------------------------------------------------------------------------


def test_telemetry_json_prints_every_key(cli_env: dict[str, str], schema: dict[str, Any]) -> None:
    write_snapshot(full_snapshot())
    result = run_cli(["telemetry", "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    printed = json_output(result)
    assert set(printed) == set(schema["required"])
    assert printed["node"]["hostname"] == "node-a"


def test_telemetry_table_shows_new_fields(cli_env: dict[str, str]) -> None:
    write_snapshot(full_snapshot(cpu_percent=42.5, throughput_per_min=12.0, latency_p95_s=9.8))
    result = run_cli(["telemetry"], cli_env)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "node-a supervisor 40999 (running)" in out
    assert "health ok" in out
    assert "CPU 42 %" in out
    assert "limit 4 (level 2)" in out
    assert "throughput 12.0/min" in out
    assert "p95 latency 9.8 s" in out
    assert "USS MB" in out
    assert "96.2" in out
    assert "throttled" in out
    assert "(load-high): CPU 86 % above 80 %: 5 -> 4" in out
    assert "…" not in out  # rich marks a cell or line it truncated with an ellipsis


def test_telemetry_without_snapshot_exits_1(cli_env: dict[str, str]) -> None:
    result = run_cli(["telemetry"], cli_env)
    assert result.returncode == 1
    assert str(snapshot_path()) in result.stderr
    assert "jobvisor run" in result.stderr


def assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > MIN_PNG_BYTES


def test_plot_from_window(cli_env: dict[str, str], tmp_path: Path) -> None:
    write_snapshot(full_snapshot())
    out = tmp_path / "out.png"
    result = run_cli(["telemetry", "--plot", str(out)], cli_env)
    assert result.returncode == 0, result.stderr
    assert_png(out)
    assert f"wrote {out}: {WINDOW_ROWS} samples from the snapshot window" in result.stdout


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs /dev/shm (Linux)")
def test_plot_from_live_segment(cli_env: dict[str, str], tmp_path: Path) -> None:
    block = create(ring_capacity=1024, slot_count=2, breaker_count=1)
    try:
        for row in sample_rows(RING_ROWS, time.time()):
            block.append([np.nan if value is None else value for value in row])
        snapshot = full_snapshot()
        snapshot["node"]["telemetry_segment"] = block.name
        write_snapshot(snapshot)
        out = tmp_path / "live.png"
        result = run_cli(["telemetry", "--plot", str(out)], cli_env)
    finally:
        block.unlink()
        block.close()
    assert result.returncode == 0, result.stderr
    assert_png(out)
    assert f"{RING_ROWS} samples from shared memory {block.name}" in result.stdout


def test_plot_missing_segment_uses_window(cli_env: dict[str, str], tmp_path: Path) -> None:
    snapshot = full_snapshot()
    snapshot["node"]["telemetry_segment"] = "jobvisor_999999999_deadbeef"
    write_snapshot(snapshot)
    out = tmp_path / "fallback.png"
    result = run_cli(["telemetry", "--plot", str(out)], cli_env)
    assert result.returncode == 0, result.stderr
    assert_png(out)
    assert "from the snapshot window" in result.stdout


def test_plot_empty_window_exits_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    write_snapshot(full_snapshot(window_rows=0))
    out = tmp_path / "empty.png"
    result = run_cli(["telemetry", "--plot", str(out)], cli_env)
    assert result.returncode == 1
    assert "no samples" in result.stderr
    assert not out.exists()


def test_plot_window_single_sample(tmp_path: Path) -> None:
    columns = {"timestamp": np.array([time.time()]), "queue_depth": np.array([3.0])}
    written = plot_window(columns, tmp_path / "one.png", "one sample")
    assert written == tmp_path / "one.png"
    assert_png(written)


def test_plot_window_needs_timestamps(tmp_path: Path) -> None:
    columns = {"timestamp": np.array([np.nan, np.nan]), "queue_depth": np.array([1.0, 2.0])}
    with pytest.raises(ValueError, match="no samples with a timestamp"):
        plot_window(columns, tmp_path / "none.png", "no timestamps")
    assert not (tmp_path / "none.png").exists()


def test_plot_unwritable_path_exits_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    write_snapshot(full_snapshot())
    out = tmp_path / "missing-directory" / "chart.png"
    result = run_cli(["telemetry", "--plot", str(out)], cli_env)
    assert result.returncode == 1
    assert f"failed to write {out}" in result.stderr
    assert not out.exists()


def test_plot_without_matplotlib_exits_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    write_snapshot(full_snapshot())
    out = tmp_path / "none.png"
    # A None entry in sys.modules makes every import of that module raise ImportError.
    code = (
        "import sys; sys.modules['matplotlib'] = None; from jobvisor.cli import main; "
        f"sys.exit(main(['telemetry', '--plot', {str(out)!r}]))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], env=cli_env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1
    assert "jobvisor[plot]" in result.stderr
    assert not out.exists()


# -- jobvisor health -------------------------------------------------------------------------


def test_health_healthy_exits_0(cli_env: dict[str, str]) -> None:
    write_snapshot(full_snapshot())
    result = run_cli(["health", "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    report = json_output(result)
    assert set(report) == {"status", "checks"}
    assert report["status"] == "ok"
    assert {check["status"] for check in report["checks"]} == {"ok"}


def test_health_high_cpu_exits_2(cli_env: dict[str, str]) -> None:
    snapshot = full_snapshot()
    snapshot["metrics"]["cpu_percent"] = 95.0
    # The command evaluates the metrics again instead of trusting the stored health.
    assert snapshot["health"]["status"] == "ok"
    write_snapshot(snapshot)
    result = run_cli(["health", "--json"], cli_env)
    assert result.returncode == 2, result.stderr
    report = json_output(result)
    assert report["status"] == "critical"
    cpu = next(check for check in report["checks"] if check["name"] == "CPU utilization")
    assert cpu["status"] == "critical"
    assert cpu["value"] == 95.0


def test_health_warning_exits_0(cli_env: dict[str, str]) -> None:
    write_snapshot(full_snapshot(memory_percent=90.0))
    result = run_cli(["health", "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    assert json_output(result)["status"] == "warning"


def test_health_without_snapshot_exits_1(cli_env: dict[str, str]) -> None:
    result = run_cli(["health", "--json"], cli_env)
    assert result.returncode == 1
    assert result.stdout == ""
    assert str(snapshot_path()) in result.stderr


def test_health_stale_snapshot_exits_2(cli_env: dict[str, str]) -> None:
    write_snapshot(full_snapshot(now=time.time() - 600.0))
    result = run_cli(["health", "--json"], cli_env)
    assert result.returncode == 2, result.stderr
    report = json_output(result)
    assert report["checks"][0]["name"] == "snapshot age"
    assert report["checks"][0]["status"] == "critical"


def test_health_stopped_supervisor_warning(cli_env: dict[str, str]) -> None:
    snapshot = full_snapshot(now=time.time() - 600.0)
    snapshot["node"]["state"] = "stopped"
    write_snapshot(snapshot)
    result = run_cli(["health", "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    report = json_output(result)
    assert report["status"] == "warning"
    assert report["checks"][0]["name"] == "supervisor state"


def test_health_checks_match_schema(cli_env: dict[str, str], schema: dict[str, Any]) -> None:
    write_snapshot(full_snapshot(queue_depth=30, processing_avg_s=None))
    result = run_cli(["health", "--json"], cli_env)
    assert result.returncode == 0, result.stderr
    health_schema = {**schema["properties"]["health"], "$defs": schema["$defs"]}
    validator = jsonschema.Draft202012Validator(health_schema)
    errors = [error.message for error in validator.iter_errors(json_output(result))]
    assert errors == []


def test_health_table(cli_env: dict[str, str]) -> None:
    snapshot = full_snapshot(queue_depth=30)
    snapshot["concurrency"]["paused_job_types"] = ["story"]
    write_snapshot(snapshot)
    result = run_cli(["health"], cli_env)
    assert result.returncode == 2, result.stderr
    out = result.stdout
    assert "health of node-a supervisor 40999: critical" in out
    for column in ("check", "value", "status", "target", "warning", "critical"):
        assert column in out
    assert "queue depth" in out
    assert "30 jobs" in out
    assert "> 50 jobs" in out
    assert "warning: queue depth is 30 jobs, past the warning level of > 20 jobs" in out
    assert "1 job type is paused after repeated worker crashes: story" in out
    assert "…" not in out


# -- concurrent reads --------------------------------------------------------------------------


def _rewrite_forever(path: Path, stop: Any, rewrites: Any) -> None:
    """Rewrite the snapshot at ``path`` with varying sizes until ``stop`` is set."""
    now = time.time()
    size = 0
    while not stop.is_set():
        workers = size % 40
        write_snapshot(full_snapshot(now=now, workers=workers, window_rows=size % 121), path)
        with rewrites.get_lock():
            rewrites.value += 1
        size += 37


@pytest.fixture
def rewriter(tmp_path: Path) -> Iterator[tuple[Path, Any]]:
    path = tmp_path / "telemetry" / "snapshot.json"
    stop = FORK.Event()
    rewrites = FORK.Value("q", 0)
    process = FORK.Process(target=_rewrite_forever, args=(path, stop, rewrites), daemon=True)
    process.start()
    try:
        deadline = time.monotonic() + 30.0
        while rewrites.value == 0:
            assert process.is_alive(), "the rewriting process exited"
            assert time.monotonic() < deadline, "the rewriting process wrote no snapshot in 30 s"
            time.sleep(0.01)
        yield path, rewrites
    finally:
        stop.set()
        process.join(timeout=30.0)
        if process.is_alive():
            process.kill()


def test_reads_never_see_partial_snapshot(
    rewriter: tuple[Path, Any], schema: dict[str, Any]
) -> None:
    path, rewrites = rewriter
    required = set(schema["required"])
    sections = {
        name: set(definition["required"])
        for name, definition in schema["properties"].items()
        if definition.get("type") == "object"
    }
    first = rewrites.value
    sizes = set()
    reads = 0
    # Read at least READS times, and on until MIN_REWRITES rewrites overlapped the reads,
    # because a slow disk may make each rewrite (with two fsyncs) take several milliseconds.
    deadline = time.monotonic() + 60.0
    while reads < READS or rewrites.value - first < MIN_REWRITES:
        assert time.monotonic() < deadline, f"only {rewrites.value - first} rewrites in 60 s"
        snapshot = read_snapshot(path)
        reads += 1
        assert set(snapshot) == required
        for name, keys in sections.items():
            assert set(snapshot[name]) == keys, name
        assert len(snapshot["workers"]) < 40
        assert len(snapshot["window"]["rows"]) <= WINDOW_ROWS
        sizes.add(len(snapshot["workers"]))
    assert len(sizes) > 1, "every read saw the same snapshot size; the writer did not overlap"
