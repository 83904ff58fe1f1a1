"""The supervisor: one process per node that forks, watches and restarts worker processes.

It is single-threaded, so fork() is safe. Signal handlers only queue the signal. Each turn
of the loop handles queued signals, reads the children's status pipes, and reaps dead
children, requeueing their jobs. It then kills children past their hard timeout, holds
running jobs to their CPU budget, renews the leases of live children's jobs and requeues
jobs whose lease expired on any node. Once per sample interval it measures the node and the
children, enforces memory budgets and lets the concurrency manager move the node's limit.
Last, it forks or retires workers until each job type has the number the allocation plan
gives it, as far as the memory and CPU budgets allow.
"""

from __future__ import annotations

import contextlib
import logging
import os
import selectors
import signal
import socket
import time
from collections import deque
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import psutil
import psycopg

from jobvisor.db.store import JobStore, TypeBacklog
from jobvisor.errors import ConfigError
from jobvisor.resilience.breakers import BreakerRegistry
from jobvisor.supervisor.allocation import TypeDemand, plan_workers
from jobvisor.supervisor.budgets import MemoryGuard, ResourceBudget
from jobvisor.supervisor.children import Child, spawn_child
from jobvisor.supervisor.concurrency import ConcurrencyManager
from jobvisor.supervisor.restarts import RestartPolicy
from jobvisor.supervisor.sampling import NodeTelemetry
from jobvisor.supervisor.throttle import CpuThrottle
from jobvisor.telemetry.shm import SlotState, TornReadError
from jobvisor.telemetry.snapshot import write_snapshot

if TYPE_CHECKING:
    from jobvisor.app import App
    from jobvisor.config import Settings

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "jobvisor_jobs"
ALLOCATE_INTERVAL_S = 1.0
# Maximum sleep of one loop turn (seconds). Signals and child exits wake the loop sooner.
TICK_S = 0.5
# Maximum sleep while CPU budgets are enforced and workers exist, so that a new job is
# noticed and charged soon after it starts.
THROTTLE_TICK_S = 0.1
DB_RETRY_S = 2.0
# A job is held to its CPU budget once it has run this long (seconds).
MIN_THROTTLED_JOB_S = 0.05
# Due jobs per type counted for the queue depth metric; counting stops there to stay cheap.
QUEUE_DEPTH_CAP = 10_000


