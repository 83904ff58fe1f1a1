"""The concurrency manager: auto-tune, load rules, the level target and the damping.

Every test drives the manager with a simulated clock: no sleeping, no processes, no database.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import deque
from collections.abc import Iterable
from itertools import pairwise

import numpy as np
import pytest

from jobvisor.errors import ConfigError
from jobvisor.supervisor.concurrency import SAMPLE_KEYS, ConcurrencyManager, Decision
from jobvisor.telemetry.shm import SAMPLE_FIELDS

SEEDS = [11, 23, 37, 41, 59]


def sample(
    *,
    cpu: float = 40.0,
    memory: float = 40.0,
    active: float = 0.0,
    queue: float = 0.0,
    throughput: float = 0.0,
    processing: float = 0.0,
) -> dict[str, float]:
    return {
        "cpu_percent": cpu,
        "memory_percent": memory,
        "active_jobs": active,
        "queue_depth": queue,
        "throughput_per_min": throughput,
        "processing_s": processing,
    }


def manager(base_limit: int = 2, **options: object) -> ConcurrencyManager:
    settings: dict[str, object] = {
        "cpu_count": 16,
        "memory_total_gb": 64.0,
        "ceiling": 32,
        "auto_tune": False,
    }
    settings.update(options)
    return ConcurrencyManager(base_limit, **settings)  # type: ignore[arg-type]


def feed(
    concurrency: ConcurrencyManager, times: Iterable[float], **values: float
) -> list[Decision]:
    """Observe the same sample at each time; return the decisions taken."""
    decisions = []
    for now in times:
        decision = concurrency.observe(float(now), sample(**values))
        if decision is not None:
            decisions.append(decision)
    return decisions


def assert_cooldown_kept(decisions: Iterable[Decision], cooldown_s: float) -> None:
    times = [d.at for d in decisions]
    assert all(later - earlier >= cooldown_s for earlier, later in pairwise(times))


def test_sample_keys_are_telemetry_columns() -> None:
    assert set(SAMPLE_KEYS) <= set(SAMPLE_FIELDS)


# Auto-tune


def test_auto_tune_raises_and_records() -> None:
    concurrency = ConcurrencyManager(3, cpu_count=8, memory_total_gb=32.0, ceiling=20, now=100.0)
    # min(8 - 1, 32 / 2) = 7
    assert concurrency.limit == 7
    decision = concurrency.last_decision
    assert decision == concurrency.decisions[0]
    assert (decision.at, decision.previous, decision.limit) == (100.0, 3, 7)
    assert decision.rule == "auto-tune"
    assert "8 CPUs" in decision.reason
    assert "32.0 GB" in decision.reason
    assert decision.reason.endswith("3 -> 7")


def test_auto_tune_is_bounded_by_memory() -> None:
    concurrency = ConcurrencyManager(1, cpu_count=16, memory_total_gb=5.9, ceiling=20)
    assert concurrency.limit == 2  # floor(5.9 / 2) = 2 < 16 - 1


def test_auto_tune_never_lowers_the_limit() -> None:
    concurrency = ConcurrencyManager(10, cpu_count=4, memory_total_gb=64.0, ceiling=20)
    assert concurrency.limit == 10
    assert concurrency.decisions == ()
    assert concurrency.last_decision is None


def test_auto_tune_is_capped_at_the_ceiling() -> None:
    concurrency = ConcurrencyManager(2, cpu_count=64, memory_total_gb=512.0, ceiling=12)
    assert concurrency.limit == 12
    assert concurrency.last_decision is not None
    assert "capped at the ceiling 12" in concurrency.last_decision.reason


def test_auto_tune_off_keeps_the_base_limit() -> None:
    concurrency = ConcurrencyManager(
        2, cpu_count=64, memory_total_gb=512.0, ceiling=12, auto_tune=False
    )
    assert concurrency.limit == 2
    assert concurrency.decisions == ()


def test_auto_tune_starts_the_cooldown() -> None:
    concurrency = ConcurrencyManager(
        2, cpu_count=4, memory_total_gb=16.0, ceiling=10, cooldown_s=15.0
    )
    assert concurrency.limit == 3
    decisions = feed(concurrency, range(40), cpu=10, memory=30, queue=200, active=3)
    assert decisions[0].at == 15.0
    assert_cooldown_kept(concurrency.decisions, 15.0)


# The rules


def test_backlog_raises_one_step_per_cooldown() -> None:
    # 200 jobs due, CPU 10 %, memory 30 %, no job finished yet: the level is unknown and the
    # queue-high rule adds one worker whenever the cooldown allows.
    concurrency = manager(2, ceiling=8, cooldown_s=15.0)
    decisions = feed(concurrency, range(300), cpu=10, memory=30, queue=200, active=2)
    assert concurrency.level is None
    assert concurrency.limit == 8
    assert [d.limit for d in decisions] == [3, 4, 5, 6, 7, 8]
    assert all(d.limit == d.previous + 1 for d in decisions)
    assert {d.rule for d in decisions} == {"queue-high"}
    # The first change waits for 5 samples, then one change per 15 s.
    assert [d.at for d in decisions] == [4.0, 19.0, 34.0, 49.0, 64.0, 79.0]
    assert decisions[0].reason == "200 jobs due with CPU 10 % and memory 30 %: 2 -> 3"


def test_backlog_with_a_busy_cpu_does_not_raise() -> None:
    concurrency = manager(2, ceiling=8)
    assert feed(concurrency, range(120), cpu=75, memory=30, queue=200, active=2) == []
    assert concurrency.limit == 2


def test_cpu_over_90_percent_halves() -> None:
    # A known level (8) does not hold a pressure rule back.
    concurrency = manager(8, cooldown_s=15.0)
    steady = {"memory": 40.0, "active": 6.0, "throughput": 120.0, "processing": 3.0}
    assert feed(concurrency, range(60), cpu=60, **steady) == []
    assert concurrency.level == 8
    decisions = feed(concurrency, range(60, 120), cpu=99, **steady)
    assert [(d.previous, d.limit) for d in decisions] == [(8, 4), (4, 2), (2, 1)]
    assert {d.rule for d in decisions} == {"load-high"}
    assert_cooldown_kept(decisions, 15.0)
    # The mean of the last 5 samples passes 90 % with the fourth sample at 99 %:
    # (60 + 4 * 99) / 5 = 91.2.
    assert decisions[0].at == 63.0
    assert decisions[0].reason == (
        "CPU 91 % (mean of the last 5 samples) is above 90 %: halving 8 -> 4"
    )
    assert concurrency.limit == 1


def test_memory_over_90_percent_halves() -> None:
    concurrency = manager(6)
    decisions = feed(concurrency, range(10), cpu=20, memory=93, active=6, queue=10)
    assert [(d.rule, d.previous, d.limit) for d in decisions] == [("load-high", 6, 3)]
    assert "memory 93 %" in decisions[0].reason


def test_one_noisy_cpu_sample_does_not_halve() -> None:
    # Four samples at 80 % and one at 100 %: the mean is 84 %, under both thresholds.
    concurrency = manager(8)
    for now in range(30):
        cpu = 100.0 if now % 5 == 0 else 80.0
        assert concurrency.observe(float(now), sample(cpu=cpu, active=8, queue=10)) is None
    assert concurrency.limit == 8


def test_cpu_over_85_percent_lowers_at_once() -> None:
    concurrency = manager(8, cooldown_s=15.0, scale_down_window_s=60.0)
    decisions = feed(concurrency, range(40), cpu=87, active=8, queue=10)
    assert [(d.rule, d.previous, d.limit, d.at) for d in decisions] == [
        ("pressure", 8, 7, 4.0),
        ("pressure", 7, 6, 19.0),
        ("pressure", 6, 5, 34.0),
    ]
    assert "CPU 87 %" in decisions[0].reason
    assert "above 85 %" in decisions[0].reason


def test_trend_rule_adds_one() -> None:
    concurrency = manager(4)
    decisions = []
    for now in range(10):
        values = sample(cpu=60 - 2 * now, memory=60 - now, queue=10 + now, active=4)
        if (decision := concurrency.observe(float(now), values)) is not None:
            decisions.append(decision)
    assert [(d.rule, d.previous, d.limit) for d in decisions] == [("trend", 4, 5)]
    assert "CPU falls 2.00 %/s" in decisions[0].reason
    assert "queue grows 1.00 jobs/s" in decisions[0].reason


def test_low_load_adds_up_to_cpu_count() -> None:
    concurrency = manager(2, cpu_count=4, cooldown_s=10.0)
    decisions = feed(concurrency, range(120), cpu=10, memory=30, queue=8, active=3)
    assert [d.limit for d in decisions] == [3, 4]
    assert {d.rule for d in decisions} == {"load-low"}


def test_unknown_values_fire_no_rule() -> None:
    concurrency = manager(4)
    unknown = {"cpu": math.nan, "memory": math.nan, "queue": math.nan}
    assert feed(concurrency, range(60), active=4, **unknown) == []
    assert concurrency.limit == 4


# The level target


def test_level_is_littles_law_with_headroom() -> None:
    # 2 jobs/s of 3 s each keep 6 workers busy. 25 % headroom makes 7.5, rounded up to 8.
    concurrency = manager(8)
    feed(concurrency, range(4), throughput=120, processing=3, active=6)
    assert concurrency.level is None  # fewer than 5 samples
    feed(concurrency, range(4, 40), throughput=120, processing=3, active=6)
    assert concurrency.level == 8


def test_level_counts_backlog_and_growth() -> None:
    # 1 job/s finishing and the queue growing 1 job/s: 2 jobs/s arrive, 2 s each. 90 jobs due
    # (the mean of the last 30 samples) drained within 60 s add 90 * 2 s / 60 s = 3 workers.
    # (2 * 2 + 3) * 1.25 = 8.75, rounded up to 9.
    concurrency = manager(8, drain_horizon_s=60.0)
    for now in range(60):
        queue = 90 + (now - 44.5)
        concurrency.observe(float(now), sample(throughput=60, processing=2, queue=queue, active=2))
    assert concurrency.level == 9


def test_level_is_unknown_until_a_job_has_finished() -> None:
    concurrency = manager(4)
    feed(concurrency, range(30), throughput=0, processing=0, queue=50)
    feed(concurrency, range(30, 60), throughput=0, processing=math.nan, queue=50)
    assert concurrency.level is None
    feed(concurrency, range(60, 90), throughput=30, processing=4.0, queue=50)
    assert concurrency.level is not None


def test_level_has_hysteresis() -> None:
    concurrency = manager(8)
    feed(concurrency, range(40), throughput=120, processing=3, active=6)
    assert concurrency.level == 8  # estimate 7.5
    feed(concurrency, range(40, 80), throughput=132, processing=3, active=6)
    assert concurrency.level == 8  # estimate 8.25: within half a worker of 8
    feed(concurrency, range(80, 120), throughput=140, processing=3, active=6)
    assert concurrency.level == 9  # estimate 8.75
    feed(concurrency, range(120, 160), throughput=126, processing=3, active=6)
    assert concurrency.level == 9  # estimate 7.9: back in 8's range, but not by half a worker
    feed(concurrency, range(160, 200), throughput=100, processing=3, active=6)
    assert concurrency.level == 7  # estimate 6.25: through 8 on the way down


def test_band_caps_rule_increases() -> None:
    # Low load adds a worker at each step until the band around the level (8) stops it at 9.
    concurrency = manager(6, cooldown_s=5.0)
    steady = {"throughput": 120.0, "processing": 3.0, "active": 6.0}
    decisions = feed(concurrency, range(200), cpu=20, memory=30, **steady)
    assert concurrency.level == 8
    assert concurrency.limit == 9
    assert [d.limit for d in decisions] == [7, 8, 9]


def test_limit_outside_the_band_steps_towards_the_level() -> None:
    concurrency = manager(3, cooldown_s=15.0)
    steady = {"throughput": 120.0, "processing": 3.0, "active": 6.0}
    decisions = feed(concurrency, range(200), cpu=50, memory=40, **steady)
    assert concurrency.level == 8
    assert concurrency.limit == 7
    assert [d.limit for d in decisions] == [4, 5, 6, 7]
    assert {d.rule for d in decisions} == {"level"}
    assert "outside level 8 ± 1" in decisions[0].reason
    assert "2.00 jobs/s arriving, 3.00 s each" in decisions[0].reason
    assert_cooldown_kept(decisions, 15.0)


def test_clamped_rule_rises_one_step() -> None:
    # Queue-low recommends 2, but the band around the level (8) lifts that to 7. The limit
    # climbs there one worker per change.
    concurrency = manager(3, cooldown_s=15.0)
    steady = {"throughput": 120.0, "processing": 3.0, "active": 1.0}
    decisions = feed(concurrency, range(200), cpu=50, memory=40, **steady)
    assert concurrency.level == 8
    assert [d.limit for d in decisions] == [4, 5, 6, 7]
    assert {d.rule for d in decisions} == {"queue-low"}
    assert decisions[0].reason.endswith("kept within level 8 ± 1: 3 -> 4")


def test_level_waits_for_spare_cpu() -> None:
    # The level calls for 8 workers, but at CPU 75 % another worker could bring on the
    # pressure rules. The limit stays until CPU falls under 70 %.
    concurrency = manager(3)
    steady = {"memory": 40.0, "throughput": 120.0, "processing": 3.0, "active": 3.0}
    assert feed(concurrency, range(120), cpu=75, **steady) == []
    assert concurrency.level == 8
    decisions = feed(concurrency, range(120, 140), cpu=60, **steady)
    # The mean CPU drops under 70 % with the second sample at 60 %: (3 * 75 + 2 * 60) / 5 = 69.
    assert [(d.rule, d.limit, d.at) for d in decisions] == [
        ("level", 4, 121.0),
        ("level", 5, 136.0),
    ]


# Scale-down window


def test_load_drop_waits_for_window() -> None:
    concurrency = manager(4, cooldown_s=15.0, scale_down_window_s=60.0)
    busy = {"cpu": 40.0, "memory": 40.0, "queue": 30.0, "throughput": 120.0, "processing": 3.0}
    for now in range(300):
        concurrency.observe(float(now), sample(active=concurrency.limit, **busy))
    top = concurrency.limit
    assert concurrency.level is not None
    assert top >= 8
    # The jobs stop coming: nothing is due or running. Throughput falls to 0 at once, sooner
    # than a real 60 s throughput window would, and the service time is unknown again.
    drop_at = 300
    idle = {"cpu": 5.0, "memory": 30.0, "queue": 0.0, "active": 0.0, "throughput": 0.0}
    idle["processing"] = math.nan
    decisions = feed(concurrency, range(drop_at, drop_at + 600), **idle)
    assert decisions, "the limit never came down"
    first = decisions[0]
    assert first.limit < first.previous == top
    # Recommendations made just before the drop still hold the limit up for the window.
    assert drop_at + 60.0 <= first.at <= drop_at + 75.0
    assert all("highest recommendation over the last 60 s" in d.reason for d in decisions)
    # A decrease goes straight to the window's highest recommendation, which the band around
    # the falling level has pulled down, so it may skip several steps.
    assert any(d.previous - d.limit > 1 for d in decisions)
    assert any("kept within level" in d.reason for d in decisions)
    assert concurrency.level == 1
    assert concurrency.limit <= 2  # the level's band
    assert_cooldown_kept(concurrency.decisions, 15.0)


def test_decrease_waits_for_window_after_start() -> None:
    concurrency = manager(6, scale_down_window_s=60.0, cooldown_s=15.0)
    decisions = feed(concurrency, range(120), cpu=40, memory=40, queue=0, active=0)
    assert decisions[0].at >= 60.0
    assert decisions[0].rule == "queue-low"
    assert decisions[0].reason.endswith("the highest recommendation over the last 60 s: 6 -> 5")


def test_one_hold_in_window_blocks_decrease() -> None:
    # Nearly idle, so queue-low recommends one worker less, except that every 50 s half the
    # workers are busy for one sample and no rule fires. That sample keeps the window's highest
    # recommendation at the limit.
    concurrency = manager(6, scale_down_window_s=60.0, cooldown_s=15.0)
    for now in range(600):
        active = 3.0 if now % 50 == 0 else 0.0
        concurrency.observe(float(now), sample(cpu=40, memory=40, queue=0, active=active))
    assert concurrency.limit == 6
    assert concurrency.decisions == ()


# A simulated steady system


class QueueSimulation:
    """Jobs arrive at a Poisson rate, each runs ``service_s`` seconds on one worker.

    The manager's limit caps the running jobs. A job already running when the limit drops
    finishes. CPU and memory grow with the busy workers. Every sampled value gets 10 %
    multiplicative noise.
    """

    def __init__(self, seed: int, *, arrivals_per_s: float = 2.0, service_s: int = 3) -> None:
        self.rng = np.random.default_rng(seed)
        self.arrivals_per_s = arrivals_per_s
        self.service_s = service_s
        self.queue = 0
        self.running: list[int] = []  # seconds left of each running job
        self.finished: deque[float] = deque()

    def step(self, now: float, limit: int) -> dict[str, float]:
        self.queue += int(self.rng.poisson(self.arrivals_per_s))
        self.running = [left - 1 for left in self.running]
        self.finished.extend(now for left in self.running if left <= 0)
        self.running = [left for left in self.running if left > 0]
        while self.finished and self.finished[0] <= now - 60:
            self.finished.popleft()
        started = max(0, min(limit - len(self.running), self.queue))
        self.queue -= started
        self.running += [self.service_s] * started
        busy = len(self.running)
        exact = sample(
            cpu=5 + 5 * busy,
            memory=30 + 2 * busy,
            active=busy,
            queue=self.queue,
            throughput=len(self.finished) * 60 / min(60.0, now + 1),
            processing=float(self.service_s) if self.finished else 0.0,
        )
        noise = np.maximum(0.0, 1 + 0.1 * self.rng.standard_normal(len(exact)))
        return {key: value * factor for (key, value), factor in zip(exact.items(), noise)}


SETTLE_S = 360
MEASURE_S = 600


def run_steady(seed: int, concurrency: ConcurrencyManager) -> list[int]:
    """Run the simulation; return the limit at each second of the measured 10 minutes."""
    simulation = QueueSimulation(seed)
    limits = []
    for now in range(SETTLE_S + MEASURE_S):
        concurrency.observe(float(now), simulation.step(float(now), concurrency.limit))
        if now >= SETTLE_S:
            limits.append(concurrency.limit)
    return limits


def changes(limits: list[int]) -> int:
    return sum(1 for before, after in pairwise(limits) if before != after)


@pytest.mark.parametrize("seed", SEEDS)
def test_steady_load_stays_within_one_step(seed: int) -> None:
    concurrency = manager(3, ceiling=32, cooldown_s=15.0, scale_down_window_s=60.0)
    limits = run_steady(seed, concurrency)
    assert max(limits) - min(limits) <= 2
    settled = statistics.median_low(limits)
    assert all(abs(limit - settled) <= 1 for limit in limits)
    assert changes(limits) <= 10  # at most about one per minute
    # 2 jobs/s of 3 s need 6 busy workers. With 25 % headroom the level is 8, so the band
    # allows 7 to 9, and a level of 9 would allow 10.
    assert 6 <= settled <= 10
    assert_cooldown_kept(concurrency.decisions, 15.0)


@pytest.mark.parametrize("seed", SEEDS)
def test_rules_alone_swing_under_the_same_load(seed: int) -> None:
    # No cooldown, no scale-down window and a band wider than the ceiling: the raw rules.
    concurrency = manager(3, ceiling=32, cooldown_s=0.0, scale_down_window_s=0.0, band=32)
    limits = run_steady(seed, concurrency)
    assert changes(limits) >= 60
    assert max(limits) - min(limits) >= 4
    reversals = sum(
        1
        for a, b, c in zip(limits, limits[1:], limits[2:])
        if (b - a) * (c - b) < 0
    )
    assert reversals >= 20


# Records, telemetry and logs


def test_as_dict_for_the_snapshot() -> None:
    concurrency = ConcurrencyManager(
        2, cpu_count=4, memory_total_gb=16.0, ceiling=40, cooldown_s=1.0
    )
    feed(concurrency, range(200), cpu=10, memory=30, queue=200, active=2)
    assert len(concurrency.decisions) == 38  # auto-tune, then 3 -> 40 one at a time
    state = concurrency.as_dict()
    assert set(state) == {
        "limit", "base_limit", "ceiling", "level", "cooldown_s", "last_decision", "decisions"
    }
    assert state["limit"] == state["ceiling"] == 40
    assert (state["base_limit"], state["level"], state["cooldown_s"]) == (2, None, 1.0)
    assert len(state["decisions"]) == 20
    assert state["decisions"][-1] == state["last_decision"]
    assert state["last_decision"] == {
        "at": 40.0,
        "previous": 39,
        "limit": 40,
        "rule": "queue-high",
        "reason": "200 jobs due with CPU 10 % and memory 30 %: 39 -> 40",
    }
    assert [d["limit"] for d in state["decisions"]] == list(range(21, 41))
    json.dumps(state)


def test_decisions_keep_the_last_50() -> None:
    concurrency = manager(1, ceiling=100, cooldown_s=1.0)
    feed(concurrency, range(200), cpu=10, memory=30, queue=200, active=1)
    assert len(concurrency.decisions) == 50
    assert concurrency.decisions[-1].limit == 100
    assert concurrency.decisions[0].limit == 51


def test_empty_as_dict() -> None:
    state = manager(3, ceiling=5).as_dict()
    assert state["last_decision"] is None
    assert state["decisions"] == []


def test_each_decision_is_logged_at_info(caplog: pytest.LogCaptureFixture) -> None:
    concurrency = manager(8)
    with caplog.at_level(logging.INFO, logger="jobvisor.supervisor.concurrency"):
        feed(concurrency, range(10), cpu=95, active=8, queue=10)
    records = [r for r in caplog.records if r.name == "jobvisor.supervisor.concurrency"]
    assert len(records) == 1
    assert records[0].levelno == logging.INFO
    assert "load-high" in records[0].getMessage()
    assert "halving 8 -> 4" in records[0].getMessage()


# Bad arguments


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"ceiling": 0}, "ceiling=0"),
        ({"base_limit": 0}, "base_limit=0"),
        ({"base_limit": 9, "ceiling": 8}, "base_limit=9"),
        ({"base_limit": 2.5}, "base_limit=2.5"),
        ({"base_limit": True}, "base_limit=True"),
        ({"cpu_count": 0}, "cpu_count=0"),
        ({"memory_total_gb": 0.0}, "memory_total_gb=0.0"),
        ({"memory_total_gb": math.inf}, "memory_total_gb=inf"),
        ({"cooldown_s": -1.0}, "cooldown_s=-1.0"),
        ({"scale_down_window_s": math.nan}, "scale_down_window_s=nan"),
        ({"band": -1}, "band=-1"),
        ({"headroom": -0.25}, "headroom=-0.25"),
        ({"drain_horizon_s": 0}, "drain_horizon_s=0"),
        ({"now": math.nan}, "now=nan"),
    ],
)
def test_bad_arguments_name_the_value(change: dict[str, object], expected: str) -> None:
    arguments: dict[str, object] = {
        "base_limit": 3, "cpu_count": 4, "memory_total_gb": 8.0, "ceiling": 8
    }
    arguments.update(change)
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.")):
        ConcurrencyManager(**arguments)  # type: ignore[arg-type]


def test_observe_rejects_clock_going_back() -> None:
    concurrency = manager(3)
    concurrency.observe(10.0, sample())
    with pytest.raises(ValueError, match=r"now=9\.0"):
        concurrency.observe(9.0, sample())


def test_observe_rejects_missing_keys() -> None:
    incomplete = sample()
    del incomplete["queue_depth"]
    with pytest.raises(ValueError, match="queue_depth"):
        manager(3).observe(0.0, incomplete)
