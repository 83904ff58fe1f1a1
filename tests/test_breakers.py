"""Circuit breakers: state machine, configs, resource checks and sharing across processes."""

from __future__ import annotations

import logging
import multiprocessing
import os
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from multiprocessing.synchronize import Barrier, Event
from pathlib import Path
from typing import Any

import pytest

from jobvisor.errors import ConfigError, JobvisorError
from jobvisor.resilience import (
    BUILTIN_CONFIGS,
    BreakerConfig,
    BreakerOpenError,
    BreakerRegistry,
    BreakerStore,
    CircuitBreaker,
    LocalBreakerStore,
    SharedMemoryBreakerStore,
    breaker_configs,
)
from jobvisor.telemetry.shm import BreakerState, TelemetryBlock, create

SHM_DIR = Path("/dev/shm")
FORK = multiprocessing.get_context("fork")
OPENAI = BUILTIN_CONFIGS["openai"]
START = 1_800_000_000.0  # epoch seconds of the fake clock
WAIT_S = 30.0  # upper bound for a child process to start, synchronize or finish
PROBE_ROUND_RESET_S = 0.02

pytestmark = pytest.mark.skipif(not SHM_DIR.is_dir(), reason="needs /dev/shm (Linux)")


class FakeClock:
    """Clock for CircuitBreaker that moves only when the test advances it."""

    def __init__(self, now: float = START) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture(autouse=True)
def no_leftovers() -> Iterator[None]:
    """Fail a test that leaves a segment or a child process, and remove what it left."""
    yield
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
        child.join(timeout=WAIT_S)
    assert children == []
    leftover = sorted(path.name for path in SHM_DIR.glob(f"jobvisor_{os.getpid()}_*"))
    for name in leftover:
        (SHM_DIR / name).unlink()
    assert leftover == []


@pytest.fixture
def block() -> Iterator[TelemetryBlock]:
    telemetry = create(ring_capacity=4, slot_count=1, breaker_count=4, max_read_retries=20)
    try:
        yield telemetry
    finally:
        telemetry.unlink()


@pytest.fixture(params=["local", "shared_memory"])
def store(request: pytest.FixtureRequest) -> BreakerStore:
    if request.param == "local":
        return LocalBreakerStore()
    return SharedMemoryBreakerStore(request.getfixturevalue("block"))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _open_breaker(store: BreakerStore, clock: FakeClock) -> CircuitBreaker:
    breaker = CircuitBreaker("openai", OPENAI, store, clock=clock)
    for _ in range(OPENAI.max_failures):
        breaker.on_failure()
    assert breaker.state is BreakerState.OPEN
    return breaker


def _half_open_breaker(store: BreakerStore, clock: FakeClock) -> CircuitBreaker:
    breaker = _open_breaker(store, clock)
    clock.advance(OPENAI.reset_timeout_s)
    breaker.before_call()
    assert breaker.state is BreakerState.HALF_OPEN
    return breaker


# -- state machine ---------------------------------------------------------------------


def test_breaker_opens_at_max_failures(store: BreakerStore, clock: FakeClock) -> None:
    breaker = CircuitBreaker("openai", OPENAI, store, clock=clock)
    assert breaker.snapshot() == {
        "name": "openai", "state": "closed", "failures": 0, "opened_at": None, "probes": 0,
    }  # fmt: skip

    breaker.on_failure()
    breaker.on_failure()
    assert breaker.snapshot()["state"] == "closed"
    assert breaker.snapshot()["failures"] == 2
    breaker.before_call()

    clock.advance(5.0)
    breaker.on_failure()
    assert breaker.state is BreakerState.OPEN
    assert breaker.snapshot() == {
        "name": "openai", "state": "open", "failures": 3, "opened_at": START + 5.0, "probes": 0,
    }  # fmt: skip