class Supervisor:
    """Runs workers for ``types`` (default: every registered type) until stopped.

    ``exit_when_idle`` stops it once no job of its types is pending or running anywhere.
    """

    def __init__(
        self,
        app: App,
        *,
        types: Sequence[str] | None = None,
        settings: Settings | None = None,
        exit_when_idle: bool = False,
    ) -> None:
        self.app = app
        self.settings = settings or app.settings
        self.types = list(types) if types is not None else list(app.job_types)
        unknown = [t for t in self.types if t not in app.job_types]
        if unknown:
            raise ConfigError(f"job types {unknown} are not registered; registered: {sorted(app.job_types)}")
        if not self.types:
            raise ConfigError("the app registers no job types; decorate a handler with @app.job(...)")
        self._check_budgets_fit()
        self.exit_when_idle = exit_when_idle
        self.node = f"{socket.gethostname()}:{os.getpid()}"
        self.children: dict[int, Child] = {}
        self.policies = {
            t: RestartPolicy(
                job_type=t,
                backoff_s=self.settings.restart_backoff_s,
                backoff_max_s=self.settings.restart_backoff_max_s,
                max_crashes=self.settings.crash_loop_restarts,
                window_s=self.settings.crash_loop_window_s,
                pause_s=self.settings.crash_pause_s,
            )
            for t in self.types
        }
        self._signals: deque[int] = deque()
        self._selector = selectors.DefaultSelector()
        self._conn: psycopg.Connection[Any] | None = None
        self._conn_fd: int | None = None
        self._store: JobStore | None = None
        self._stopping = False
        self._stop_deadline = 0.0
        self._allocate_now = True
        self._next_allocate = 0.0
        self._next_renew = 0.0
        self._next_sweep = 0.0
        self._next_db_attempt = 0.0
        self._idle_checks = 0
        self._wake_r = self._wake_w = -1
        # Every worker id this supervisor started; a dead one leaves when its jobs are requeued.
        self._all_worker_ids: set[str] = set()
        self._backlog: dict[str, TypeBacklog] = {}
        self._next_snapshot = 0.0
        self._next_sample = 0.0
        cpu_count = psutil.cpu_count() or 1
        adaptive = self.settings.adaptive_concurrency
        self.concurrency = ConcurrencyManager(
            self.settings.max_concurrent_jobs,
            cpu_count=cpu_count,
            memory_total_gb=psutil.virtual_memory().total / 1024**3,
            ceiling=self.settings.ceiling_for(cpu_count) if adaptive else self.settings.max_concurrent_jobs,
            cooldown_s=self.settings.concurrency_cooldown_s,
            auto_tune=adaptive,
            # Decision times are Unix times, as the snapshot reports them.
            now=time.time(),
        )
        self.budget = ResourceBudget(
            self.settings.job_memory_limit_mb, self.settings.job_cpu_limit_percent * cpu_count
        )
        self._memory_guard = MemoryGuard(hard_factor=self.settings.memory_hard_factor)
        self._throttle: CpuThrottle | None = None
        self._telemetry: NodeTelemetry | None = None
        self._unfit_logged: set[str] = set()
        # Job types whose workers the services' breakers hold back, with the reason.
        self._held_back: dict[str, str] = {}
        # The causes behind _held_back, without measured figures, to log only real changes.
        self._held_back_causes: dict[str, str] = {}
        self._next_throttle: float | None = None

    def _check_budgets_fit(self) -> None:
        """Raise ConfigError for a job type whose budget exceeds the node's whole budget."""
        cpu_total = self.settings.job_cpu_limit_percent * (psutil.cpu_count() or 1)
        for name in self.types:
            spec = self.app.job_types[name]
            if spec.memory_mb > self.settings.job_memory_limit_mb:
                raise ConfigError(
                    f"job type {name!r} needs {spec.memory_mb} MB per job, more than "
                    f"JOB_MEMORY_LIMIT={self.settings.job_memory_limit_mb} MB for the whole node, "
                    "so none of its jobs could ever start; raise JOB_MEMORY_LIMIT or lower the "
                    "type's memory budget"
                )
            if spec.cpu_percent > cpu_total:
                raise ConfigError(
                    f"job type {name!r} needs {spec.cpu_percent} % of one core per job, more than "
                    f"JOB_CPU_LIMIT={self.settings.job_cpu_limit_percent} % of this machine "
                    f"({cpu_total} % of one core), so none of its jobs could ever start; raise "
                    "JOB_CPU_LIMIT or lower the type's CPU budget"
                )

    # Lifecycle

    def run(self) -> int:
        """Run until SIGTERM/SIGINT (or idle, with exit_when_idle); return the exit code."""
        self._connect()
        self._telemetry = NodeTelemetry(self.app, self.settings)
        # Created before any fork, so every worker shares the node's breakers.
        self.app.use_breakers(BreakerRegistry(self._telemetry.block, self.app.breaker_configs))
        for service in sorted({"database", *(s for t in self.types for s in self.app.job_types[t].services)}):
            self.app.breakers.get(service)
        if self.settings.cpu_throttle:
            self._throttle = CpuThrottle.create(may_pause=self._in_handler)
        self._install_signals()
        logger.info(
            "supervisor %s started: types %s, at most %d jobs at once%s",
            self.node, ", ".join(self.types), self.concurrency.limit,
            "" if self.settings.adaptive_concurrency else " (adaptive concurrency off)",
        )
        try:
            try:
                while True:
                    self._wait()
                    self._handle_signals()
                    self._read_statuses()
                    self._reap()
                    self._throttle_tick()
                    if self._stopping:
                        if not self.children:
                            break
                        self._drain_step()
                        self._database_tick()
                        continue
                    self._enforce_timeouts()
                    self._sample_tick()
                    self._database_tick()
                    self._write_snapshot()
            finally:
                self._shutdown()
            self._write_snapshot(final=True)
        finally:
            self._telemetry.close()
        logger.info("supervisor %s stopped", self.node)
        return 0

    def request_stop(self, reason: str) -> None:
        """Stop claiming; running jobs get the drain timeout to finish."""
        if self._stopping:
            return
        self._stopping = True
        self._stop_deadline = time.monotonic() + self.settings.drain_timeout_s
        logger.info(
            "supervisor %s stopping (%s): draining %d workers for up to %.0f s",
            self.node, reason, len(self.children), self.settings.drain_timeout_s,
        )
        for child in self.children.values():
            child.stop_reason = reason
            child.signal(signal.SIGTERM)

    def _stop_now(self) -> None:
        logger.warning("supervisor %s: second stop signal, killing %d workers", self.node, len(self.children))
        self._kill_all("supervisor stopped at once by a second signal")

    def _drain_step(self) -> None:
        if time.monotonic() >= self._stop_deadline:
            logger.warning(
                "supervisor %s: drain timeout of %.0f s passed, killing %d workers",
                self.node, self.settings.drain_timeout_s, len(self.children),
            )
            self._kill_all(f"requeued at shutdown: the drain timeout of {self.settings.drain_timeout_s:g} s passed")

    def _kill_all(self, reason: str) -> None:
        if self._throttle is not None:
            self._throttle.resume_all()
        for child in list(self.children.values()):
            child.kill_reason = reason
            child.signal(signal.SIGKILL)
        # Waiting is bounded: SIGKILL cannot be caught.
        for pid in list(self.children):
            with contextlib.suppress(ChildProcessError):
                _, status, _ = os.wait4(pid, 0)
                self._on_child_exit(self.children[pid], status)

    def _shutdown(self) -> None:
        if self.children:
            self._kill_all("supervisor exited")
        if self._throttle is not None:
            self._throttle.resume_all()
        store = self._ready_store()
        if store is not None and self._all_worker_ids:
            # Safety net: nothing that this node's workers held stays in processing.
            with contextlib.suppress(psycopg.Error):
                store.requeue_workers(list(self._all_worker_ids), "supervisor stopped", count_attempt=False)
        signal.set_wakeup_fd(-1)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(signum, signal.SIG_DFL)
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._selector.close()
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()

    # Signals and waiting

    def _install_signals(self) -> None:
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        signal.set_wakeup_fd(self._wake_w, warn_on_full_buffer=False)
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD, signal.SIGHUP):
            signal.signal(signum, self._queue_signal)
        self._selector.register(self._wake_r, selectors.EVENT_READ, "signal")

    def _queue_signal(self, signum: int, frame: Any) -> None:
        self._signals.append(signum)

    def _wait(self) -> None:
        timeout = TICK_S
        if self._allocate_now and not self._stopping:
            timeout = 0.0
        if self._throttle is not None and self.children:
            timeout = min(timeout, THROTTLE_TICK_S)
        if self._next_throttle is not None:
            timeout = max(0.0, min(timeout, self._next_throttle - time.monotonic()))
        for key, _ in self._selector.select(timeout):
            if key.data == "signal":
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 4096):
                        pass
            elif key.data == "database":
                self._drain_notifications()

    def _handle_signals(self) -> None:
        while self._signals:
            signum = self._signals.popleft()
            if signum in (signal.SIGTERM, signal.SIGINT):
                name = signal.Signals(signum).name
                if self._stopping:
                    self._stop_now()
                else:
                    self.request_stop(f"received {name}")
            elif signum == signal.SIGHUP:
                logger.info("supervisor %s: SIGHUP received, recycling workers", self.node)
                for child in self.children.values():
                    child.stop_reason = "recycled on SIGHUP"
                    child.signal(signal.SIGTERM)
            # SIGCHLD only wakes the loop; _reap does the work.

    # Children

    def _read_statuses(self) -> None:
        for child in self.children.values():
            child.read_status()
            self._after_status(child)

    def _after_status(self, child: Child) -> None:
        if self._telemetry is not None and child.attempts:
            self._telemetry.record_attempts(child)
        if child.busy or child.stop_reason or child.kill_reason:
            return
        if child.recycle_reason is not None:
            child.stop_reason = child.recycle_reason
            logger.warning("worker %s (%s) recycled: %s", child.worker_id, child.job_type, child.recycle_reason)
            child.signal(signal.SIGTERM)

    def _reap(self) -> None:
        while self.children:
            try:
                pid, status, _ = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            child = self.children.get(pid)
            if child is not None:
                self._on_child_exit(child, status)

    def _on_child_exit(self, child: Child, status: int) -> None:
        del self.children[child.pid]
        child.read_status()
        child.close()
        self.budget.release(child.pid)
        if self._throttle is not None:
            self._throttle.untrack(child.pid)
        if self._telemetry is not None:
            self._telemetry.record_attempts(child)
            self._telemetry.detach_child(child)
        code = os.waitstatus_to_exitcode(status)
        how = f"exit code {code}" if code >= 0 else f"signal {signal.Signals(-code).name}"
        policy = self.policies[child.job_type]
        if child.kill_reason is not None:
            # The decision to kill was logged with its reason when it was made.
            reason, count_attempt = child.kill_reason, not self._stopping
            logger.info("worker %s (%s) exited after SIGKILL", child.worker_id, child.job_type)
        elif code == 0:
            reason, count_attempt = f"worker {child.worker_id} exited", False
            logger.info("worker %s (%s) exited after %d jobs", child.worker_id, child.job_type, child.jobs_done)
            policy.record_clean_exit()
        else:
            reason = f"worker process {child.pid} died ({how})"
            count_attempt = True
            logger.error("worker %s (%s) died (%s) during job %s", child.worker_id, child.job_type, how, child.job_id)
            policy.record_crash()
        self._requeue_from(child, reason, count_attempt)
        self._allocate_now = True

    def _requeue_from(self, child: Child, reason: str, count_attempt: bool) -> None:
        store = self._ready_store()
        if store is None:
            # The jobs stay leased; renewal stops, so any node requeues them when it expires.
            logger.error("cannot requeue jobs of worker %s now: no database connection", child.worker_id)
            return
        try:
            rows = store.requeue_workers([child.worker_id], reason, count_attempt=count_attempt)
        except psycopg.Error as error:
            logger.error("requeueing jobs of worker %s failed: %s", child.worker_id, error)
            self._drop_connection()
            return
        self._all_worker_ids.discard(child.worker_id)
        for row in rows:
            logger.warning(
                "job %d (%s) %s after retry %d: %s",
                row["id"], row["type"], "requeued" if row["status"] == "pending" else "failed",
                row["retry_count"], reason,
            )

    def _enforce_timeouts(self) -> None:
        now = time.monotonic()
        grace = self.settings.hard_timeout_grace_s
        for child in self.children.values():
            if child.kill_reason or child.job_started_at is None or child.job_timeout_s is None:
                continue
            if now - child.job_started_at > child.job_timeout_s + grace:
                child.kill_reason = (
                    f"timed out after {child.job_timeout_s:g} s and did not stop within "
                    f"{grace:g} s; the worker was killed"
                )
                logger.error("job %s on worker %s: %s", child.job_id, child.worker_id, child.kill_reason)
                child.signal(signal.SIGKILL)

    def _spawn(self, job_type: str) -> None:
        spec = self.app.job_types[job_type]
        close_fds = [self._wake_r, self._wake_w] + [c.status_fd for c in self.children.values()]
        telemetry = None
        if self._telemetry is not None and self._telemetry.block is not None:
            slot = self._telemetry.free_slot({c.slot for c in self.children.values() if c.slot is not None})
            if slot is not None:
                telemetry = (self._telemetry.block, slot)
        child = spawn_child(
            self.app, job_type, self.settings, close_fds=close_fds, node=self.node, telemetry=telemetry
        )
        self.children[child.pid] = child
        self._all_worker_ids.add(child.worker_id)
        self.budget.allocate(child.pid, job_type, spec.memory_mb, spec.cpu_percent)
        if self._telemetry is not None:
            self._telemetry.attach_child(child)
        if self._throttle is not None:
            self._throttle.track(child.pid, spec.cpu_percent)

    def _fits_budget(self, job_type: str) -> bool:
        """Tell whether one more worker of ``job_type`` fits the memory and CPU budgets."""
        spec = self.app.job_types[job_type]
        if self.budget.can_allocate(spec.memory_mb, spec.cpu_percent):
            self._unfit_logged.discard(job_type)
            return True
        if job_type not in self._unfit_logged:
            self._unfit_logged.add(job_type)
            memory, cpu = self.budget.as_dict()["memory"], self.budget.as_dict()["cpu"]
            logger.warning(
                "no worker for %s starts now: it needs %d MB and %d %% CPU, and %g of %g MB and "
                "%g of %g %% CPU are free (JOB_MEMORY_LIMIT, JOB_CPU_LIMIT)",
                job_type, spec.memory_mb, spec.cpu_percent, memory["available"], memory["total"],
                cpu["available"], cpu["total"],
            )
        return False

    # Measurements and budgets

    def _handler_start(self, child: Child) -> tuple[float, float | None] | None:
        """Return when ``child``'s handler started: (monotonic time, its CPU seconds then).

        The CPU figure is None when the worker has no telemetry slot.

        Returns None when no handler runs or it has run less than MIN_THROTTLED_JOB_S: such
        short jobs end before a pause could matter, and between jobs the worker may be in a
        database transaction, where a pause would hold its locks. The worker's own slot is
        read, because the status pipe is read only once per loop turn.
        """
        if child.kill_reason is not None:
            return None
        if self._telemetry is None or self._telemetry.block is None or child.slot is None:
            if child.job_started_at is None:
                return None
            elapsed = time.monotonic() - child.job_started_at
            return None if elapsed < MIN_THROTTLED_JOB_S else (child.job_started_at, None)
        try:
            record = self._telemetry.block.read_slot(child.slot)
        except TornReadError:
            return None
        if record.child_state != SlotState.RUNNING or not record.job_id:
            return None
        elapsed = time.time() - record.job_started_at
        if elapsed < MIN_THROTTLED_JOB_S:
            return None
        return time.monotonic() - elapsed, record.job_cpu_s

    def _in_handler(self, pid: int) -> bool:
        """Tell whether worker ``pid`` runs a handler now, by its own telemetry slot."""
        child = self.children.get(pid)
        return child is not None and self._handler_start(child) is not None

    def _throttle_tick(self) -> None:
        if self._throttle is None:
            return
        for child in self.children.values():
            start = self._handler_start(child)
            if start is None:
                self._throttle.set_active(child.pid, False)
                continue
            started, cpu_s = start
            since = None if cpu_s is None else (started, cpu_s)
            self._throttle.set_active(child.pid, True, since=since)
        self._next_throttle = self._throttle.tick(time.monotonic())

    def _sample_tick(self) -> None:
        now = time.monotonic()
        if now < self._next_sample or self._telemetry is None:
            return
        self._next_sample = now + self.settings.sample_interval_s
        store = self._ready_store()
        if store is not None:
            try:
                self._backlog = store.pending_summary(self.types, cap=QUEUE_DEPTH_CAP)
            except psycopg.OperationalError as error:
                logger.error("supervisor %s lost its database connection: %s", self.node, error)
                self._drop_connection()
        children = list(self.children.values())
        throttled = self._throttle.paused_pids() if self._throttle is not None else set()
        row = self._telemetry.sample(
            children, self._backlog, self.concurrency.limit, self.budget.as_dict(), throttled
        )
        self._enforce_memory(children)
        if self.settings.adaptive_concurrency and self.concurrency.observe(row["timestamp"], row) is not None:
            self._allocate_now = True

    def _enforce_memory(self, children: list[Child]) -> None:
        assert self._telemetry is not None
        usages = self._telemetry.observer.children
        for child in children:
            usage = usages.get(child.pid)
            if usage is None or usage.rss_mb is None or child.kill_reason is not None:
                continue
            budget_mb = self.app.job_types[child.job_type].memory_mb
            try:
                verdict = self._memory_guard.check(child.pid, budget_mb, usage.rss_mb)
            except (psutil.Error, OSError) as error:
                logger.debug("memory check of worker %s skipped: %s", child.worker_id, error)
                continue
            self._telemetry.observer.record_uss(child.pid, verdict.private_mb)
            if verdict.action == "kill":
                child.kill_reason = verdict.reason
                logger.error(
                    "worker %s (%s) killed during job %s: %s",
                    child.worker_id, child.job_type, child.job_id, verdict.reason,
                )
                if self._throttle is not None:
                    self._throttle.set_active(child.pid, False)
                child.signal(signal.SIGKILL)
            elif verdict.action == "recycle" and child.recycle_reason is None and child.jobs_done > 0:
                # A worker that has not finished a job yet gains nothing from a restart.
                child.recycle_reason = verdict.reason
                self._after_status(child)

    # Database work

    def _database_tick(self) -> None:
        store = self._ready_store()
        if store is None:
            return
        now = time.monotonic()
        try:
            if now >= self._next_renew:
                store.renew_leases([c.worker_id for c in self.children.values()], self.settings.lease_seconds)
                self._next_renew = now + self.settings.lease_seconds / 3
            if now >= self._next_sweep:
                for row in store.requeue_expired():
                    logger.warning("job %d (%s) lease expired; %s", row["id"], row["type"], row["status"])
                self._next_sweep = now + self.settings.lease_sweep_interval_s
            if self._stopping:
                return
            if self._allocate_now or now >= self._next_allocate:
                self._allocate(store)
                self._allocate_now = False
                self._next_allocate = now + ALLOCATE_INTERVAL_S
        except psycopg.OperationalError as error:
            logger.error("supervisor %s lost its database connection: %s", self.node, error)
            self._drop_connection()

    def _allocate(self, store: JobStore) -> None:
        capacity = self.concurrency.limit
        if self.settings.max_connections:
            # The supervisor uses one connection and each worker one.
            capacity = min(capacity, self.settings.max_connections - 1)
        backlog = store.pending_summary(self.types, cap=capacity)
        if self.exit_when_idle and self._check_idle(store, backlog):
            self.request_stop("no jobs left")
            return

        live = [c for c in self.children.values() if c.stop_reason is None and c.kill_reason is None]
        demands = []
        for job_type in self.types:
            spec = self.app.job_types[job_type]
            mine = [c for c in live if c.job_type == job_type]
            busy = sum(1 for c in mine if c.busy)
            item = backlog.get(job_type)
            due = item.due if item else 0
            score = item.head_score if item and item.head_score is not None else float(spec.priority) - 100
            limit = 0 if self.policies[job_type].paused() else spec.concurrency
            limit = min(limit, self._service_limit(job_type, len(mine)))
            demands.append(TypeDemand(job_type, limit, due + busy, score, len(mine)))
        target = plan_workers(demands, capacity)

        for job_type, count in target.items():
            mine = [c for c in live if c.job_type == job_type]
            # Retire idle workers first, then the ones that have worked longest.
            mine.sort(key=lambda c: (c.busy, c.started_at))
            for child in mine[count:]:
                child.stop_reason = self._held_back.get(
                    job_type, "retired: its slot went to another job type"
                )
                child.signal(signal.SIGTERM)
        for job_type, count in target.items():
            policy = self.policies[job_type]
            mine = sum(1 for c in live if c.job_type == job_type)
            while (
                mine < count
                and len(self.children) < capacity
                and policy.may_start()
                and self._fits_budget(job_type)
            ):
                self._spawn(job_type)
                mine += 1

    def _service_limit(self, job_type: str, current: int) -> int:
        """Return how many workers ``job_type`` may have given its services' breakers.

        An open breaker allows none, so the type's jobs stay pending. A breaker past its
        reset timeout, or half-open, allows one worker, whose next call is the probe. Machine CPU
        or memory above a service's thresholds allows no new worker. A change of these
        conditions is logged once, and the stop reason of retired workers names it.
        """
        limit, causes, details = 1_000_000, [], []
        machine = self._telemetry.observer.machine if self._telemetry is not None else None
        for service in self.app.job_types[job_type].services:
            breaker = self.app.breakers.get(service)
            admission = breaker.admission()
            if admission == "none":
                limit = 0
                causes.append(f"{service} open")
                details.append(f"the {service} circuit breaker is open")
            elif admission == "probe":
                limit = min(limit, 1)
                causes.append(f"{service} probe")
                details.append(f"the {service} circuit breaker admits one probe")
            if machine is not None:
                # Queue depth is left out (0): holding workers back would only deepen it.
                exceeded = breaker.check_resources(machine.cpu_percent, machine.memory_percent, 0)
                if exceeded:
                    limit = min(limit, current)
                    causes.append(f"{service} thresholds")
                    details.append(
                        f"no new workers while the machine is above the {service} thresholds "
                        f"({'; '.join(exceeded)})"
                    )
        key = ", ".join(causes) or None
        if key != self._held_back_causes.get(job_type):
            if key is None:
                self._held_back_causes.pop(job_type, None)
                self._held_back.pop(job_type, None)
                logger.info("job type %s runs normally again: its services admit calls", job_type)
            else:
                self._held_back_causes[job_type] = key
                logger.warning("job type %s held back: %s", job_type, "; ".join(details))
        if key is not None:
            self._held_back[job_type] = f"held back: {'; '.join(details)}"
        return limit

    def _write_snapshot(self, *, final: bool = False) -> None:
        now = time.monotonic()
        if not final and now < self._next_snapshot:
            return
        self._next_snapshot = now + self.settings.snapshot_interval_s
        if self._telemetry is None:
            return
        if final:
            state = "stopped"
        elif self._stopping:
            state = "stopping"
        else:
            state = "running"
        concurrency = {
            **self.concurrency.as_dict(),
            "adaptive": self.settings.adaptive_concurrency,
            "max_jobs_per_user": self.settings.max_jobs_per_user,
            "by_job_type": {name: self.app.job_types[name].concurrency for name in self.types},
            "paused_job_types": [t for t, policy in self.policies.items() if policy.paused()],
        }
        snapshot = self._telemetry.snapshot(
            state=state,
            children=list(self.children.values()),
            concurrency=concurrency,
            allocations=self.budget.as_dict(),
            throttled=self._throttle.paused_pids() if self._throttle is not None else set(),
            cpu_throttle=self._throttle.method if self._throttle is not None else "off",
        )
        try:
            write_snapshot(snapshot)
        except OSError as error:
            logger.error("supervisor %s could not write its telemetry snapshot: %s", self.node, error)

    def _check_idle(self, store: JobStore, backlog: dict[str, TypeBacklog]) -> bool:
        waiting = any(item.next_run_at is not None for item in backlog.values())
        if waiting or any(c.busy for c in self.children.values()) or store.processing_count(self.types):
            self._idle_checks = 0
            return False
        self._idle_checks += 1
        # Two checks in a row, a second apart, so a job between claim and status is not missed.
        return self._idle_checks >= 2

    def _connect(self) -> None:
        self._conn = self.app.connect(application_name=f"jobvisor-supervisor {self.node}")
        self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        # Kept, because fileno() raises once the connection is lost.
        self._conn_fd = self._conn.fileno()
        self._selector.register(self._conn_fd, selectors.EVENT_READ, "database")
        self._store = JobStore(self._conn)

    def _ready_store(self) -> JobStore | None:
        if self._store is not None:
            return self._store
        if time.monotonic() < self._next_db_attempt:
            return None
        try:
            self._connect()
            logger.info("supervisor %s reconnected to the database", self.node)
        except psycopg.OperationalError as error:
            logger.error("supervisor %s cannot reach the database: %s", self.node, error)
            self._next_db_attempt = time.monotonic() + DB_RETRY_S
            self._conn = self._store = None
        return self._store

    def _drop_connection(self) -> None:
        if self._conn_fd is not None:
            with contextlib.suppress(KeyError, ValueError, OSError):
                self._selector.unregister(self._conn_fd)
            self._conn_fd = None
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = self._store = None
        self._next_db_attempt = time.monotonic() + DB_RETRY_S

    def _drain_notifications(self) -> None:
        if self._conn is None:
            return
        try:
            pgconn = self._conn.pgconn
            pgconn.consume_input()
            while (notification := pgconn.notifies()) is not None:
                if notification.extra.decode() in self.types:
                    self._allocate_now = True
        except psycopg.Error as error:
            logger.error("supervisor %s: reading notifications failed: %s", self.node, error)
            self._drop_connection()
