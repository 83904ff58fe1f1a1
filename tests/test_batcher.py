"""Tests of RequestBatcher with real threads and, for fork safety, a forked child.

Batch boundaries are made deterministic in two ways. Tests that submit from one thread set a
long max_wait_s, so a batch only leaves when it is full. The 1,000-caller test first fills
every in-flight slot with a blocked "gate" batch and releases the gates only when all 1,000
items are queued. From then on every batch is full, however slowly the threads started.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import pytest

from jobvisor.errors import ConfigError
from jobvisor.net import (
    BatcherClosedError,
    BatcherForkedError,
    BatchSizeMismatchError,
    RequestBatcher,
)

# Long enough that a batch submitted from one thread never leaves half full by timeout.
FULL_BATCHES_ONLY_S = 10.0


class Recorder:
    """Batch function that doubles each item and records batch sizes and concurrency."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.delay_s = delay_s
        self.lock = threading.Lock()
        self.batches: list[list[int]] = []
        self.in_flight = 0
        self.max_in_flight = 0

    def __call__(self, items: list[int]) -> list[int]:
        with self.lock:
            self.batches.append(list(items))
            self.in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            if self.delay_s:
                time.sleep(self.delay_s)
            return [item * 2 for item in items]
        finally:
            with self.lock:
                self.in_flight -= 1