def test_open_breaker_rejects_with_message(store: BreakerStore, clock: FakeClock) -> None:
    breaker = _open_breaker(store, clock)
    clock.advance(33.0)

    with pytest.raises(BreakerOpenError) as info:
        breaker.before_call()

    error = info.value
    assert str(error) == "circuit breaker 'openai' is open after 3 failures; next probe in 87 s"
    assert isinstance(error, JobvisorError)
    assert error.service == "openai"
    assert error.state is BreakerState.OPEN
    assert error.failures == 3
    assert error.retry_after_s == pytest.approx(87.0)
    assert breaker.state is BreakerState.OPEN


def test_reset_timeout_admits_one_probe(store: BreakerStore, clock: FakeClock) -> None:
    breaker = _open_breaker(store, clock)
    clock.advance(OPENAI.reset_timeout_s - 0.1)
    with pytest.raises(BreakerOpenError, match=r"next probe in 0\.1 s"):
        breaker.before_call()

    clock.advance(0.1)
    breaker.before_call()
    assert breaker.state is BreakerState.HALF_OPEN
    assert breaker.snapshot()["probes"] == 1

    with pytest.raises(BreakerOpenError) as info:
        breaker.before_call()
    assert info.value.state is BreakerState.HALF_OPEN
    assert "'openai' is half_open with 1 of 1 probes in flight" in str(info.value)
    assert "reopens within 30 s if none does" in str(info.value)
    assert breaker.snapshot()["probes"] == 1


def test_probe_success_closes(store: BreakerStore, clock: FakeClock) -> None:
    breaker = _half_open_breaker(store, clock)

    breaker.on_success()

    assert breaker.snapshot() == {
        "name": "openai", "state": "closed", "failures": 0, "opened_at": START, "probes": 0,
    }  # fmt: skip
    breaker.before_call()
    breaker.before_call()


def test_probe_failure_reopens(store: BreakerStore, clock: FakeClock) -> None:
    breaker = _half_open_breaker(store, clock)
    clock.advance(2.0)

    breaker.on_failure()

    reopened_at = START + OPENAI.reset_timeout_s + 2.0
    assert breaker.snapshot() == {
        "name": "openai", "state": "open", "failures": 4, "opened_at": reopened_at, "probes": 0,
    }  # fmt: skip
    clock.advance(OPENAI.reset_timeout_s - 1.0)
    with pytest.raises(BreakerOpenError, match="open after 4 failures; next probe in 1.0 s"):
        breaker.before_call()
    clock.advance(1.0)
    breaker.before_call()
    assert breaker.state is BreakerState.HALF_OPEN


def test_probe_timeout_reopens(store: BreakerStore, clock: FakeClock) -> None:
    breaker = _half_open_breaker(store, clock)
    clock.advance(OPENAI.half_open_timeout_s - 0.5)
    with pytest.raises(BreakerOpenError, match="half_open"):
        breaker.before_call()
    assert breaker.state is BreakerState.HALF_OPEN

    clock.advance(0.5)
    with pytest.raises(BreakerOpenError, match="open after 4 failures; next probe in 120 s"):
        breaker.before_call()

    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["opened_at"] == clock.now
    assert snapshot["probes"] == 0


def test_success_resets_failures(store: BreakerStore, clock: FakeClock) -> None:
    breaker = CircuitBreaker("openai", OPENAI, store, clock=clock)
    breaker.on_failure()
    breaker.on_failure()

    breaker.on_success()
    assert breaker.snapshot()["failures"] == 0

    breaker.on_failure()
    breaker.on_failure()
    assert breaker.state is BreakerState.CLOSED


def test_open_breaker_ignores_late_reports(store: BreakerStore, clock: FakeClock) -> None:
    breaker = _open_breaker(store, clock)

    breaker.on_success()
    breaker.on_failure()

    assert breaker.snapshot() == {
        "name": "openai", "state": "open", "failures": 3, "opened_at": START, "probes": 0,
    }  # fmt: skip


