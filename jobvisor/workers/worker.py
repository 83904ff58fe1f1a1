"""The claim loop: take due jobs of some types, run their handlers, store the outcomes.

A worker runs inside a child process that the supervisor forked, or in the caller's process
(tests, ``Worker(...).run()``). It never touches connections other than its own.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import select
import signal
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

import psycopg

from jobvisor.db.store import ClaimedJob, JobStore
from jobvisor.errors import InvalidJobError, JobTimeoutError
from jobvisor.payload import to_json
from jobvisor.resilience.breakers import BreakerOpenError
from jobvisor.telemetry.shm import SlotState
from jobvisor.workers.context import JobContext

if TYPE_CHECKING:
    from jobvisor.app import App
    from jobvisor.config import Settings
    from jobvisor.telemetry.shm import TelemetryBlock

logger = logging.getLogger(__name__)

NOTIFY_CHANNEL = "jobvisor_jobs"
# Maximum single wait on the socket (seconds), so that a stop request takes effect promptly.
WAIT_SLICE_S = 0.25
# Completed results are stored at least this often while a batch runs (seconds).
COMPLETION_FLUSH_S = 0.2
# Pause before claiming again when due jobs exist but a running-job limit blocks them (seconds).
BLOCKED_RETRY_S = 0.5
# An idle worker checks this often that its session still listens (seconds). A session that
# the server ended fails the check, and the worker reconnects and listens again.
LISTEN_CHECK_S = 30.0
# Pause before a worker whose types all wait on open circuit breakers looks again (seconds).
BREAKER_WAIT_S = 1.0
# Reconnect delays after a lost database connection double from base to max (seconds).
RECONNECT_BASE_S = 0.5
RECONNECT_MAX_S = 15.0


class Worker:
    """Claims and runs jobs of ``types`` until stopped.

    ``status_fd`` is the write end of a pipe to the supervisor, which learns from it when
    each job starts and ends. ``telemetry`` is the supervisor's shared-memory block and the
    index of this worker's slot, whose child part the worker keeps up to date. ``max_jobs``
    makes the worker exit after that many jobs, and ``exit_when_idle`` when nothing of its
    types is pending.
    """

    def __init__(
        self,
        app: App,
        types: Sequence[str],
        *,
        worker_id: str | None = None,
        settings: Settings | None = None,
        status_fd: int | None = None,
        telemetry: tuple[TelemetryBlock, int] | None = None,
        max_jobs: int | None = None,
        exit_when_idle: bool = False,
    ) -> None:
        unknown = [t for t in types if t not in app.job_types]
        if unknown or not types:
            raise InvalidJobError(f"worker types {list(types)!r} include unregistered types {unknown!r}")
        self.app = app
        self.types = list(types)
        self.settings = settings or app.settings
        self.worker_id = worker_id or f"{os.uname().nodename}:{os.getpid()}:{random.getrandbits(32):08x}"
        self.status_fd = status_fd
        self.telemetry = telemetry
        self.max_jobs = max_jobs
        self.exit_when_idle = exit_when_idle
        self.jobs_done = 0
        self._stopping = threading.Event()
        self._woken = False
        self._parent_pid = os.getppid() if status_fd is not None else None
        self._store: JobStore | None = None
        self._conn: psycopg.Connection[Any] | None = None
        self._batch_size = 1
        self._next_listen_check = 0.0
        # Results of finished jobs not yet stored: (job id, result as JSON text).
        self._results: list[tuple[int, str]] = []
        # Ids of jobs claimed by this worker whose outcome is not stored yet.
        self._held: set[int] = set()

    def stop(self) -> None:
        """Finish the running job, give back claimed jobs not yet started, and return."""
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def run(self) -> int:
        """Run until stopped; return the process exit code (0 for a clean stop)."""
        logger.info("worker %s started for %s", self.worker_id, ", ".join(self.types))
        self._update_slot(SlotState.IDLE)
        failures = 0
        try:
            while not self.stopping:
                if self._orphaned():
                    logger.warning("worker %s: supervisor is gone, exiting", self.worker_id)
                    break
                try:
                    if self._store is None:
                        self._open_connection()
                        self.app.breakers.get("database").on_success()
                        self._recover()
                    if not self._turn():
                        break
                    failures = 0
                except psycopg.OperationalError as error:
                    failures += 1
                    self.app.breakers.get("database").on_failure()
                    delay = min(RECONNECT_MAX_S, RECONNECT_BASE_S * 2 ** (failures - 1))
                    logger.warning(
                        "worker %s lost the database (%s); reconnecting in %.1f s",
                        self.worker_id, str(error).strip(), delay,
                    )
                    self._close_connection()
                    self._stopping.wait(delay)
        finally:
            self._close_connection()
            self._update_slot(SlotState.STOPPING)
        logger.info("worker %s stopped after %d jobs", self.worker_id, self.jobs_done)
        return 0

    def _turn(self) -> bool:
        """Store held-back results, then claim and run one batch or wait; False to exit."""
        assert self._store is not None
        self._flush()
        self._woken = False
        types = self._claimable_types()
        if not types:
            # Every type calls a service whose breaker rejects calls: the jobs stay pending.
            self._stopping.wait(BREAKER_WAIT_S)
            return True
        batch_size = self._batch_size
        if self.max_jobs is not None:
            batch_size = max(1, min(batch_size, self.max_jobs - self.jobs_done))
        jobs = self._store.claim(
            types,
            self.worker_id,
            batch_size,
            self.settings.lease_seconds,
            type_limits=[self.app.job_types[t].concurrency for t in types],
            max_per_user=self.settings.max_jobs_per_user,
        )
        self._held.update(job.id for job in jobs)
        if jobs:
            self._run_batch(jobs)
            return self.max_jobs is None or self.jobs_done < self.max_jobs
        return self._wait_for_work()

    def _service_outage(self, services: Sequence[str]) -> float | None:
        """Return seconds until a probe if a breaker of ``services`` is not closed, else None."""
        waits = []
        for service in services:
            breaker = self.app.breakers.get(service)
            if breaker.admission() != "all":
                waits.append(max(BREAKER_WAIT_S, breaker.config.reset_timeout_s))
        return min(waits) if waits else None

    def _claimable_types(self) -> list[str]:
        """Return the worker's types whose services' breakers admit calls (or a probe)."""
        registry = self.app.breakers
        return [
            name for name in self.types
            if all(registry.get(service).admission() != "none"
                   for service in self.app.job_types[name].services)
        ]  # fmt: skip

    def _recover(self) -> None:
        """After a reconnect: store held-back results and give back the other held jobs."""
        self._flush()
        if self._held:
            assert self._store is not None
            self._store.requeue_unstarted(
                self.worker_id, sorted(self._held), "worker lost its database connection during the job"
            )
            logger.warning("worker %s gave back jobs %s after a reconnect", self.worker_id, sorted(self._held))
            self._held.clear()

    def _open_connection(self) -> None:
        self._conn = self.app.connect(application_name=f"jobvisor-worker {self.types[0]}")
        self._conn.add_notify_handler(self._on_notify)
        self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
        self._next_listen_check = time.monotonic() + LISTEN_CHECK_S
        self._store = JobStore(self._conn)

    def _close_connection(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(psycopg.Error):
                self._conn.close()
        self._conn = None
        self._store = None

    # Claim loop

    def _run_batch(self, jobs: list[ClaimedJob]) -> None:
        batch_started = time.monotonic()
        last_flush = batch_started
        for index, job in enumerate(jobs):
            if self.stopping or self._orphaned():
                self._give_back(jobs[index:])
                break
            outcome = self._execute(job)
            if outcome is not None:
                self._results.append((job.id, outcome))
            if time.monotonic() - last_flush >= COMPLETION_FLUSH_S:
                self._flush()
                last_flush = time.monotonic()
        self._flush()

        # Short jobs are claimed in growing batches, long ones one at a time. A worker of
        # several types claims one at a time: claimed jobs count against their type's limit
        # while they wait, so a batch could fill with lower-priority jobs of other types.
        mean = (time.monotonic() - batch_started) / len(jobs)
        if mean < self.settings.short_job_s and len(self.types) == 1:
            fits = int(self.settings.claim_batch_s / mean) if mean > 0 else self.settings.claim_batch_max
            self._batch_size = max(1, min(self._batch_size * 2, self.settings.claim_batch_max, fits))
        else:
            self._batch_size = 1

    def _flush(self) -> None:
        """Store the results of finished jobs; they stay held back if the database fails."""
        if not self._results:
            return
        assert self._store is not None
        stored = self._store.complete_many(self.worker_id, self._results)
        for job_id, _ in self._results:
            self._held.discard(job_id)
            if job_id not in stored:
                logger.warning(
                    "worker %s: result of job %d discarded, the worker no longer holds it "
                    "(its lease expired or its supervisor requeued it)",
                    self.worker_id,
                    job_id,
                )
        self._results = []

    def _give_back(self, jobs: list[ClaimedJob]) -> None:
        assert self._store is not None
        returned = self._store.requeue_unstarted(
            self.worker_id, [job.id for job in jobs], "worker stopped before starting the job"
        )
        self._held.difference_update(job.id for job in jobs)
        if returned:
            logger.info(
                "worker %s gave back %d unstarted jobs: %s",
                self.worker_id,
                len(returned),
                [row["id"] for row in returned],
            )

    def _execute(self, job: ClaimedJob) -> str | None:
        """Run one job; return its result as JSON text, or None after recording a failure."""
        assert self._store is not None
        spec = self.app.job_types[job.type]
        attempt = job.retry_count + 1
        context = JobContext(
            job_id=job.id,
            job_type=job.type,
            attempt=attempt,
            user_id=job.user_id,
            user_type=job.user_type,
            report=lambda percent, step: self._report_progress(job.id, percent, step),
            breakers=self.app.breakers,
        )
        self._send_status(f"S {job.id} {spec.timeout}")
        self._update_slot(SlotState.RUNNING, job.id)
        logger.debug("job %d (%s) attempt %d started", job.id, job.type, attempt)
        started = time.monotonic()
        error: str | None = None
        details: str | None = None
        return_value = "null"
        refused: BreakerOpenError | None = None
        try:
            with _soft_timeout(spec.timeout):
                result = spec.handler(context, job.input_data)
        except BreakerOpenError as failure:
            refused = failure
            error = str(failure)
        except JobTimeoutError:
            error = f"timed out after {spec.timeout:g} s"
        except Exception as failure:  # noqa: BLE001 - a handler may raise anything
            error = f"{type(failure).__name__}: {failure}"
            details = traceback.format_exc()
        else:
            try:
                return_value = to_json(result, what=f"the result of job {job.id}")
            except InvalidJobError as failure:
                error = f"handler returned a result that cannot be stored: {failure}"
        finally:
            elapsed = time.monotonic() - started
            self.jobs_done += 1
            latency = time.time() - job.created_at.timestamp()
            outcome = "ok" if error is None else "error"
            self._send_status(f"D {job.id} {outcome} {latency:.6f} {elapsed:.6f}")
            self._update_slot(SlotState.IDLE)

        if error is None:
            logger.debug("job %d (%s) completed in %.3f s", job.id, job.type, elapsed)
            return return_value

        outage = self._service_outage(spec.services)
        if refused is not None or outage is not None:
            # The job did not fail on its own: a service refused it, or it failed while a
            # service it calls is down (its breaker is no longer closed, for example after
            # this job's failed probe). It waits for the breaker, and the attempt does not
            # count, so an outage cannot use up a job's retries.
            if refused is not None:
                delay = max(BREAKER_WAIT_S, refused.retry_after_s or 0.0)
            else:
                assert outage is not None
                delay = outage
            reason = f"postponed by {delay:.1f} s while a service is unavailable: {error}"
            self._held.discard(job.id)
            if self._store.postpone(job.id, self.worker_id, delay, reason):
                logger.info("job %d (%s) %s", job.id, job.type, reason)
            else:
                logger.warning("job %d (%s) could not be postponed, its lease was lost", job.id, job.type)
            return None

        delay = retry_delay(job.retry_count, self.settings.retry_base_delay_s, self.settings.retry_max_delay_s)
        row = self._store.fail_attempt(job.id, self.worker_id, error, details, delay)
        self._held.discard(job.id)
        if row is None:
            logger.warning("job %d (%s) failed but its lease was lost: %s", job.id, job.type, error)
        elif row["status"] == "pending":
            logger.warning(
                "job %d (%s) attempt %d failed, retry %d/%d in %.1f s: %s",
                job.id, job.type, attempt, row["retry_count"], job.max_retries, delay, error,
            )
        else:
            logger.error("job %d (%s) failed after %d attempts: %s", job.id, job.type, attempt, error)
        return None

    def _report_progress(self, job_id: int, percent: int, step: str | None) -> None:
        assert self._store is not None
        if not self._store.report_progress(job_id, self.worker_id, percent, step):
            logger.warning("worker %s: progress of job %d not stored, the job is no longer held", self.worker_id, job_id)

    # Waiting

    def _wait_for_work(self) -> bool:
        """Wait for a notification, the next due job or the poll interval; False to exit."""
        assert self._store is not None and self._conn is not None
        backlog = self._store.pending_summary(self.types, cap=1)
        waits = [b.next_due_in_s for b in backlog.values() if b.next_due_in_s is not None]
        if self.exit_when_idle and not waits and self._store.processing_count(self.types) == 0:
            return False
        timeout = self.settings.poll_interval_s
        if waits:
            # A due job that the claim did not return is held back by a running-job limit;
            # retry after a short pause rather than at once.
            next_due = min(waits)
            timeout = min(timeout, next_due if next_due > 0 else BLOCKED_RETRY_S)
        deadline = time.monotonic() + timeout
        while not self._woken and not self.stopping:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if time.monotonic() >= self._next_listen_check:
                self._check_listening()
            readable, _, _ = select.select([self._conn.fileno()], [], [], min(remaining, WAIT_SLICE_S))
            if readable:
                self._drain_notifications()
            if self._orphaned():
                return False
        return not self.stopping

    def _check_listening(self) -> None:
        """Listen again if the session lost its LISTEN; a lost session raises OperationalError."""
        assert self._conn is not None
        self._next_listen_check = time.monotonic() + LISTEN_CHECK_S
        row = self._conn.execute(
            "SELECT count(*) AS n FROM pg_listening_channels() AS c WHERE c = %s", (NOTIFY_CHANNEL,)
        ).fetchone()
        if row is None or not row["n"]:
            logger.warning("worker %s: its session no longer listened; listening again", self.worker_id)
            self._conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            self._woken = True  # a notification may have been missed meanwhile

    def _drain_notifications(self) -> None:
        assert self._conn is not None
        pgconn = self._conn.pgconn
        pgconn.consume_input()
        while (notification := pgconn.notifies()) is not None:
            if notification.relname.decode() == NOTIFY_CHANNEL:
                if notification.extra.decode() in self.types:
                    self._woken = True

    def _on_notify(self, notification: psycopg.Notify) -> None:
        if notification.channel == NOTIFY_CHANNEL and notification.payload in self.types:
            self._woken = True

    # Supervisor link

    def _orphaned(self) -> bool:
        return self._parent_pid is not None and os.getppid() != self._parent_pid

    def _update_slot(self, state: SlotState, job_id: int = 0) -> None:
        if self.telemetry is None:
            return
        block, index = self.telemetry
        now = time.time()
        block.write_child_record(
            index,
            state,
            job_id,
            self.jobs_done,
            now if job_id else 0.0,
            now,
            # The supervisor charges a job's CPU against its budget from this figure.
            time.process_time() if job_id else 0.0,
        )

    def _send_status(self, message: str) -> None:
        if self.status_fd is None:
            return
        try:
            os.write(self.status_fd, (message + "\n").encode())
        except BrokenPipeError:
            self._stopping.set()
        except BlockingIOError:
            # The supervisor is not reading; it learns the same from the database.
            logger.debug("worker %s: status pipe full, message dropped: %s", self.worker_id, message)


def retry_delay(retry_count: int, base_s: float, max_s: float) -> float:
    """Seconds before retry ``retry_count + 1``: exponential backoff with jitter.

    The delay for retry n lies in [d/2, d] with d = base * 2**n (capped at max_s), so delays
    never shrink from one retry to the next while retrying workers still spread out.
    """
    ceiling = min(max_s, base_s * (2.0**retry_count))
    return ceiling * (0.5 + 0.5 * random.random())


# The timeout of the job that runs now, for the SIGALRM handler's message (seconds).
_alarm_seconds = 0.0


def _on_alarm(signum: int, frame: Any) -> None:
    raise JobTimeoutError(f"timed out after {_alarm_seconds:g} s")


@contextlib.contextmanager
def _soft_timeout(seconds: float) -> Iterator[None]:
    """Raise :class:`JobTimeoutError` in the handler after ``seconds``, via SIGALRM.

    Only the main thread receives signals, so elsewhere this does nothing and the
    supervisor's hard timeout alone applies. A handler blocked in C code sees the error
    when it returns to Python. The SIGALRM handler is installed once per process and stays
    installed, which saves two system calls per job.
    """
    global _alarm_seconds
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    if signal.getsignal(signal.SIGALRM) is not _on_alarm:
        signal.signal(signal.SIGALRM, _on_alarm)
    _alarm_seconds = seconds
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
