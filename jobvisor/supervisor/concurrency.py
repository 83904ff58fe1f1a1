"""How many worker processes this node runs at once: load rules, damped by a level target.

About once a second the supervisor hands :class:`ConcurrencyManager` one telemetry sample.
The manager keeps the recent samples itself and first evaluates the load rules, which give a
recommended limit. The rules are checked in order and the first that matches wins. CPU and
memory are the mean of the last 5 samples, and a trend is the least-squares slope of the
last 5 samples.

1. ``load-high``: CPU or memory above 90 % halves the limit.
2. ``pressure``: CPU above 85 % (or memory above 90 %) takes one worker away.
3. ``queue-high``: more than 20 jobs due while CPU is under 70 % and memory under 80 % adds
   one.
4. ``queue-low``: fewer than 5 jobs due and fewer busy workers than half the limit takes one
   away.
5. ``trend``: CPU and memory falling while the queue grows adds one.
6. ``load-low``: CPU under 30 % and memory under 50 % adds one, up to the CPU count.

Alone, these rules make the limit swing. A 5-sample slope of data with 10 % noise is mostly
noise, and under a steady load rules 5 and 6 keep adding workers that rule 4 takes away
again. So the manager damps them:

* A level target comes from Little's law. The busy workers needed are the arrival rate times
  the service time, plus what it takes to drain the jobs already due within
  ``drain_horizon_s``, plus ``headroom``. The arrival rate is the completion rate plus the
  growth of the queue. All inputs are smoothed over the last 30 samples. The level changes
  only when the estimate leaves the range that rounds up to the current level by more than
  half a worker, so noise does not move it. The level is unknown until some job has finished
  and given a service time. After that the last known service time is used while no job
  finishes.
* While the level is known, the recommendation of rules 3 to 6 is kept within ``band`` of
  it, except that ``queue-high`` may go above it: more than 20 jobs waiting while CPU and
  memory have room is a direct sign that more workers are needed. When no rule fires and the limit is outside that band, the limit moves one step
  towards it (``level``).
* A non-pressure recommendation raises the limit by one worker at most, and only while CPU
  is under 70 % and memory under 80 %, so that neither the level nor a noisy trend pushes
  the machine into the pressure rules and a halving.
* The limit changes at most once per ``cooldown_s``, counting the auto-tune at start. An
  increase applies as soon as the cooldown allows. A decrease applies only when the highest
  recommendation over the last ``scale_down_window_s`` is below the limit, and then goes to
  that highest recommendation. The starting limit counts as a recommendation, so the limit
  does not drop within ``scale_down_window_s`` of the start. Rules 1 and 2 skip the window
  and the level: they apply as soon as the cooldown allows.

Every change is kept as a :class:`Decision` with its rule and a reason that gives the measured
figures, and is logged at INFO. The module is pure: the caller measures the machine and the
queue, passes in the clock and applies the limit.
"""

from __future__ import annotations

import logging
import math
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from jobvisor.errors import ConfigError
from jobvisor.telemetry.trends import DEFAULT_WINDOW, slopes

logger = logging.getLogger(__name__)

# Sample columns that the manager reads, with the same names as in the telemetry ring.
SAMPLE_KEYS = (
    "cpu_percent",
    "memory_percent",
    "active_jobs",
    "queue_depth",
    "throughput_per_min",
    "processing_s",
)
_TIME, _CPU, _MEMORY, _ACTIVE, _QUEUE, _THROUGHPUT, _PROCESSING = range(7)

RULE_WINDOW = DEFAULT_WINDOW  # samples behind the rules' means and trends
LEVEL_WINDOW = 30  # samples behind the smoothed inputs of the level
LEVEL_HYSTERESIS = 0.5  # workers past the current level's range before the level moves
GB_PER_WORKER = 2.0  # auto-tune: one worker per this much memory
DECISIONS_KEPT = 50
DECISIONS_SHOWN = 20  # decisions in as_dict(), for the telemetry snapshot