def test_half_open_admits_configured_probes(store: BreakerStore, clock: FakeClock) -> None:
    config = BreakerConfig(max_failures=1, reset_timeout_s=10.0, half_open_probes=2)
    breaker = CircuitBreaker("storage", config, store, clock=clock)
    breaker.on_failure()
    clock.advance(10.0)

    breaker.before_call()
    breaker.before_call()
    assert breaker.snapshot()["probes"] == 2
    with pytest.raises(BreakerOpenError, match="half_open with 2 of 2 probes"):
        breaker.before_call()


def test_clock_set_back_admits_probe(store: BreakerStore, clock: FakeClock) -> None:
    breaker = _open_breaker(store, clock)
    clock.advance(-3600.0)

    breaker.before_call()

    assert breaker.state is BreakerState.HALF_OPEN


def test_breakers_of_one_store_are_independent(store: BreakerStore, clock: FakeClock) -> None:
    _open_breaker(store, clock)
    database = CircuitBreaker("database", BUILTIN_CONFIGS["database"], store, clock=clock)

    database.before_call()

    assert database.state is BreakerState.CLOSED
    assert CircuitBreaker("openai", OPENAI, store, clock=clock).state is BreakerState.OPEN


# -- call and guard --------------------------------------------------------------------


def _raise_value_error() -> None:
    raise ValueError("service answered 500")


def test_call_counts_exceptions(store: BreakerStore, clock: FakeClock) -> None:
    breaker = CircuitBreaker("openai", OPENAI, store, clock=clock)
    assert breaker.call(pow, 2, exp=10) == 1024

    for _ in range(OPENAI.max_failures):
        with pytest.raises(ValueError, match="service answered 500"):
            breaker.call(_raise_value_error)
    assert breaker.state is BreakerState.OPEN

    calls: list[int] = []
    with pytest.raises(BreakerOpenError):
        breaker.call(calls.append, 1)
    assert calls == []


def test_call_success_closes_probe(store: BreakerStore, clock: FakeClock) -> None:
    breaker = _open_breaker(store, clock)
    clock.advance(OPENAI.reset_timeout_s)

    assert breaker.call(len, "probe") == 5

    assert breaker.state is BreakerState.CLOSED


def test_guard_counts_exceptions(store: BreakerStore, clock: FakeClock) -> None:
    breaker = CircuitBreaker("openai", OPENAI, store, clock=clock)
    with breaker.guard():
        pass
    with pytest.raises(KeyError), breaker.guard():
        raise KeyError("missing")
    assert breaker.snapshot()["failures"] == 1

    with breaker.guard():
        pass
    assert breaker.snapshot()["failures"] == 0

    for _ in range(OPENAI.max_failures):
        with pytest.raises(ValueError), breaker.guard():
            _raise_value_error()
    ran = False
    with pytest.raises(BreakerOpenError), breaker.guard():
        ran = True
    assert not ran


def test_guard_ignores_keyboard_interrupt(store: BreakerStore, clock: FakeClock) -> None:
    breaker = CircuitBreaker("openai", OPENAI, store, clock=clock)

    with pytest.raises(KeyboardInterrupt), breaker.guard():
        raise KeyboardInterrupt

    assert breaker.snapshot()["failures"] == 0


# -- logging ---------------------------------------------------------------------------


