"""The benchmark harness's pure parts: statistics, ratios, targets, tables and result files.

No test here starts a worker or needs a database; ``python -m bench --quick`` exercises the
rest against a real server.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from bench.claim_plan import sort_nodes
from bench.cli import build_parser, sizes_from
from bench.config import FULL, QUICK
from bench.report import Target, fmt, markdown_table, targets_table, write_result
from bench.scenarios import SCENARIOS
from bench.scenarios.mixed import evaluate
from bench.scenarios.throughput import ratios_at, results_table
from bench.stamps import read_stamps
from bench.stats import latency_summary, percentile, ratio, summarize


def drain_result(system: str, workers: int, values: list[float]) -> dict[str, Any]:
    return {"system": system, "workers": workers, "jobs_per_drain": 50_000, "settings": {},
            "runs": [], "summary": summarize(values)}


# Statistics


def test_percentile_interpolates_linearly() -> None:
    values = [10.0, 20.0, 30.0, 40.0]
    assert percentile(values, 0) == 10.0
    assert percentile(values, 100) == 40.0
    assert percentile(values, 50) == 25.0
    assert percentile(values, 25) == pytest.approx(17.5)


def test_percentile_rejects_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        percentile([], 50)
    with pytest.raises(ValueError, match="out of range"):
        percentile([1.0], 101)


def test_summarize_reports_spread() -> None:
    summary = summarize([5.0, 1.0, 3.0, 2.0, 4.0])
    assert summary["n"] == 5
    assert summary["median"] == 3.0
    assert summary["min"] == 1.0
    assert summary["max"] == 5.0
    assert summary["q1"] == 2.0
    assert summary["q3"] == 4.0
    assert summary["mean"] == 3.0


def test_latency_summary_percentiles() -> None:
    summary = latency_summary([float(ms) for ms in range(1, 101)])
    assert summary["n"] == 100
    assert summary["p50_ms"] == pytest.approx(50.5)
    assert summary["p95_ms"] == pytest.approx(95.05)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["max_ms"] == 100.0


def test_ratio_of_missing_values_is_none() -> None:
    assert ratio(10.0, 4.0) == 2.5
    assert ratio(None, 4.0) is None
    assert ratio(10.0, None) is None
    assert ratio(10.0, 0.0) is None


# Targets and tables


def test_target_verdicts() -> None:
    assert Target("fast", 30.0, ">=", 20.0, "×").verdict == "met"
    assert Target("slow", 2.0, ">=", 3.0, "×").verdict == "MISSED"
    assert Target("unknown", None, ">=", 3.0, "×").met is None
    assert Target("latency", 20.0, "<=", 20.0, "ms").met is True
    assert Target("strict", 2.0, "<", 2.0, "%").met is False


def test_target_rejects_unknown_operator() -> None:
    with pytest.raises(ValueError, match="operator '=='"):
        Target("x", 1.0, "==", 1.0, "")


def test_targets_table_shows_misses() -> None:
    table = targets_table([
        Target("jobvisor / floor", 0.4, ">=", 0.5, "×"),
        Target("pickup p50", 3.0, "<=", 5.0, "ms"),
    ])
    lines = table.splitlines()
    assert lines[0] == "| target | measured | goal | verdict |"
    assert "| jobvisor / floor | 0.400 × | >= 0.500 × | MISSED |" in lines
    assert "| pickup p50 | 3.00 ms | <= 5.00 ms | met |" in lines


def test_markdown_table_aligns_columns() -> None:
    table = markdown_table(["system", "jobs/s"], [["jobvisor", "1,000"]])
    assert table.splitlines() == [
        "| system | jobs/s |",
        "| :--- | ---: |",
        "| jobvisor | 1,000 |",
    ]


def test_fmt_digits_by_size() -> None:
    assert fmt(None) == "-"
    assert fmt(12345.6) == "12,346"
    assert fmt(3.14159) == "3.14"
    assert fmt(0.01234) == "0.012"


# Throughput ratios


def test_ratios_use_the_faster_pgqueuer_driver() -> None:
    results = [
        drain_result("floor", 4, [40_000.0]),
        drain_result("jobvisor", 4, [20_000.0]),
        drain_result("pgqueuer-asyncpg", 4, [10_000.0]),
        drain_result("pgqueuer-psycopg", 4, [4_000.0]),
        drain_result("procrastinate", 4, [500.0]),
    ]
    ratios = ratios_at(results, 4)
    assert ratios["jobvisor/floor"] == 0.5
    assert ratios["pgqueuer_best_driver"] == "pgqueuer-asyncpg"
    assert ratios["jobvisor/pgqueuer-best"] == 2.0
    assert ratios["jobvisor/pgqueuer-psycopg"] == 5.0
    assert ratios["jobvisor/procrastinate"] == 40.0


def test_ratios_without_jobvisor_are_none() -> None:
    ratios = ratios_at([drain_result("floor", 2, [1000.0])], 2)
    assert ratios["jobvisor/floor"] is None
    assert ratios["jobvisor/pgqueuer-best"] is None
    assert ratios["pgqueuer_best_driver"] is None


def test_results_table_rows_per_system() -> None:
    results = [
        drain_result("floor", 2, [30_000.0, 40_000.0, 50_000.0]),
        drain_result("jobvisor", 2, [15_000.0, 20_000.0, 25_000.0]),
    ]
    lines = results_table(results).splitlines()
    assert len(lines) == 4
    assert lines[2] == (
        "| floor | 2 | 50,000 | 40,000 | 30,000-50,000 | 35,000-45,000 | 1.00× | 0.50× |"
    )
    assert lines[3].startswith("| jobvisor | 2 | 50,000 | 20,000 |")
    assert lines[3].endswith("| 0.50× | 1.00× |")


# Result files


def test_result_file_shape(tmp_path: Path) -> None:
    result = {
        "scenario": "throughput",
        "stamp": "20250101T000000Z",
        "machine": {"cpu_model": "x", "postgresql": {"server_version": "16"}},
        "versions": {"jobvisor": "0.1.0"},
        "settings": {"workers": [2, 4]},
        "data": {"results": [drain_result("jobvisor", 4, [1.0, 2.0])]},
        "targets": [Target("t", 1.0, ">=", 2.0, "").as_dict()],
    }
    path = write_result(result, tmp_path)
    assert path == tmp_path / "throughput-20250101T000000Z.json"
    loaded = json.loads(path.read_text())
    assert loaded["data"]["results"][0]["summary"]["median"] == 1.5
    assert loaded["targets"][0]["verdict"] == "MISSED"
    assert loaded["targets"][0]["met"] is False
    assert not list(tmp_path.glob("*.tmp"))


# Claim plans


def test_sort_nodes_count_rows_read() -> None:
    plan = {
        "Query Text": "SELECT  *\n FROM background_jobs",
        "Plan": {
            "Node Type": "Limit",
            "Plans": [{
                "Node Type": "Sort",
                "Sort Key": ["run_at"],
                "Sort Method": "top-N heapsort",
                "Actual Rows": 100,
                "Actual Loops": 1,
                "Plans": [{"Node Type": "Index Scan", "Actual Rows": 250, "Actual Loops": 4}],
            }],
        },
    }
    sorts = list(sort_nodes([plan]))
    assert len(sorts) == 1
    assert sorts[0]["rows_read"] == 1000
    assert sorts[0]["query"] == "SELECT * FROM background_jobs"
    assert sorts[0]["method"] == "top-N heapsort"


# Mixed workload evaluation


def snapshot(age_s: float, throughput: float, queue: int = 3) -> dict[str, Any]:
    return {
        "written_at": 1000.0 + age_s,
        "node": {"state": "running", "started_at": 1000.0},
        "metrics": {
            "throughput_per_min": throughput, "processing_avg_s": 6.0, "queue_depth": queue,
            "active_jobs": 1, "cpu_percent": 50.0, "memory_percent": 20.0,
            "error_rate": 0.0, "window_s": 60,
        },
        "concurrency": {"paused_job_types": []},
    }


def test_mixed_counts_only_full_windows() -> None:
    evaluation = evaluate([snapshot(10, 2.0), snapshot(70, 30.0), snapshot(80, 40.0)])
    throughput = next(c for c in evaluation["checks"] if c["name"] == "throughput")
    assert evaluation["full_window"] is True
    assert evaluation["counted"] == 2
    assert throughput["median"] == 35.0
    assert throughput["ok_share"] == 1.0
    assert throughput["op"] == ">"


def test_mixed_falls_back_to_early_snapshots() -> None:
    evaluation = evaluate([snapshot(10, 0.5), snapshot(20, 5.5, queue=0)])
    throughput = next(c for c in evaluation["checks"] if c["name"] == "throughput")
    assert evaluation["full_window"] is False
    assert throughput["median"] == 3.0
    assert throughput["worst_status"] == "critical"


# Command line and helpers


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


def test_sizes_quick_and_overrides() -> None:
    assert sizes_from(parse()) == FULL
    assert sizes_from(parse("--quick")) == QUICK
    sizes = sizes_from(parse("--quick", "--jobs", "123", "--workers", "1,3", "--repetitions", "2"))
    assert sizes.throughput_jobs == 123
    assert sizes.workers == (1, 3)
    assert sizes.repetitions == 2
    assert sizes.latency_jobs == QUICK.latency_jobs


def test_sizes_reject_bad_workers() -> None:
    with pytest.raises(SystemExit, match="--workers 'two'"):
        sizes_from(parse("--workers", "two"))
    with pytest.raises(SystemExit, match="--jobs 0"):
        sizes_from(parse("--jobs", "0"))


def test_quick_sizes_are_smaller() -> None:
    assert QUICK.throughput_jobs < FULL.throughput_jobs
    assert QUICK.repetitions == 1
    assert QUICK.warmups == 0
    assert set(SCENARIOS) == {"floor", "throughput", "latency", "depth", "mixed", "overhead",
                              "enqueue"}


def test_read_stamps_keeps_first_start(tmp_path: Path) -> None:
    path = tmp_path / "stamps.txt"
    path.write_text("1 100.5\n2 101.0\n1 102.0\nbroken\n")
    assert read_stamps(path) == {1: 100.5, 2: 101.0}
    assert read_stamps(tmp_path / "missing.txt") == {}