LOAD_HIGH_PERCENT = 90.0  # CPU or memory, rule 1
PRESSURE_CPU_PERCENT = 85.0  # rule 2
PRESSURE_MEMORY_PERCENT = 90.0  # rule 2
QUEUE_HIGH_JOBS = 20  # rule 3
ROOM_CPU_PERCENT = 70.0  # rule 3, and every non-pressure increase
ROOM_MEMORY_PERCENT = 80.0  # rule 3, and every non-pressure increase
QUEUE_LOW_JOBS = 5  # rule 4
LOAD_LOW_CPU_PERCENT = 30.0  # rule 6
LOAD_LOW_MEMORY_PERCENT = 50.0  # rule 6

PRESSURE_RULES = frozenset({"load-high", "pressure"})


@dataclass(frozen=True, slots=True)
class Decision:
    """One change of the limit: when, from what, to what, by which rule and why."""

    at: float
    previous: int
    limit: int
    rule: str
    reason: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True, slots=True)
class _Proposal:
    """A recommended limit, its rule and the measured cause (a reason without "a -> b")."""

    limit: int
    rule: str
    cause: str


@dataclass(frozen=True, slots=True)
class _Load:
    """Inputs of the load rules: CPU and memory means, the latest counts and the trends."""

    cpu: float
    memory: float
    active: float
    queue: float
    cpu_trend: float
    memory_trend: float
    queue_trend: float

    @property
    def has_room(self) -> bool:
        return self.cpu < ROOM_CPU_PERCENT and self.memory < ROOM_MEMORY_PERCENT