def test_transitions_logged(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jobvisor.resilience.breakers")
    breaker = _open_breaker(LocalBreakerStore(), clock)
    clock.advance(OPENAI.reset_timeout_s)
    breaker.before_call()
    breaker.on_failure()
    clock.advance(OPENAI.reset_timeout_s)
    breaker.before_call()
    clock.advance(OPENAI.half_open_timeout_s)
    with pytest.raises(BreakerOpenError):
        breaker.before_call()
    clock.advance(OPENAI.reset_timeout_s)
    breaker.before_call()
    breaker.on_success()

    records = [r for r in caplog.records if r.name == "jobvisor.resilience.breakers"]
    pid = f"pid {os.getpid()}"
    expected = [
        (logging.WARNING, "'openai' opened after 3 failures"),
        (logging.INFO, "'openai' is half_open after 3 failures"),
        (logging.WARNING, "'openai' reopened because a probe failed (4 failures"),
        (logging.INFO, "'openai' is half_open after 4 failures"),
        (logging.WARNING, "'openai' reopened because no probe reported within 30 s (5 failures"),
        (logging.INFO, "'openai' is half_open after 5 failures"),
        (logging.INFO, "'openai' closed because a probe succeeded (failures 5 -> 0"),
    ]
    assert len(records) == len(expected), [r.getMessage() for r in records]
    for record, (level, text) in zip(records, expected):
        message = record.getMessage()
        assert record.levelno == level, message
        assert text in message
        assert pid in message


def test_closed_breaker_logs_nothing(clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="jobvisor.resilience.breakers")
    breaker = CircuitBreaker("openai", OPENAI, LocalBreakerStore(), clock=clock)

    breaker.before_call()
    breaker.on_failure()
    breaker.on_success()

    assert [r for r in caplog.records if r.name == "jobvisor.resilience.breakers"] == []


# -- configs ---------------------------------------------------------------------------


def test_builtin_configs() -> None:
    assert BreakerConfig() == BreakerConfig(
        max_failures=5, reset_timeout_s=60.0, half_open_timeout_s=30.0, half_open_probes=1,
        cpu_percent=90.0, memory_percent=90.0, queue_depth=50,
    )  # fmt: skip
    configs = breaker_configs()
    assert sorted(configs) == ["database", "general", "openai"]
    assert configs["openai"] == BreakerConfig(
        max_failures=3, reset_timeout_s=120.0, cpu_percent=80.0, memory_percent=85.0,
        queue_depth=30,
    )  # fmt: skip
    assert configs["database"] == BreakerConfig(
        max_failures=5, reset_timeout_s=60.0, cpu_percent=90.0, memory_percent=90.0,
        queue_depth=50,
    )  # fmt: skip
    assert configs["general"] == BreakerConfig()


def test_overrides_merge() -> None:
    configs = breaker_configs(
        {"openai": {"max_failures": 6}, "storage": {"reset_timeout_s": 10, "queue_depth": 5}}
    )

    assert configs["openai"].max_failures == 6
    assert configs["openai"].reset_timeout_s == 120.0
    assert configs["openai"].cpu_percent == 80.0
    assert configs["storage"] == BreakerConfig(reset_timeout_s=10.0, queue_depth=5)
    assert isinstance(configs["storage"].reset_timeout_s, float)
    assert configs["database"] == BUILTIN_CONFIGS["database"]
    assert BUILTIN_CONFIGS["openai"].max_failures == 3


def test_override_unknown_key_lists_valid_keys() -> None:
    with pytest.raises(ConfigError) as info:
        breaker_configs({"openai": {"max_failure": 4, "timeout": 1}})

    message = str(info.value)
    assert "unknown breaker settings ['max_failure', 'timeout'] for service 'openai'" in message
    assert (
        "valid settings: max_failures, reset_timeout_s, half_open_timeout_s, half_open_probes, "
        "cpu_percent, memory_percent, queue_depth"
    ) in message


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_failures", 0),
        ("max_failures", 2.5),
        ("max_failures", True),
        ("half_open_probes", -1),
        ("queue_depth", "50"),
        ("reset_timeout_s", 0.0),
        ("reset_timeout_s", -1.0),
        ("half_open_timeout_s", float("nan")),
        ("half_open_timeout_s", float("inf")),
        ("cpu_percent", 101),
        ("memory_percent", None),
    ],
)
def test_invalid_config_raises(field: str, value: Any) -> None:
    with pytest.raises(ConfigError, match=re.escape(f"breaker setting {field}={value!r}")):
        BreakerConfig(**{field: value})

    with pytest.raises(ConfigError, match=re.escape(f"service 'openai': breaker setting {field}=")):
        breaker_configs({"openai": {field: value}})


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"": {}}, "breaker service name '' is invalid"),
        ({"x" * 49: {}}, "is 49 bytes in UTF-8; use at most 48"),
        ({"a\0b": {}}, "contains a NUL character"),
        ({"storage": 3}, "breaker settings of service 'storage' must be a mapping"),
    ],
)
def test_invalid_service_raises(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(fragment)):
        breaker_configs(overrides)


