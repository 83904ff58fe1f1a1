"""Tests of resource budgets against real forked processes; no database is needed.

The machines that run these tests may be shared and have two cores. So CPU checks compare
CPU time over a 10 s window with wide margins. Memory checks allow a few tens of MB for
allocator overhead and copy-on-write pages.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import psutil
import pytest

from jobvisor.supervisor.budgets import (
    MB,
    AllocationError,
    MemoryGuard,
    ResourceBudget,
    private_memory_mb,
)
from jobvisor.supervisor.throttle import (
    CgroupCpuLimiter,
    CpuThrottle,
    SignalThrottler,
    detect_cgroup_cpu_controller,
)

# ResourceBudget


def test_budget_allocate_and_release() -> None:
    budget = ResourceBudget(512, 160)

    budget.allocate(1, "scenes", 200, 30)
    budget.allocate(2, "scenes", 100, 20)
    budget.allocate(3, "cartoonize", 50, 10)

    assert budget.memory_allocated_mb == 350
    assert budget.cpu_allocated_percent == 60
    assert budget.memory_available_mb == 162
    assert budget.cpu_available_percent == 100
    assert budget.can_allocate(162, 100)
    assert not budget.can_allocate(163, 10)
    assert not budget.can_allocate(50, 101)

    budget.release(2)

    assert budget.memory_available_mb == 262
    assert budget.cpu_available_percent == 120
    assert 2 not in budget
    assert len(budget) == 2


def test_budget_as_dict_by_job_type() -> None:
    budget = ResourceBudget(512, 160)
    budget.allocate("a", "scenes", 200, 30)
    budget.allocate("b", "scenes", 100, 20)
    budget.allocate("c", "cartoonize", 50, 10)

    report = budget.as_dict()

    assert report["memory"] == {
        "allocated": 350,
        "total": 512,
        "available": 162,
        "by_job_type": {"scenes": 300, "cartoonize": 50},
    }
    assert report["cpu"] == {
        "allocated": 60,
        "total": 160,
        "available": 100,
        "by_job_type": {"scenes": 50, "cartoonize": 10},
    }


def test_budget_request_over_total_never_fits() -> None:
    budget = ResourceBudget(100, 40)

    assert not budget.can_allocate(101, 10)
    assert not budget.can_allocate(50, 41)
    with pytest.raises(AllocationError, match="requests 101 MB"):
        budget.allocate(1, "big", 101, 10)
    assert len(budget) == 0


def test_budget_full_then_fits_after_release() -> None:
    budget = ResourceBudget(100, 40)
    budget.allocate(1, "a", 100, 20)

    assert not budget.can_allocate(1, 1)
    with pytest.raises(AllocationError, match="only 0 of 100 MB"):
        budget.allocate(2, "a", 1, 1)

    budget.release(1)
    assert budget.can_allocate(100, 40)


def test_budget_float_sums_fit_exactly() -> None:
    budget = ResourceBudget(0.3, 0.3)
    budget.allocate(1, "a", 0.1, 0.1)
    budget.allocate(2, "a", 0.1, 0.1)

    # 0.3 - 0.2 is 0.09999999999999998 in floating point.
    assert budget.can_allocate(0.1, 0.1)


def test_budget_double_allocate_raises() -> None:
    budget = ResourceBudget(512, 160)
    budget.allocate(7, "scenes", 100, 20)

    with pytest.raises(AllocationError, match="key 7 already has a reservation of 100 MB"):
        budget.allocate(7, "scenes", 50, 10)
    assert budget.memory_allocated_mb == 100


def test_budget_release_is_idempotent() -> None:
    budget = ResourceBudget(512, 160)
    budget.allocate(7, "scenes", 100, 20)

    budget.release(7)
    budget.release(7)
    budget.release("never allocated")

    assert budget.memory_available_mb == 512
    assert budget.cpu_available_percent == 160


@pytest.mark.parametrize(
    ("memory_total", "cpu_total"), [(0, 100), (512, -1), (float("nan"), 100), (512, True)]
)
def test_budget_rejects_invalid_totals(memory_total: float, cpu_total: float) -> None:
    with pytest.raises(ValueError, match="is invalid"):
        ResourceBudget(memory_total, cpu_total)


def test_budget_rejects_negative_request() -> None:
    budget = ResourceBudget(512, 160)

    with pytest.raises(ValueError, match="memory_mb=-1 is invalid"):
        budget.can_allocate(-1, 10)


# Forked children


class ForkedChild:
    """A forked child of this process that allocates memory on request; ``close`` kills it."""

    def __init__(self) -> None:
        self._to_child_r, self._to_child_w = os.pipe()
        self._to_parent_r, self._to_parent_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # pragma: no cover - runs in the child
            self._serve()
        self.pid = pid
        os.close(self._to_child_r)
        os.close(self._to_parent_w)
        self._wait_ready()

    def _serve(self) -> None:
        code = 1
        try:
            os.close(self._to_child_w)
            os.close(self._to_parent_r)
            arrays = []
            os.write(self._to_parent_w, b"r")
            while True:
                request = os.read(self._to_child_r, 16)
                if not request:
                    code = 0
                    break
                # np.ones writes every byte, so all pages become resident and private.
                arrays.append(np.ones(int(request) * MB, dtype=np.uint8))
                os.write(self._to_parent_w, b"r")
        finally:
            os._exit(code)

    def _wait_ready(self) -> None:
        ready, _, _ = select.select([self._to_parent_r], [], [], 30)
        assert ready, f"child {self.pid} did not answer within 30 s"
        assert os.read(self._to_parent_r, 1) == b"r"

    def allocate(self, megabytes: int) -> None:
        os.write(self._to_child_w, str(megabytes).encode())
        self._wait_ready()

    def rss_mb(self) -> float:
        return float(psutil.Process(self.pid).memory_info().rss) / MB

    def close(self) -> None:
        os.close(self._to_child_w)
        os.close(self._to_parent_r)
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, signal.SIGKILL)
        os.waitpid(self.pid, 0)


@pytest.fixture
def spawn_child() -> Iterator[Callable[[], ForkedChild]]:
    children: list[ForkedChild] = []

    def spawn() -> ForkedChild:
        child = ForkedChild()
        children.append(child)
        return child

    yield spawn
    for child in children:
        child.close()


@pytest.fixture
def start_spinner() -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start busy-looping Python processes; each is killed and reaped at the end."""
    processes: list[subprocess.Popen[bytes]] = []

    def start() -> subprocess.Popen[bytes]:
        process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
        processes.append(process)
        return process

    yield start
    for process in processes:
        # SIGKILL ends a stopped process too, so no SIGCONT is needed first.
        process.kill()
        process.wait(timeout=10)


