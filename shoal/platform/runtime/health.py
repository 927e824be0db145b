"""Active health checking of one instance: when to probe next, and when the verdict flips.

The agent owns one :class:`HealthState` per local instance. It reads the clock, sleeps until
:meth:`HealthState.next_deadline`, runs the probe (:mod:`shoal.platform.runtime.probe`) with
``thresholds.timeout``, and feeds the result to :meth:`HealthState.on_result`; a returned
:class:`Transition` is what it writes to the registry (``ready`` / ``unhealthy``). Nothing here
awaits, reads the clock or touches the global ``random``.

Theory of operation. The machine has two states and one counter, ``streak``: the number of
consecutive results that disagree with the current state. A result that agrees resets it; one
that disagrees increments it, and when it reaches the threshold of the current state the state
flips and the streak restarts at zero::

    state      result   streak              next state
    healthy    ok       0                   healthy
    healthy    fail     +1                  unhealthy when streak == unhealthy_threshold
    unhealthy  fail     0                   unhealthy
    unhealthy  ok       +1                  healthy   when streak == healthy_threshold

It starts healthy: checks begin once the instance has passed its readiness wait. Each result
schedules the next probe ``interval`` after it, jittered by ``± jitter * interval`` so that many
instances started together do not probe in lock-step (the first probe is jittered the same way).
Scheduling from the result, not from the previous deadline, means a slow probe never overlaps
the next one.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shoal.resources.endpoint import InstanceState
from shoal.resources.model import HealthCheck, TrafficPolicy

DEFAULT_JITTER = 0.1  # ± 10 % of the interval; Service.health has no field for it


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthThresholds:
    """The parameters of one instance's health checks; the constructor validates them."""

    healthy_threshold: int = 1
    unhealthy_threshold: int = 3
    interval: float = 2.0
    timeout: float = 1.0
    jitter: float = DEFAULT_JITTER

    def __post_init__(self) -> None:
        for name in ("healthy_threshold", "unhealthy_threshold"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"HealthThresholds.{name} must be an integer >= 1, got {value!r}")
        for name in ("interval", "timeout"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"HealthThresholds.{name} must be > 0 seconds, got {value!r}")
        if not 0 <= self.jitter < 1:
            raise ValueError(f"HealthThresholds.jitter must be in [0, 1), got {self.jitter!r}")

    def delay(self, rng: random.Random) -> float:
        """Seconds until the next probe: ``interval`` jittered uniformly by ``± jitter``."""
        return self.interval * (1.0 + self.jitter * rng.uniform(-1.0, 1.0))


def thresholds(
    health: HealthCheck, policy: TrafficPolicy | None, *, jitter: float = DEFAULT_JITTER
) -> HealthThresholds:
    """The effective thresholds: the Service's ``health``, overridden by a DestinationRule.

    ``trafficPolicy.failureThreshold`` replaces ``unhealthy_threshold`` and
    ``trafficPolicy.healthyThreshold`` replaces ``healthy_threshold``; interval and timeout are
    always the Service's.
    """
    failure = policy.failure_threshold if policy is not None else None
    healthy = policy.healthy_threshold if policy is not None else None
    return HealthThresholds(
        healthy_threshold=health.healthy_threshold if healthy is None else healthy,
        unhealthy_threshold=health.unhealthy_threshold if failure is None else failure,
        interval=health.interval,
        timeout=health.timeout,
        jitter=jitter,
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class Transition:
    """The verdict flipped at ``at`` after ``streak`` consecutive results saying so."""

    healthy: bool
    at: float
    streak: int

    @property
    def state(self) -> InstanceState:
        """The registry state the instance moves to."""
        return "ready" if self.healthy else "unhealthy"


class HealthState:
    """The health verdict of one instance and the time of its next probe (see module doc)."""

    __slots__ = ("_deadline", "_healthy", "_streak", "thresholds")

    def __init__(self, thresholds: HealthThresholds, *, now: float, rng: random.Random) -> None:
        self.thresholds = thresholds
        self._healthy = True
        self._streak = 0
        self._deadline = now + thresholds.delay(rng)

    @property
    def healthy(self) -> bool:
        """The current verdict (True at the start)."""
        return self._healthy

    @property
    def streak(self) -> int:
        """Consecutive results so far that disagree with the current verdict."""
        return self._streak

    def next_deadline(self) -> float:
        """When the next probe is due."""
        return self._deadline

    def on_result(self, ok: bool, now: float, rng: random.Random) -> Transition | None:
        """Take one probe result obtained at ``now``; the flip it causes, if any.

        Also schedules the next probe at ``now + interval ± jitter``.
        """
        self._deadline = now + self.thresholds.delay(rng)
        if ok == self._healthy:
            self._streak = 0
            return None
        self._streak += 1
        needed = (
            self.thresholds.healthy_threshold
            if not self._healthy
            else self.thresholds.unhealthy_threshold
        )
        if self._streak < needed:
            return None
        transition = Transition(healthy=ok, at=now, streak=self._streak)
        self._healthy = ok
        self._streak = 0
        return transition