# -- resources -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cpu", "memory", "queue", "expected"),
    [
        (50.0, 50.0, 10, []),
        (80.0, 85.0, 30, []),
        (93.0, 50.0, 10, ["CPU 93 % is above 80 %"]),
        (50.0, 91.5, 10, ["memory 91.5 % is above 85 %"]),
        (50.0, 50.0, 31, ["queue depth 31 is above 30"]),
        (
            100.0, 85.25, 400,
            ["CPU 100 % is above 80 %", "memory 85.25 % is above 85 %",
             "queue depth 400 is above 30"],
        ),
        (float("nan"), float("nan"), float("nan"), []),
    ],
)  # fmt: skip
def test_check_resources_reports_thresholds(
    cpu: float, memory: float, queue: float, expected: list[str]
) -> None:
    breaker = CircuitBreaker("openai", OPENAI, LocalBreakerStore())

    assert breaker.check_resources(cpu, memory, queue) == expected


# -- registry --------------------------------------------------------------------------


def test_registry_registers_on_first_use(block: TelemetryBlock) -> None:
    registry = BreakerRegistry(block, breaker_configs())
    assert block.find_breaker("openai") is None

    breaker = registry.get("openai")

    assert isinstance(registry.store, SharedMemoryBreakerStore)
    assert block.find_breaker("openai") == 0
    assert registry.get("openai") is breaker
    assert breaker.config == OPENAI
    assert registry.get("storage").config == BreakerConfig()
    assert block.find_breaker("storage") == 1


def test_registry_all_lists_block_breakers(block: TelemetryBlock) -> None:
    registry = BreakerRegistry(block)
    registry.get("openai").on_failure()
    other = BreakerRegistry(block)
    other.get("database")

    assert registry.all() == [
        {"name": "database", "state": "closed", "failures": 0, "opened_at": None, "probes": 0},
        {"name": "openai", "state": "closed", "failures": 1, "opened_at": None, "probes": 0},
    ]


def test_registry_writes_block_record(block: TelemetryBlock) -> None:
    registry = BreakerRegistry(block)
    breaker = registry.get("openai")
    for _ in range(OPENAI.max_failures):
        breaker.on_failure()

    record = block.read_breaker(block.find_breaker("openai") or 0)

    assert record.name == "openai"
    assert record.state is BreakerState.OPEN
    assert record.failures == 3
    assert record.opened_at == pytest.approx(time.time(), abs=WAIT_S)
    assert record.half_open_probes_in_flight == 0


def test_registry_without_block_is_local() -> None:
    registry = BreakerRegistry(None)
    breaker = registry.get("openai")
    for _ in range(OPENAI.max_failures):
        breaker.on_failure()

    assert isinstance(registry.store, LocalBreakerStore)
    assert breaker.state is BreakerState.OPEN
    assert BreakerRegistry(None).get("openai").state is BreakerState.CLOSED


def test_registry_general_config_for_unknown() -> None:
    registry = BreakerRegistry(None, breaker_configs({"general": {"max_failures": 2}}))

    assert registry.get("storage").config.max_failures == 2
    assert BreakerRegistry(None, {}).get("storage").config == BreakerConfig()


def test_registry_rejects_invalid_name() -> None:
    with pytest.raises(ConfigError, match="breaker service name '' is invalid"):
        BreakerRegistry(None).get("")