def cpu_seconds(pid: int) -> float:
    times = psutil.Process(pid).cpu_times()
    return float(times.user + times.system)


def is_stopped(pid: int) -> bool:
    return bool(psutil.Process(pid).status() == psutil.STATUS_STOPPED)


def wait_until_stopped(pid: int, timeout_s: float = 2.0) -> bool:
    """Poll the process state, because SIGSTOP takes effect asynchronously."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if is_stopped(pid):
            return True
        time.sleep(0.005)
    return is_stopped(pid)


def drive_until_paused(throttler: SignalThrottler, pid: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not throttler.is_paused(pid):
        assert time.monotonic() < deadline, f"worker {pid} was not paused within {timeout_s} s"
        next_due = throttler.tick(time.monotonic())
        assert next_due is not None
        time.sleep(max(0.0, min(next_due - time.monotonic(), 0.1)))
    assert wait_until_stopped(pid), f"worker {pid} is marked paused but its state is not stopped"


# private_memory_mb


def test_private_memory_grows_with_allocation(spawn_child: Callable[[], ForkedChild]) -> None:
    child = spawn_child()
    before_mb = private_memory_mb(child.pid)

    child.allocate(150)
    after_mb = private_memory_mb(child.pid)

    # The allocation adds 150 MB of touched pages; allow 10 MB below (pages reclaimed or
    # counted late) and 20 MB above (allocator and copy-on-write pages).
    growth_mb = after_mb - before_mb
    assert growth_mb >= 140, f"USS grew {growth_mb:.1f} MB ({before_mb:.1f} -> {after_mb:.1f})"
    assert growth_mb <= 170, f"USS grew {growth_mb:.1f} MB ({before_mb:.1f} -> {after_mb:.1f})"


def test_private_memory_of_fork_below_rss(spawn_child: Callable[[], ForkedChild]) -> None:
    ballast = np.ones(200 * MB, dtype=np.uint8)
    child = spawn_child()

    rss_mb = child.rss_mb()
    uss_mb = private_memory_mb(child.pid)
    del ballast

    # A fresh fork maps the parent's 200 MB ballast as shared copy-on-write pages: RSS counts
    # them, USS does not.
    assert rss_mb >= 200, f"RSS of the forked child is {rss_mb:.1f} MB"
    assert uss_mb < rss_mb / 4, f"USS {uss_mb:.1f} MB is not far below RSS {rss_mb:.1f} MB"


def test_private_memory_matches_psutil_uss(spawn_child: Callable[[], ForkedChild]) -> None:
    child = spawn_child()
    child.allocate(20)

    uss_mb = private_memory_mb(child.pid)
    psutil_uss_mb = psutil.Process(child.pid).memory_full_info().uss / MB

    # The idle child does not change between the two reads; 2 MB covers stray page faults.
    assert abs(uss_mb - psutil_uss_mb) < 2, f"smaps_rollup {uss_mb:.2f}, psutil {psutil_uss_mb:.2f}"


def test_private_memory_of_gone_process() -> None:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait(timeout=30)

    with pytest.raises(psutil.NoSuchProcess):
        private_memory_mb(process.pid)


# MemoryGuard


class CountingReader:
    """A read_private_mb spy that counts calls and passes them to private_memory_mb."""

    def __init__(self) -> None:
        self.calls: list[int] = []

    def __call__(self, pid: int) -> float:
        self.calls.append(pid)
        return private_memory_mb(pid)


def test_guard_kills_far_over_budget(spawn_child: Callable[[], ForkedChild]) -> None:
    child = spawn_child()
    child.allocate(400)
    guard = MemoryGuard(hard_factor=2.0)

    verdict = guard.check(child.pid, 100, child.rss_mb())

    assert verdict.action == "kill", verdict
    assert verdict.private_mb is not None and verdict.private_mb > 200
    assert verdict.reason is not None
    assert re.fullmatch(r"memory budget exceeded: \d+ MB > 100 MB", verdict.reason)


def test_guard_recycles_over_budget(spawn_child: Callable[[], ForkedChild]) -> None:
    child = spawn_child()
    child.allocate(130)
    guard = MemoryGuard(hard_factor=2.0)

    verdict = guard.check(child.pid, 100, child.rss_mb())

    # USS is 130 MB plus the child's own few MB, well inside (100, 200].
    assert verdict.action == "recycle", verdict
    assert verdict.private_mb is not None and 100 < verdict.private_mb <= 200
    assert verdict.reason is not None
    pattern = r"memory budget exceeded: 1\d\d MB > 100 MB; recycling after the current job"
    assert re.fullmatch(pattern, verdict.reason)


def test_guard_skips_uss_below_near(spawn_child: Callable[[], ForkedChild]) -> None:
    child = spawn_child()
    reader = CountingReader()
    guard = MemoryGuard(near_fraction=0.8, read_private_mb=reader)
    rss_mb = child.rss_mb()
    # A budget of twice the RSS puts RSS at half the budget, below 0.8 of it.
    budget_mb = 2 * rss_mb

    verdict = guard.check(child.pid, budget_mb, rss_mb)

    assert verdict.action == "ok"
    assert verdict.private_mb is None
    assert reader.calls == []
    assert guard.private_reads == 0


def test_guard_reads_uss_of_shared_rss(spawn_child: Callable[[], ForkedChild]) -> None:
    ballast = np.ones(200 * MB, dtype=np.uint8)
    child = spawn_child()
    reader = CountingReader()
    guard = MemoryGuard(read_private_mb=reader)

    verdict = guard.check(child.pid, 100, child.rss_mb())
    del ballast

    # RSS is over 200 MB of pages shared with this process, but the child's own memory is
    # small, so the verdict is "ok" after one USS read.
    assert verdict.action == "ok", verdict
    assert verdict.private_mb is not None and verdict.private_mb < 100
    assert reader.calls == [child.pid]
    assert guard.private_reads == 1


RECYCLE_SUFFIX = "; recycling after the current job"


@pytest.mark.parametrize(
    ("private_mb", "action", "reason"),
    [
        (100.0, "ok", None),
        (100.2, "recycle", "memory budget exceeded: 101 MB > 100 MB" + RECYCLE_SUFFIX),
        (200.0, "recycle", "memory budget exceeded: 200 MB > 100 MB" + RECYCLE_SUFFIX),
        (200.4, "kill", "memory budget exceeded: 201 MB > 100 MB"),
    ],
)
def test_guard_verdict_boundaries(private_mb: float, action: str, reason: str | None) -> None:
    guard = MemoryGuard(read_private_mb=lambda pid: private_mb)

    verdict = guard.check(1, 100, 90)

    assert verdict.action == action
    assert verdict.private_mb == private_mb
    assert verdict.reason == reason


@pytest.mark.parametrize(
    ("hard_factor", "near_fraction"), [(0.5, 0.8), (2.0, 0.0), (2.0, 1.5), (float("inf"), 0.8)]
)
def test_guard_rejects_invalid_settings(hard_factor: float, near_fraction: float) -> None:
    with pytest.raises(ValueError, match="is invalid"):
        MemoryGuard(hard_factor, near_fraction)


# SignalThrottler


def test_signal_throttle_holds_budget(
    start_spinner: Callable[[], subprocess.Popen[bytes]],
) -> None:
    throttled = start_spinner()
    control = start_spinner()
    throttler = SignalThrottler(period_s=0.1)
    window_s = 10.0

    throttler.track(throttled.pid, 20)
    throttler.set_active(throttled.pid, True)
    started = time.monotonic()
    throttled_start_s = cpu_seconds(throttled.pid)
    control_start_s = cpu_seconds(control.pid)
    pauses = 0
    try:
        while (now := time.monotonic()) < started + window_s:
            was_paused = throttler.is_paused(throttled.pid)
            next_due = throttler.tick(now)
            pauses += int(throttler.is_paused(throttled.pid) and not was_paused)
            wake = next_due if next_due is not None else now + 0.1
            time.sleep(max(0.0, min(wake, started + window_s) - time.monotonic()))
        throttler.resume_all()
        elapsed_s = time.monotonic() - started
        throttled_share = (cpu_seconds(throttled.pid) - throttled_start_s) / elapsed_s
        control_share = (cpu_seconds(control.pid) - control_start_s) / elapsed_s
    finally:
        throttler.untrack(throttled.pid)

    numbers = (
        f"throttled {throttled_share:.1%}, control {control_share:.1%} of one core over "
        f"{elapsed_s:.1f} s, {pauses} pauses"
    )
    # Expected: 20 % plus the initial bucket (0.2 s of CPU, 2 % of the window) plus at most
    # one late burst. 30 % leaves room for ticks delayed on a loaded machine.
    assert throttled_share <= 0.30, numbers
    # Half the budget: a throttle that pauses too long fails here, while a CPU-starved
    # machine that still gives the control spinner 60 % does not.
    assert throttled_share >= 0.10, numbers
    # On two shared cores an unthrottled spinner still gets well over half of one.
    assert control_share > 0.60, numbers
    assert pauses >= 10, numbers


def test_signal_throttle_inactive_resumes(
    start_spinner: Callable[[], subprocess.Popen[bytes]],
) -> None:
    pid = start_spinner().pid
    throttler = SignalThrottler()
    throttler.track(pid, 10)
    throttler.set_active(pid, True)
    drive_until_paused(throttler, pid)

    throttler.set_active(pid, False)

    # SIGCONT wakes a stopped process inside kill(), so no polling is needed here.
    assert not is_stopped(pid)
    assert not throttler.is_paused(pid)
    assert throttler.paused_pids() == []


def test_signal_throttle_never_pauses_inactive(
    start_spinner: Callable[[], subprocess.Popen[bytes]],
) -> None:
    pid = start_spinner().pid
    throttler = SignalThrottler()
    throttler.track(pid, 10)
    throttler.set_active(pid, True)
    drive_until_paused(throttler, pid)
    throttler.set_active(pid, False)

    # The worker spins at 100 % while inactive; ticks must leave it running.
    deadline = time.monotonic() + 0.5
    while time.monotonic() < deadline:
        assert throttler.tick(time.monotonic()) is None
        time.sleep(0.05)

    assert not is_stopped(pid)
    assert not throttler.is_paused(pid)


def test_signal_throttle_debt_carries_over(
    start_spinner: Callable[[], subprocess.Popen[bytes]],
) -> None:
    pid = start_spinner().pid
    throttler = SignalThrottler()
    throttler.track(pid, 10)
    throttler.set_active(pid, True)
    drive_until_paused(throttler, pid)
    throttler.set_active(pid, False)

    # The bucket is still empty when the worker runs its next handler, so the first tick
    # pauses it again. Short back-to-back jobs do not escape the budget.
    throttler.set_active(pid, True)
    throttler.tick(time.monotonic())

    assert throttler.is_paused(pid)
    throttler.untrack(pid)


def test_signal_throttle_untrack_resumes(
    start_spinner: Callable[[], subprocess.Popen[bytes]],
) -> None:
    pid = start_spinner().pid
    throttler = SignalThrottler()
    throttler.track(pid, 10)
    throttler.set_active(pid, True)
    drive_until_paused(throttler, pid)

    throttler.untrack(pid)

    assert not is_stopped(pid)
    assert not throttler.is_paused(pid)
    assert throttler.tick(time.monotonic()) is None


def test_signal_throttle_resume_all(
    start_spinner: Callable[[], subprocess.Popen[bytes]],
) -> None:
    pids = [start_spinner().pid, start_spinner().pid]
    throttler = SignalThrottler()
    for pid in pids:
        throttler.track(pid, 10)
        throttler.set_active(pid, True)
    for pid in pids:
        drive_until_paused(throttler, pid)

    throttler.resume_all()

    for pid in pids:
        assert not is_stopped(pid), f"worker {pid} is still stopped"
    assert throttler.paused_pids() == []


def test_signal_throttle_forgets_gone_process(
    start_spinner: Callable[[], subprocess.Popen[bytes]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="jobvisor.supervisor.throttle")
    process = start_spinner()
    throttler = SignalThrottler()
    throttler.track(process.pid, 10)
    throttler.set_active(process.pid, True)
    process.kill()
    process.wait(timeout=10)

    assert throttler.tick(time.monotonic()) is None

    assert not throttler.is_paused(process.pid)
    assert f"worker {process.pid} ended" in caplog.text
    # Calls for a forgotten pid are ignored.
    throttler.set_active(process.pid, False)
    throttler.untrack(process.pid)


def test_signal_throttle_tick_deadlines(
    start_spinner: Callable[[], subprocess.Popen[bytes]],
) -> None:
    pid = start_spinner().pid
    throttler = SignalThrottler(period_s=0.1)

    assert throttler.tick(time.monotonic()) is None
    throttler.track(pid, 20)
    assert throttler.tick(time.monotonic()) is None

    throttler.set_active(pid, True)
    now = time.monotonic()
    next_due = throttler.tick(now)

    assert next_due is not None
    assert now < next_due <= now + 0.1 + 1e-9
    throttler.untrack(pid)


def test_signal_throttle_rejects_invalid_budget() -> None:
    throttler = SignalThrottler()

    with pytest.raises(ValueError, match="budget_percent=0 is invalid"):
        throttler.track(1, 0)


# cgroup v2


def cgroup_fstype(root: str = "/sys/fs/cgroup") -> str | None:
    fstype = None
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        if fields[1] == root:
            fstype = fields[2]
    return fstype


def test_detect_cgroup_matches_machine() -> None:
    directory = detect_cgroup_cpu_controller()

    if cgroup_fstype() != "cgroup2":
        assert directory is None
    elif directory is not None:
        assert "cpu" in (directory / "cgroup.controllers").read_text().split()
        assert os.access(directory / "cgroup.subtree_control", os.W_OK)


def make_cgroup_tree(
    tmp_path: Path, *, fstype: str = "cgroup2", controllers: str = "cpuset cpu io memory"
) -> tuple[Path, Path, Path]:
    """Build a fake /proc and cgroup root; return (proc, root, expected directory)."""
    proc = tmp_path / "proc"
    root = tmp_path / "cgroup root"
    directory = root / "system.slice" / "jobvisor.service"
    (proc / "self").mkdir(parents=True)
    directory.mkdir(parents=True)
    escaped_root = str(root).replace(" ", "\\040")
    (proc / "mounts").write_text(
        f"proc /proc proc rw 0 0\n{fstype} {escaped_root} {fstype} rw,nosuid 0 0\n"
    )
    (proc / "self" / "cgroup").write_text("0::/system.slice/jobvisor.service\n")
    (directory / "cgroup.controllers").write_text(controllers + "\n")
    (directory / "cgroup.subtree_control").write_text("\n")
    return proc, root, directory


def test_detect_cgroup_delegated_cpu(tmp_path: Path) -> None:
    proc, root, directory = make_cgroup_tree(tmp_path)

    assert detect_cgroup_cpu_controller(proc=proc, root=root) == directory


def test_detect_cgroup_without_cpu(tmp_path: Path) -> None:
    proc, root, _ = make_cgroup_tree(tmp_path, controllers="memory pids")

    assert detect_cgroup_cpu_controller(proc=proc, root=root) is None


def test_detect_cgroup_hybrid_layout(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jobvisor.supervisor.throttle")
    proc, root, _ = make_cgroup_tree(tmp_path, fstype="tmpfs")

    assert detect_cgroup_cpu_controller(proc=proc, root=root) is None
    assert "is not a cgroup2 mount" in caplog.text


def test_cgroup_limiter_writes_files(tmp_path: Path) -> None:
    base = tmp_path / "jobvisor.service"
    base.mkdir()
    (base / "cgroup.subtree_control").write_text("\n")
    limiter = CgroupCpuLimiter(base)

    limiter.limit(4242, 20)
    limiter.limit(4243, 0.5)

    # In a plain directory these are ordinary files, so this checks their content only.
    assert (base / "cgroup.subtree_control").read_text() == "+cpu"
    assert (base / "jobvisor-4242" / "cpu.max").read_text() == "20000 100000"
    assert (base / "jobvisor-4242" / "cgroup.procs").read_text() == "4242"
    assert (base / "jobvisor-4243" / "cpu.max").read_text() == "1000 100000"


def test_cgroup_limiter_release_populated(tmp_path: Path) -> None:
    base = tmp_path / "jobvisor.service"
    base.mkdir()
    (base / "cgroup.subtree_control").write_text("cpu\n")
    throttle = CpuThrottle(CgroupCpuLimiter(base))
    throttle.track(4242, 20)

    # A plain directory with files cannot be removed, like a cgroup with a live process.
    throttle.untrack(4242)
    now = time.monotonic()

    assert throttle.method == "cgroup"
    assert (base / "jobvisor-4242" / "cpu.max").read_text() == "max 100000"
    assert throttle.tick(now) == now + 1.0
    throttle.untrack(9999)


def test_cpu_throttle_create_on_machine(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="jobvisor.supervisor.throttle")

    throttle = CpuThrottle.create()

    if detect_cgroup_cpu_controller() is None:
        assert throttle.method == "signals"
        assert "SIGSTOP/SIGCONT" in caplog.text
    else:
        assert throttle.method in ("cgroup", "signals")
    assert throttle.tick(time.monotonic()) is None
    assert throttle.paused_pids() == []


def test_cpu_throttle_signals_facade(
    start_spinner: Callable[[], subprocess.Popen[bytes]],
) -> None:
    pid = start_spinner().pid
    throttle = CpuThrottle(SignalThrottler())
    throttle.track(pid, 10)
    throttle.set_active(pid, True)
    assert isinstance(throttle.backend, SignalThrottler)
    drive_until_paused(throttle.backend, pid)

    assert throttle.is_paused(pid)
    assert throttle.paused_pids() == [pid]
    throttle.resume_all()
    assert not is_stopped(pid)
    throttle.untrack(pid)
