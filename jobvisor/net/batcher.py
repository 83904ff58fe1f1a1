"""Collect items submitted by many threads into batches for one upstream call per batch."""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Generic, Self, TypeVar

from jobvisor.errors import ConfigError, JobvisorError

T = TypeVar("T")
R = TypeVar("R")


class BatchSizeMismatchError(JobvisorError):
    """``process_batch`` returned a different number of results than it was given items."""

    def __init__(self, name: str, expected: int, actual: int) -> None:
        super().__init__(
            f"batcher {name!r}: process_batch returned {actual} results for {expected} items; "
            "it must return exactly one result per item, in the order of the items"
        )
        self.name = name
        self.expected = expected
        self.actual = actual


class BatcherClosedError(JobvisorError, RuntimeError):
    """An item was submitted to a batcher after its ``close()``."""


class BatcherForkedError(JobvisorError, RuntimeError):
    """A batcher built in one process was used in another, such as a forked worker."""


@dataclass
class _Pending(Generic[T, R]):
    item: T
    future: Future[R]
    submitted_at: float


class RequestBatcher(Generic[T, R]):
    """Batch items from many threads into calls of ``process_batch(items) -> results``.

    A collector thread starts a batch with the oldest pending item. It sends the batch once
    it contains ``max_batch_size`` items or ``max_wait_s`` seconds after that item was
    submitted, whichever comes first. At most ``max_in_flight`` batches run at once, on a
    pool of that many threads. While all are busy the collector waits, and new items queue
    up, so they go out in full batches once a slot frees.

    ``process_batch`` must return one result per item, in order: caller i gets
    ``results[i]``. When it raises, every caller of that batch gets that exception. When
    it returns the wrong number of results, every caller of that batch gets
    :class:`BatchSizeMismatchError`. Other batches are not affected.

    Memory: each pending item is held until its batch runs. :meth:`submit` blocks its
    thread, so blocking callers bound the queue; callers of :meth:`submit_async` must
    bound how many futures they keep open.

    A batcher belongs to the process that built it. Build it inside the worker process,
    for example on first use in a handler; a forked child that uses its parent's
    batcher gets :class:`BatcherForkedError`.
    """

    def __init__(
        self,
        process_batch: Callable[[list[T]], Sequence[R]],
        *,
        max_batch_size: int = 10,
        max_wait_s: float = 0.1,
        max_in_flight: int = 4,
        name: str = "batcher",
    ) -> None:
        if max_batch_size < 1:
            raise ConfigError(f"batcher {name!r}: max_batch_size must be 1 or more, "
                              f"got {max_batch_size}")
        if max_wait_s < 0:
            raise ConfigError(f"batcher {name!r}: max_wait_s must be 0 or more seconds, "
                              f"got {max_wait_s}")
        if max_in_flight < 1:
            raise ConfigError(f"batcher {name!r}: max_in_flight must be 1 or more, "
                              f"got {max_in_flight}")
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_in_flight = max_in_flight
        self._process_batch = process_batch
        self._pid = os.getpid()
        self._queue: deque[_Pending[T, R]] = deque()
        self._condition = threading.Condition()
        self._closing = False
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._executor = ThreadPoolExecutor(
            max_workers=max_in_flight, thread_name_prefix=f"{name}-batch"
        )
        self._collector = threading.Thread(
            target=self._collect_forever, name=f"{name}-collector", daemon=True
        )
        self._collector.start()

    @property
    def pending(self) -> int:
        """Number of submitted items not yet handed to ``process_batch``."""
        self._check_process()
        with self._condition:
            return len(self._queue)

    def submit_async(self, item: T) -> Future[R]:
        """Queue ``item`` and return a future of its result.

        Cancelling the future before its batch starts removes the item from the batch.
        Raises BatcherClosedError after :meth:`close` and BatcherForkedError in a process
        other than the one that built the batcher.
        """
        self._check_process()
        future: Future[R] = Future()
        with self._condition:
            if self._closing:
                raise BatcherClosedError(
                    f"batcher {self.name!r} is closed, so build a new one to submit more items"
                )
            self._queue.append(_Pending(item, future, time.monotonic()))
            self._condition.notify()
        return future

    def submit(self, item: T, timeout: float | None = None) -> R:
        """Queue ``item``, wait for its batch and return its result.

        ``timeout`` is in seconds (None waits without limit). On timeout it raises
        TimeoutError, and the item is dropped if its batch has not started yet. Raises
        what ``process_batch`` raised, or BatchSizeMismatchError.
        """
        future = self.submit_async(item)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self) -> None:
        """Send every pending item, wait for all batches to finish and stop the threads.

        Safe to call more than once. In a forked child it only marks the batcher closed,
        because the parent's threads do not exist there.
        """
        if os.getpid() != self._pid:
            self._closing = True
            return
        with self._condition:
            self._closing = True
            self._condition.notify_all()
        self._collector.join()
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _check_process(self) -> None:
        # Checked before any lock is taken, because a lock that a parent thread held at the
        # fork stays locked forever in the child.
        pid = os.getpid()
        if pid != self._pid:
            raise BatcherForkedError(
                f"batcher {self.name!r} was built in process {self._pid} and cannot be used "
                f"in process {pid}: its threads do not survive a fork. Build the batcher "
                "inside the worker process, for example on first use in the handler"
            )

    def _collect_forever(self) -> None:
        while True:
            # Taking a slot before collecting lets items pile up while all slots are busy,
            # so they leave in full batches when a slot frees.
            self._slots.acquire()
            batch = self._next_batch()
            if batch is None:
                self._slots.release()
                return
            started = [entry for entry in batch if entry.future.set_running_or_notify_cancel()]
            if not started:
                self._slots.release()
                continue
            self._executor.submit(self._run_batch, started)

    def _next_batch(self) -> list[_Pending[T, R]] | None:
        """Wait for a full batch or until max_wait_s after its oldest item, then take it.

        Returns None once the batcher is closed and the queue is empty.
        """
        with self._condition:
            while not self._queue and not self._closing:
                self._condition.wait()
            if not self._queue:
                return None
            deadline = self._queue[0].submitted_at + self.max_wait_s
            while len(self._queue) < self.max_batch_size and not self._closing:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._condition.wait(remaining)
            count = min(len(self._queue), self.max_batch_size)
            return [self._queue.popleft() for _ in range(count)]

    def _run_batch(self, batch: list[_Pending[T, R]]) -> None:
        try:
            try:
                results = list(self._process_batch([entry.item for entry in batch]))
            except BaseException as exc:
                for entry in batch:
                    entry.future.set_exception(exc)
                if not isinstance(exc, Exception):
                    raise
                return
            if len(results) != len(batch):
                error = BatchSizeMismatchError(self.name, len(batch), len(results))
                for entry in batch:
                    entry.future.set_exception(error)
                return
            for entry, result in zip(batch, results, strict=True):
                entry.future.set_result(result)
        finally:
            self._slots.release()