def test_failure_count_exact_across_threads(store: BreakerStore) -> None:
    breaker = CircuitBreaker("storage", BreakerConfig(max_failures=10_000), store)
    switch_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads often, inside the read-modify-writes too

    def record_failures() -> None:
        for _ in range(500):
            breaker.on_failure()

    threads = [threading.Thread(target=record_failures) for _ in range(4)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=WAIT_S)
    finally:
        sys.setswitchinterval(switch_interval)

    assert breaker.snapshot()["failures"] == 2000


# -- shared across processes -----------------------------------------------------------


def _record_failures(registry: BreakerRegistry, barrier: Barrier, count: int) -> None:
    barrier.wait(timeout=WAIT_S)
    breaker = registry.get("openai")
    for _ in range(count):
        breaker.on_failure()


def _join_all(processes: list[Any]) -> None:
    for process in processes:
        process.join(timeout=WAIT_S)
    assert [process.exitcode for process in processes] == [0] * len(processes)


def test_failure_count_exact_across_processes(block: TelemetryBlock) -> None:
    registry = BreakerRegistry(block, breaker_configs({"openai": {"max_failures": 10_000}}))
    breaker = registry.get("openai")
    barrier = FORK.Barrier(4)
    processes = [
        FORK.Process(target=_record_failures, args=(registry, barrier, 500)) for _ in range(4)
    ]

    for process in processes:
        process.start()
    _join_all(processes)

    assert breaker.snapshot()["failures"] == 2000
    assert breaker.state is BreakerState.CLOSED


def _fail_then_check(registry: BreakerRegistry, index: int, failed: Barrier, results: Any) -> None:
    breaker = registry.get("openai")
    if index < OPENAI.max_failures:
        breaker.on_failure()
    failed.wait(timeout=WAIT_S)
    try:
        breaker.before_call()
    except BreakerOpenError as error:
        results.put((index, breaker.state.name, str(error)))
    else:
        results.put((index, breaker.state.name, "admitted"))


def test_every_process_sees_open(block: TelemetryBlock) -> None:
    registry = BreakerRegistry(block)
    results = FORK.Queue()
    failed = FORK.Barrier(4)
    processes = [
        FORK.Process(target=_fail_then_check, args=(registry, index, failed, results))
        for index in range(4)
    ]

    for process in processes:
        process.start()
    seen = sorted(results.get(timeout=WAIT_S) for _ in processes)
    _join_all(processes)

    for index, state, message in seen:
        assert state == "OPEN", index
        assert message.startswith("circuit breaker 'openai' is open after 3 failures"), index
    snapshot = registry.get("openai").snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["failures"] == 3


def _race_for_probe(
    registry: BreakerRegistry, barrier: Barrier, admitted: Any, results: Any
) -> None:
    breaker = registry.get("openai")
    barrier.wait(timeout=WAIT_S)
    try:
        breaker.before_call()
    except BreakerOpenError as error:
        results.put(str(error))
        return
    with admitted.get_lock():
        admitted.value += 1
    results.put("admitted")


def _open_shared_breaker(block: TelemetryBlock, **settings: Any) -> BreakerRegistry:
    """Return a registry whose 'openai' breaker is open and past its reset timeout."""
    configs = breaker_configs({"openai": {"reset_timeout_s": 0.5, **settings}})
    registry = BreakerRegistry(block, configs)
    breaker = registry.get("openai")
    for _ in range(OPENAI.max_failures):
        breaker.on_failure()
    assert breaker.state is BreakerState.OPEN
    time.sleep(0.6)
    return registry