class ConcurrencyManager:
    """The node's limit on worker processes, adjusted by load rules and damped.

    ``base_limit`` is the configured ``MAX_CONCURRENT_JOBS``, ``ceiling`` the most workers the
    node may ever run, and ``now`` the reading of the clock that :meth:`observe` receives
    (``time.monotonic()`` in the supervisor, a simulated clock in tests).
    """

    def __init__(
        self,
        base_limit: int,
        *,
        cpu_count: int,
        memory_total_gb: float,
        ceiling: int,
        cooldown_s: float = 15.0,
        scale_down_window_s: float = 60.0,
        band: int = 1,
        headroom: float = 0.25,
        drain_horizon_s: float = 60.0,
        auto_tune: bool = True,
        now: float = 0.0,
    ) -> None:
        _check_int("ceiling", ceiling, minimum=1)
        _check_int("base_limit", base_limit, minimum=1)
        if base_limit > ceiling:
            raise ConfigError(
                f"base_limit={base_limit!r} is above ceiling={ceiling!r}: lower base_limit or "
                "raise the ceiling"
            )
        _check_int("cpu_count", cpu_count, minimum=1)
        _check_int("band", band, minimum=0)
        _check_float("memory_total_gb", memory_total_gb, positive=True)
        _check_float("cooldown_s", cooldown_s)
        _check_float("scale_down_window_s", scale_down_window_s)
        _check_float("headroom", headroom)
        _check_float("drain_horizon_s", drain_horizon_s, positive=True)
        if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
            raise ConfigError(f"now={now!r} is not a finite number")
        self._base_limit = base_limit
        self._ceiling = ceiling
        self._cpu_count = cpu_count
        self._memory_total_gb = float(memory_total_gb)
        self._cooldown_s = float(cooldown_s)
        self._window_s = float(scale_down_window_s)
        self._band = band
        self._headroom = float(headroom)
        self._drain_horizon_s = float(drain_horizon_s)

        self._limit = base_limit
        self._history: deque[tuple[float, ...]] = deque(maxlen=LEVEL_WINDOW)
        self._service_s: float | None = None  # last known mean service time
        self._level: int | None = None
        self._level_cause = ""
        # Recommendations over the scale-down window, as a sliding maximum: values strictly
        # decrease from the oldest entry to the newest, so the first entry is the maximum.
        self._recommendations: deque[tuple[float, _Proposal]] = deque()
        self._last_change: float | None = None
        self._decisions: deque[Decision] = deque(maxlen=DECISIONS_KEPT)

        if auto_tune:
            optimal = min(
                max(1, cpu_count - 1),
                max(1, math.floor(self._memory_total_gb / GB_PER_WORKER)),
            )
            if optimal > base_limit:
                cause = (
                    f"{cpu_count} CPUs and {self._memory_total_gb:.1f} GB of memory allow "
                    f"{optimal} workers (one CPU spare, {GB_PER_WORKER:.0f} GB each)"
                )
                if optimal > ceiling:
                    cause += f", capped at the ceiling {ceiling}"
                self._change(now, min(optimal, ceiling), "auto-tune", cause)
        # The starting limit is the window's first recommendation, so the limit does not drop
        # within scale_down_window_s of the start.
        self._remember(now, _Proposal(self._limit, "start", "the limit at start"))

    # Public state

    @property
    def limit(self) -> int:
        return self._limit

    @property
    def base_limit(self) -> int:
        return self._base_limit

    @property
    def ceiling(self) -> int:
        return self._ceiling

    @property
    def level(self) -> int | None:
        """Workers needed by Little's law, or None until a job has finished."""
        return self._level

    @property
    def decisions(self) -> tuple[Decision, ...]:
        """The last 50 changes, oldest first."""
        return tuple(self._decisions)

    @property
    def last_decision(self) -> Decision | None:
        return self._decisions[-1] if self._decisions else None

    def as_dict(self) -> dict[str, Any]:
        """Return the manager's state for the telemetry snapshot."""
        last = self.last_decision
        return {
            "limit": self._limit,
            "base_limit": self._base_limit,
            "ceiling": self._ceiling,
            "level": self._level,
            "cooldown_s": self._cooldown_s,
            "last_decision": last.as_dict() if last else None,
            "decisions": [d.as_dict() for d in list(self._decisions)[-DECISIONS_SHOWN:]],
        }

    # One step

    def observe(self, now: float, sample: Mapping[str, float]) -> Decision | None:
        """Take the sample measured at ``now``; return the decision if the limit changed.

        ``sample`` has the keys in :data:`SAMPLE_KEYS`. NaN stands for an unknown value:
        a rule that needs it does not fire.
        """
        if isinstance(now, bool) or not isinstance(now, (int, float)) or not math.isfinite(now):
            raise ValueError(f"now={now!r} is not a finite number")
        if self._history and now < self._history[-1][_TIME]:
            raise ValueError(
                f"now={now!r} is before the previous sample at {self._history[-1][_TIME]!r}. "
                "Pass a monotonic clock."
            )
        missing = [key for key in SAMPLE_KEYS if key not in sample]
        if missing:
            raise ValueError(f"the sample is missing {', '.join(missing)}")
        self._history.append((float(now), *(float(sample[key]) for key in SAMPLE_KEYS)))
        self._update_level()

        proposal = self._recommend()
        self._remember(now, proposal)
        if proposal.limit == self._limit:
            return None
        if self._last_change is not None and now - self._last_change < self._cooldown_s:
            return None
        if proposal.rule in PRESSURE_RULES or proposal.limit > self._limit:
            return self._change(now, proposal.limit, proposal.rule, proposal.cause)
        highest = self._recommendations[0][1]
        if highest.limit >= self._limit:
            return None
        cause = f"{highest.cause}; the highest recommendation over the last {self._window_s:.0f} s"
        return self._change(now, highest.limit, highest.rule, cause)

    # The level target

    def _update_level(self) -> None:
        """Recompute the level from the smoothed samples, with hysteresis."""
        if len(self._history) < RULE_WINDOW:
            return
        window = np.array(self._history)
        # NOTE: processing_s is one mean over all job types, so a node running short and long
        # jobs side by side gets a level for their blend, not for each type.
        processing = window[:, _PROCESSING]
        known = processing[np.isfinite(processing) & (processing > 0)]
        if known.size:
            self._service_s = float(known.mean())
        if self._service_s is None:
            return
        service_s = self._service_s
        completion_rate = _finite_mean(window[:, _THROUGHPUT], default=0.0) / 60.0
        queue = _finite_mean(window[:, _QUEUE], default=0.0)
        growth = _finite(slopes(window[:, _TIME], window[:, [_QUEUE]])[0])
        arrival_rate = completion_rate + max(growth, -completion_rate)
        busy = arrival_rate * service_s + queue * service_s / self._drain_horizon_s
        raw = busy * (1.0 + self._headroom)
        level = self._level
        # The range of estimates that round up to the level, widened on both sides.
        if level is None or not (level - 1 - LEVEL_HYSTERESIS <= raw <= level + LEVEL_HYSTERESIS):
            self._level = min(self._ceiling, max(1, math.ceil(raw)))
        self._level_cause = (
            f"{arrival_rate:.2f} jobs/s arriving, {service_s:.2f} s each, and {queue:.0f} due "
            f"to drain within {self._drain_horizon_s:.0f} s, need {busy:.1f} busy workers, "
            f"{raw:.1f} with {self._headroom:.0%} headroom"
        )

    def _band_limits(self) -> tuple[int, int] | None:
        if self._level is None:
            return None
        return max(1, self._level - self._band), min(self._ceiling, self._level + self._band)

    # Rules and damping

    def _recommend(self) -> _Proposal:
        hold = _Proposal(self._limit, "hold", "no rule fired")
        if len(self._history) < RULE_WINDOW:
            return hold
        load = self._load()
        proposal = self._rule(load)
        if proposal is not None and proposal.rule in PRESSURE_RULES:
            return proposal
        limit = self._limit
        band = self._band_limits()
        if proposal is not None:
            target = proposal.limit
            if band is not None:
                target = max(band[0], target)
                # A backlog of due jobs with CPU and memory to spare is the one measurement
                # that the level, which plans to drain the queue within drain_horizon_s,
                # may underrate: jobs that wait add latency now.
                if proposal.rule != "queue-high":
                    target = min(band[1], target)
        elif band is not None and not band[0] <= limit <= band[1]:
            proposal = _Proposal(
                limit + (1 if limit < band[0] else -1), "level",
                f"the limit {limit} is outside level {self._level} ± {self._band} "
                f"({self._level_cause})",
            )
            target = proposal.limit
        else:
            return hold
        if target > limit:
            if not load.has_room:
                return hold
            target = min(target, limit + 1)
        if target == proposal.limit:
            return proposal
        return _Proposal(
            target, proposal.rule,
            f"{proposal.cause}, kept within level {self._level} ± {self._band}",
        )

    def _load(self) -> _Load:
        window = np.array(list(self._history)[-RULE_WINDOW:])
        trend = slopes(window[:, _TIME], window[:, [_CPU, _MEMORY, _QUEUE]])
        latest = window[-1]
        return _Load(
            cpu=_finite_mean(window[:, _CPU]),
            memory=_finite_mean(window[:, _MEMORY]),
            active=float(latest[_ACTIVE]),
            queue=float(latest[_QUEUE]),
            cpu_trend=_finite(trend[0]),
            memory_trend=_finite(trend[1]),
            queue_trend=_finite(trend[2]),
        )

    def _rule(self, load: _Load) -> _Proposal | None:
        """Return the proposal of the first load rule that matches, or None.

        The proposed limit is within [1, ceiling].
        """
        limit = self._limit
        cpu, memory = load.cpu, load.memory
        over = f"(mean of the last {RULE_WINDOW} samples)"
        if cpu > LOAD_HIGH_PERCENT or memory > LOAD_HIGH_PERCENT:
            if cpu > LOAD_HIGH_PERCENT:
                measured = f"CPU {cpu:.0f} %"
            else:
                measured = f"memory {memory:.0f} %"
            return self._proposal(
                max(1, limit // 2), "load-high",
                f"{measured} {over} is above {LOAD_HIGH_PERCENT:.0f} %",
            )

        if cpu > PRESSURE_CPU_PERCENT or memory > PRESSURE_MEMORY_PERCENT:
            if cpu > PRESSURE_CPU_PERCENT:
                measured = f"CPU {cpu:.0f} % {over} is above {PRESSURE_CPU_PERCENT:.0f} %"
            else:
                measured = f"memory {memory:.0f} % {over} is above {PRESSURE_MEMORY_PERCENT:.0f} %"
            return self._proposal(limit - 1, "pressure", measured)

        if load.queue > QUEUE_HIGH_JOBS and load.has_room:
            return self._proposal(
                limit + 1, "queue-high",
                f"{load.queue:.0f} jobs due with CPU {cpu:.0f} % and memory {memory:.0f} %",
            )

        if load.queue < QUEUE_LOW_JOBS and load.active < limit / 2:
            return self._proposal(
                limit - 1, "queue-low",
                f"{load.queue:.0f} jobs due and {load.active:.0f} workers busy, "
                f"under half the limit {limit}",
            )

        if load.cpu_trend < 0 and load.memory_trend < 0 and load.queue_trend > 0:
            return self._proposal(
                limit + 1, "trend",
                f"CPU falls {-load.cpu_trend:.2f} %/s and memory {-load.memory_trend:.2f} %/s "
                f"while the queue grows {load.queue_trend:.2f} jobs/s "
                f"(slopes of the last {RULE_WINDOW} samples)",
            )

        quiet = cpu < LOAD_LOW_CPU_PERCENT and memory < LOAD_LOW_MEMORY_PERCENT
        if quiet and limit < self._cpu_count:
            return self._proposal(
                limit + 1, "load-low",
                f"CPU {cpu:.0f} % and memory {memory:.0f} % {over} are under "
                f"{LOAD_LOW_CPU_PERCENT:.0f} % and {LOAD_LOW_MEMORY_PERCENT:.0f} %, "
                f"and the limit is below the {self._cpu_count} CPUs",
            )
        return None

    def _proposal(self, limit: int, rule: str, cause: str) -> _Proposal:
        return _Proposal(min(self._ceiling, max(1, limit)), rule, cause)

    # The scale-down window and the record of decisions

    def _remember(self, now: float, proposal: _Proposal) -> None:
        """Add a recommendation to the sliding maximum over the scale-down window."""
        entries = self._recommendations
        while entries and entries[-1][1].limit <= proposal.limit:
            entries.pop()
        entries.append((now, proposal))
        while entries[0][0] < now - self._window_s:
            entries.popleft()

    def _change(self, now: float, limit: int, rule: str, cause: str) -> Decision:
        previous = self._limit
        halving = rule == "load-high" and limit == max(1, previous // 2)
        reason = f"{cause}: {'halving ' if halving else ''}{previous} -> {limit}"
        decision = Decision(at=now, previous=previous, limit=limit, rule=rule, reason=reason)
        self._limit = limit
        self._last_change = now
        self._decisions.append(decision)
        logger.info("concurrency limit %d -> %d (%s): %s", previous, limit, rule, reason)
        return decision


def _finite(value: float) -> float:
    """Return ``value``, or 0 if it is NaN or infinite (a trend that could not be fitted)."""
    value = float(value)
    return value if math.isfinite(value) else 0.0


def _finite_mean(values: np.ndarray, default: float = math.nan) -> float:
    """Return the mean of the finite values, or ``default`` if there are none."""
    known = values[np.isfinite(values)]
    return float(known.mean()) if known.size else default


def _check_int(name: str, value: Any, *, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{name}={value!r} is not an integer")
    if value < minimum:
        raise ConfigError(f"{name}={value!r} must be at least {minimum}")


def _check_float(name: str, value: Any, *, positive: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{name}={value!r} is not a number")
    if not math.isfinite(value):
        raise ConfigError(f"{name}={value!r} is not a finite number")
    if positive and value <= 0:
        raise ConfigError(f"{name}={value!r} must be greater than 0")
    if value < 0:
        raise ConfigError(f"{name}={value!r} must not be negative")