def wait_until(condition: Callable[[], bool], timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(0.01)


def test_thousand_callers_make_fifty_batches() -> None:
    recorder = Recorder()
    gates_started = threading.Semaphore(0)
    release_gates = threading.Event()

    def process(items: list[int]) -> list[int]:
        if items and items[0] < 0:
            gates_started.release()
            release_gates.wait(60)
            return [0] * len(items)
        return recorder(items)

    batcher: RequestBatcher[int, int] = RequestBatcher(
        process, max_batch_size=20, max_wait_s=0.05, max_in_flight=4, name="echo"
    )
    # One gate item per slot, each alone in its batch, so all four slots are held.
    gates = []
    for gate in range(-1, -5, -1):
        gates.append(batcher.submit_async(gate))
        assert gates_started.acquire(timeout=30)

    with ThreadPoolExecutor(max_workers=1000) as pool:
        futures = [pool.submit(batcher.submit, item, 60) for item in range(1000)]
        wait_until(lambda: batcher.pending == 1000)
        release_gates.set()
        results = [future.result(timeout=60) for future in futures]
    batcher.close()

    assert results == [item * 2 for item in range(1000)]
    assert [gate.result() for gate in gates] == [0, 0, 0, 0]
    assert len(recorder.batches) == 50
    assert all(len(batch) == 20 for batch in recorder.batches)
    assert sorted(item for batch in recorder.batches for item in batch) == list(range(1000))
    assert recorder.max_in_flight <= 4


def test_each_caller_gets_own_result_concurrently() -> None:
    # Threads submit as they start, so batches may be partial here. Only results are checked.
    recorder = Recorder()
    with RequestBatcher(recorder, max_batch_size=20, max_wait_s=0.05) as batcher:
        with ThreadPoolExecutor(max_workers=100) as pool:
            results = list(pool.map(batcher.submit, range(500)))

    assert results == [item * 2 for item in range(500)]
    assert sum(len(batch) for batch in recorder.batches) == 500
    assert all(len(batch) <= 20 for batch in recorder.batches)


def submit_all(batcher: RequestBatcher[int, int], count: int) -> list[Future[int]]:
    return [batcher.submit_async(item) for item in range(count)]


def test_short_result_fails_only_that_batch() -> None:
    def process(items: list[int]) -> list[int]:
        results = [item * 2 for item in items]
        return results[:-1] if 7 in items else results

    batcher: RequestBatcher[int, int] = RequestBatcher(
        process, max_batch_size=5, max_wait_s=FULL_BATCHES_ONLY_S, name="short"
    )
    futures = submit_all(batcher, 15)
    batcher.close()

    for item in [*range(0, 5), *range(10, 15)]:
        assert futures[item].result(timeout=10) == item * 2
    for item in range(5, 10):
        error = futures[item].exception(timeout=10)
        assert isinstance(error, BatchSizeMismatchError)
        assert error.expected == 5
        assert error.actual == 4
        assert "batcher 'short'" in str(error)
        assert "returned 4 results for 5 items" in str(error)


def test_batch_exception_reaches_every_caller() -> None:
    def process(items: list[int]) -> list[int]:
        if 7 in items:
            raise ValueError(f"upstream rejected {items}")
        return [item * 2 for item in items]

    batcher: RequestBatcher[int, int] = RequestBatcher(
        process, max_batch_size=5, max_wait_s=FULL_BATCHES_ONLY_S
    )
    futures = submit_all(batcher, 15)
    batcher.close()

    errors = [futures[item].exception(timeout=10) for item in range(5, 10)]
    assert all(isinstance(error, ValueError) for error in errors)
    assert all(error is errors[0] for error in errors)
    assert "upstream rejected [5, 6, 7, 8, 9]" in str(errors[0])
    for item in [*range(0, 5), *range(10, 15)]:
        assert futures[item].result(timeout=10) == item * 2


def test_in_flight_batches_bounded() -> None:
    # 60 items queue within milliseconds and each batch sleeps 0.2 s, so the collector
    # has full batches ready whenever a slot frees and the bound of 3 is reached.
    recorder = Recorder(delay_s=0.2)
    batcher: RequestBatcher[int, int] = RequestBatcher(
        recorder, max_batch_size=5, max_wait_s=FULL_BATCHES_ONLY_S, max_in_flight=3
    )
    futures = submit_all(batcher, 60)
    results = [future.result(timeout=30) for future in futures]
    batcher.close()

    assert results == [item * 2 for item in range(60)]
    assert len(recorder.batches) == 12
    assert recorder.max_in_flight == 3


def test_partial_batch_sent_after_max_wait() -> None:
    recorder = Recorder()
    batcher: RequestBatcher[int, int] = RequestBatcher(
        recorder, max_batch_size=100, max_wait_s=0.2
    )

    started = time.monotonic()
    futures = submit_all(batcher, 3)
    results = [future.result(timeout=10) for future in futures]
    elapsed = time.monotonic() - started
    batcher.close()

    assert results == [0, 2, 4]
    assert recorder.batches == [[0, 1, 2]]
    assert elapsed >= 0.2
    assert elapsed < 5.0


def test_close_flushes_pending_items() -> None:
    recorder = Recorder()
    batcher: RequestBatcher[int, int] = RequestBatcher(
        recorder, max_batch_size=10, max_wait_s=60.0
    )
    futures = submit_all(batcher, 3)

    started = time.monotonic()
    batcher.close()

    assert time.monotonic() - started < 5.0
    assert all(future.done() for future in futures)
    assert [future.result() for future in futures] == [0, 2, 4]
    assert recorder.batches == [[0, 1, 2]]


def test_submit_after_close_raises() -> None:
    batcher: RequestBatcher[int, int] = RequestBatcher(Recorder(), name="closed")
    batcher.close()
    batcher.close()

    with pytest.raises(BatcherClosedError, match="batcher 'closed' is closed"):
        batcher.submit(1)


def test_timed_out_item_dropped_from_batch() -> None:
    recorder = Recorder()
    gate_started = threading.Event()
    release_gate = threading.Event()

    def process(items: list[int]) -> list[int]:
        if items == [-1]:
            gate_started.set()
            release_gate.wait(30)
        return recorder(items)

    batcher: RequestBatcher[int, int] = RequestBatcher(process, max_batch_size=10,
                                                       max_wait_s=0.05, max_in_flight=1)
    gate = batcher.submit_async(-1)
    assert gate_started.wait(30)

    with pytest.raises(TimeoutError):
        batcher.submit(5, timeout=0.1)
    later = batcher.submit_async(6)
    release_gate.set()

    assert gate.result(timeout=10) == -2
    assert later.result(timeout=10) == 12
    batcher.close()
    assert recorder.batches == [[-1], [6]]


def test_forked_child_cannot_use_batcher() -> None:
    batcher: RequestBatcher[int, int] = RequestBatcher(Recorder(), max_wait_s=0.01)
    assert batcher.submit(1, timeout=10) == 2

    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            batcher.submit(2, timeout=1)
        except BatcherForkedError as error:
            code = 0 if "build the batcher inside the worker" in str(error).lower() else 2
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)

    assert os.waitstatus_to_exitcode(status) == 0
    assert batcher.submit(3, timeout=10) == 6
    batcher.close()


def test_defaults_and_invalid_settings() -> None:
    batcher: RequestBatcher[int, int] = RequestBatcher(Recorder())
    assert batcher.max_batch_size == 10
    assert batcher.max_wait_s == 0.1
    assert batcher.max_in_flight == 4
    batcher.close()

    with pytest.raises(ConfigError, match="max_batch_size"):
        RequestBatcher(Recorder(), max_batch_size=0)
    with pytest.raises(ConfigError, match="max_wait_s"):
        RequestBatcher(Recorder(), max_wait_s=-1)
    with pytest.raises(ConfigError, match="max_in_flight"):
        RequestBatcher(Recorder(), max_in_flight=0)