def test_one_process_wins_probe(block: TelemetryBlock) -> None:
    registry = _open_shared_breaker(block)
    admitted = FORK.Value("i", 0)
    results = FORK.Queue()
    barrier = FORK.Barrier(8)
    processes = [
        FORK.Process(target=_race_for_probe, args=(registry, barrier, admitted, results))
        for _ in range(8)
    ]

    for process in processes:
        process.start()
    outcomes = sorted(results.get(timeout=WAIT_S) for _ in processes)
    _join_all(processes)

    assert admitted.value == 1
    assert outcomes.count("admitted") == 1
    rejections = [text for text in outcomes if text != "admitted"]
    assert len(rejections) == 7
    for text in rejections:
        assert text.startswith("circuit breaker 'openai' is half_open with 1 of 1 probes"), text
    breaker = registry.get("openai")
    assert breaker.snapshot()["probes"] == 1

    breaker.on_success()
    assert breaker.state is BreakerState.CLOSED


def _race_for_probe_rounds(
    registry: BreakerRegistry, barrier: Barrier, index: int, admitted: Any
) -> None:
    breaker = registry.get("openai")
    for round_index in range(len(admitted)):
        time.sleep(PROBE_ROUND_RESET_S * 2)
        barrier.wait(timeout=WAIT_S)
        try:
            breaker.before_call()
        except BreakerOpenError:
            pass
        else:
            with admitted.get_lock():
                admitted[round_index] += 1
        barrier.wait(timeout=WAIT_S)
        if index == 0:
            breaker.on_failure()  # the probe failed: open again for the next round
        barrier.wait(timeout=WAIT_S)


def test_one_probe_per_round(block: TelemetryBlock) -> None:
    configs = breaker_configs(
        {"openai": {"max_failures": 1, "reset_timeout_s": PROBE_ROUND_RESET_S}}
    )
    registry = BreakerRegistry(block, configs)
    registry.get("openai").on_failure()
    admitted = FORK.Array("i", 20)
    barrier = FORK.Barrier(8)
    processes = [
        FORK.Process(target=_race_for_probe_rounds, args=(registry, barrier, index, admitted))
        for index in range(8)
    ]

    for process in processes:
        process.start()
    _join_all(processes)

    assert admitted[:] == [1] * 20


def _take_probe_and_die(registry: BreakerRegistry) -> None:
    registry.get("openai").before_call()
    os._exit(0)  # ends without reporting, like a worker that crashed mid-call


def test_dead_probe_reopens_breaker(block: TelemetryBlock) -> None:
    registry = _open_shared_breaker(block, half_open_timeout_s=0.5)
    breaker = registry.get("openai")
    probe = FORK.Process(target=_take_probe_and_die, args=(registry,))

    probe.start()
    _join_all([probe])
    assert breaker.snapshot()["state"] == "half_open"
    probe_admitted_at = block.read_breaker(block.find_breaker("openai") or 0).updated_at
    time.sleep(0.6)

    with pytest.raises(BreakerOpenError, match="is open after 4 failures"):
        breaker.before_call()
    snapshot = breaker.snapshot()
    assert snapshot["state"] == "open"
    assert snapshot["probes"] == 0
    assert snapshot["opened_at"] >= probe_admitted_at + 0.5


def _fail_once(registry: BreakerRegistry, done: Event) -> None:
    registry.get("openai").on_failure()
    done.set()


def test_fork_while_thread_holds_lock(block: TelemetryBlock) -> None:
    registry = BreakerRegistry(block)
    breaker = registry.get("openai")
    store = registry.store
    assert isinstance(store, SharedMemoryBreakerStore)
    lock_taken, release, done = threading.Event(), threading.Event(), FORK.Event()

    def hold_lock() -> None:
        with store.lock():
            lock_taken.set()
            release.wait(WAIT_S)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    assert lock_taken.wait(WAIT_S)
    child = FORK.Process(target=_fail_once, args=(registry, done))
    child.start()
    assert not done.wait(0.5), "the child wrote the record while a parent thread held the lock"
    release.set()
    holder.join(timeout=WAIT_S)

    assert done.wait(WAIT_S), "the child stayed blocked on a lock inherited from the parent"
    _join_all([child])
    assert breaker.snapshot()["failures"] == 1


def test_lock_works_after_unlink(block: TelemetryBlock) -> None:
    registry = BreakerRegistry(block)
    breaker = registry.get("openai")
    store = registry.store
    assert isinstance(store, SharedMemoryBreakerStore)
    block.unlink()
    assert not (SHM_DIR / block.name).exists()
    done = FORK.Event()
    child = FORK.Process(target=_fail_once, args=(registry, done))

    with store.lock():
        child.start()
        assert not done.wait(0.5), "the child wrote the record while the parent held the lock"
    assert done.wait(WAIT_S)
    _join_all([child])

    assert breaker.snapshot()["failures"] == 1


def _fail_with_reused_descriptor(registry: BreakerRegistry, results: Any) -> None:
    store = registry.store
    assert isinstance(store, SharedMemoryBreakerStore)
    inherited = store._lock._fd
    os.close(inherited)
    os.dup2(os.open(os.devnull, os.O_RDONLY), inherited)

    registry.get("openai").on_failure()

    devnull = os.stat(os.devnull)
    reused = os.fstat(inherited)
    results.put((reused.st_dev, reused.st_ino) == (devnull.st_dev, devnull.st_ino))


def test_lock_skips_reused_descriptor(block: TelemetryBlock) -> None:
    registry = BreakerRegistry(block)
    breaker = registry.get("openai")
    results = FORK.Queue()
    child = FORK.Process(target=_fail_with_reused_descriptor, args=(registry, results))

    child.start()
    still_devnull = results.get(timeout=WAIT_S)
    _join_all([child])

    assert still_devnull, "the breaker closed or replaced a descriptor that the child reused"
    assert breaker.snapshot()["failures"] == 1


def _use_closed_breaker(registry: BreakerRegistry, done: Event) -> None:
    breaker = registry.get("openai")
    breaker.before_call()
    breaker.on_success()
    breaker.snapshot()
    done.set()


def test_lock_excludes_forked_child(block: TelemetryBlock) -> None:
    registry = BreakerRegistry(block)
    breaker = registry.get("openai")
    store = registry.store
    assert isinstance(store, SharedMemoryBreakerStore)
    done = FORK.Event()
    child = FORK.Process(target=_fail_once, args=(registry, done))

    with store.lock():
        child.start()
        assert not done.wait(0.5), "the child wrote the record while the parent held the lock"
    assert done.wait(WAIT_S)
    _join_all([child])

    assert breaker.snapshot()["failures"] == 1


def test_closed_breaker_takes_no_lock(block: TelemetryBlock) -> None:
    registry = BreakerRegistry(block)
    registry.get("openai")
    store = registry.store
    assert isinstance(store, SharedMemoryBreakerStore)
    done = FORK.Event()
    child = FORK.Process(target=_use_closed_breaker, args=(registry, done))

    with store.lock():
        child.start()
        assert done.wait(WAIT_S), "the child blocked on the lock on the fast path"
    _join_all([child])


def _die_writing_breaker(registry: BreakerRegistry) -> None:
    store = registry.store
    assert isinstance(store, SharedMemoryBreakerStore)

    def kill_self(*args: Any) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    # The block's seqlock write calls _store_body between making the counter odd and even.
    store.block._store_body = kill_self  # type: ignore[method-assign, assignment]
    registry.get("openai").on_failure()


def test_torn_record_reset_to_closed(
    block: TelemetryBlock, caplog: pytest.LogCaptureFixture
) -> None:
    registry = BreakerRegistry(block)
    breaker = registry.get("openai")
    breaker.on_failure()
    writer = FORK.Process(target=_die_writing_breaker, args=(registry,))

    writer.start()
    writer.join(timeout=WAIT_S)
    assert writer.exitcode == -signal.SIGKILL
    assert breaker.snapshot()["failures"] == 0
    breaker.on_failure()

    assert breaker.snapshot()["failures"] == 1
    assert breaker.state is BreakerState.CLOSED
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert any("'openai': record 0 of" in text and "left mid-write" in text for text in warnings)
