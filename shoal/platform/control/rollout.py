"""Progressive rollouts: traffic moves to a new revision in steps, and back if it misbehaves.

A :class:`Rollout` is a small state machine with explicit time; the controller reads the clock,
calls it and carries out the :data:`Action` it returns (scale a revision, write weights into the
VirtualService, wait). Nothing here awaits or reads a clock.

Theory of operation (phase: event → action, next phase)::

    NEW             start                        → Prepare             AWAITING_READY
    AWAITING_READY  ready (on_ready or a tick)   → SetWeights(step i)  STEPPING
    AWAITING_READY  ready_timeout passed         → RollBack            ROLLED_BACK
    STEPPING        tick before the deadline     → Wait                STEPPING
    STEPPING        deadline, too few requests   → Wait (once)         STEPPING
    STEPPING        deadline, above a limit      → RollBack            ROLLED_BACK
    STEPPING        deadline, healthy, last step → Done                DONE
    STEPPING        deadline, healthy, 0 ready   → Prepare             AWAITING_READY
    STEPPING        deadline, healthy            → SetWeights(i + 1)   STEPPING

A step is judged on the new revision's traffic since its weights were set. With fewer than
``min_requests`` requests the wait is extended once by ``interval``; after that the step is
judged on whatever arrived. The last step (100%) is judged like the others before ``Done``, so a
revision that only fails under full load is still rolled back.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shoal.errors import ManifestError, UserError
from shoal.resources.fields import positive_duration


@dataclass(frozen=True, slots=True, kw_only=True)
class Observation:
    """The new revision's traffic since the previous call, and its ready instances now.

    ``requests`` and ``errors`` (5xx answers) are counts since the previous ``start``/``on_tick``/
    ``on_ready`` call; ``p99`` is the latency (seconds) over the same period, when known.
    """

    requests: int
    errors: int
    ready: int
    p99: float | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.errors <= self.requests:
            raise ValueError(
                f"Observation needs 0 <= errors <= requests "
                f"(got errors={self.errors!r}, requests={self.requests!r})"
            )
        if self.ready < 0:
            raise ValueError(f"Observation.ready must not be negative (got {self.ready!r})")


@dataclass(frozen=True, slots=True, kw_only=True)
class Prepare:
    """Scale ``revision`` to at least ``scale_to`` ready instances, then call ``on_ready``."""

    revision: str
    scale_to: int
    until: float


@dataclass(frozen=True, slots=True, kw_only=True)
class SetWeights:
    """Write these weights (subset → percent, summing to 100) into the VirtualService."""

    weights: dict[str, int]
    until: float


@dataclass(frozen=True, slots=True, kw_only=True)
class Wait:
    """Nothing to do; call ``on_tick`` again at ``until`` (or ``on_ready`` if readiness comes)."""

    until: float


@dataclass(frozen=True, slots=True, kw_only=True)
class RollBack:
    """Restore the original weights; the rollout failed for ``reason``."""

    weights: dict[str, int]
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class Done:
    """The rollout finished: these weights (all traffic on the new revision) stay."""

    weights: dict[str, int]


Action = Prepare | SetWeights | Wait | RollBack | Done


class Phase(enum.Enum):
    """Where a rollout is."""

    NEW = "new"
    AWAITING_READY = "awaiting-ready"
    STEPPING = "stepping"
    DONE = "done"
    ROLLED_BACK = "rolled-back"


def spread(original: Mapping[str, int], to_revision: str, share: int) -> dict[str, int]:
    """Weights giving ``to_revision`` ``share`` percent and the rest to the other revisions.

    The other revisions keep their original proportions; the largest-remainder method rounds
    them so the total is exactly 100 (ties go to the name that sorts first). Revisions left with
    0 are omitted.
    """
    if not 0 <= share <= 100:
        raise ValueError(f"share must be within 0..100 (got {share!r})")
    others = {name: w for name, w in original.items() if name != to_revision and w > 0}
    total = sum(others.values())
    rest = 100 - share
    if rest > 0 and total == 0:
        raise ValueError(f"no other revision to give {rest}% to")
    weights: dict[str, int] = {to_revision: share} if share > 0 else {}
    if rest == 0:
        return weights
    floors = {name: rest * w // total for name, w in others.items()}
    remainders = sorted(others, key=lambda name: (-(rest * others[name] % total), name))
    for name in remainders[: rest - sum(floors.values())]:
        floors[name] += 1
    weights.update((name, w) for name, w in sorted(floors.items()) if w > 0)
    return weights


def parse_steps(text: str) -> list[int]:
    """``"10,50,100"`` → ``[10, 50, 100]``: whole percents, strictly increasing, ending at 100."""
    steps: list[int] = []
    for part in text.split(","):
        raw = part.strip().removesuffix("%")
        if not raw.isdigit():
            raise UserError(f"--steps {text!r}: {part.strip()!r} is not a whole percent")
        step = int(raw)
        if not 1 <= step <= 100:
            raise UserError(f"--steps {text!r}: {step} is not within 1..100")
        if steps and step <= steps[-1]:
            raise UserError(f"--steps {text!r}: {step} does not come after {steps[-1]}")
        steps.append(step)
    if steps[-1] != 100:
        raise UserError(f"--steps {text!r}: the last step must be 100, not {steps[-1]}")
    return steps


def parse_interval(text: str, flag: str = "--interval") -> float:
    """``"30s"``, ``"2m"``, ``"500ms"`` or a bare number of seconds → seconds (more than 0)."""
    raw = text.strip()
    # A bare number on the command line means seconds, as it does in a manifest.
    value: object = float(raw) if re.fullmatch(r"\d+(\.\d+)?", raw) else raw
    try:
        return positive_duration(value, flag)
    except ManifestError as error:
        raise UserError(f"{flag} {text!r}: {error.reason}") from None


def parse_error_rate(text: str) -> float:
    """``"1%"`` → 0.01, or a bare fraction ``"0.01"``; within 0..1."""
    raw = text.strip()
    try:
        rate = float(raw.removesuffix("%")) / (100 if raw.endswith("%") else 1)
    except ValueError:
        raise UserError(f"--max-error-rate {text!r}: expected a percent such as 1%") from None
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"--max-error-rate {text!r}: must be within 0% and 100%")
    return rate


class Rollout:
    """One rollout of ``service`` from the ``weights`` in force to ``to_revision`` (see module).

    Constructors validate; a bad argument raises ``UserError`` naming it and its value.
    """

    def __init__(
        self,
        *,
        service: str,
        weights: Mapping[str, int],
        to_revision: str,
        steps: Sequence[int] = (10, 50, 100),
        interval: float = 30.0,
        max_error_rate: float = 0.01,
        max_p99: float | None = None,
        min_requests: int = 20,
        scale_to: int = 1,
        ready_timeout: float = 300.0,
    ) -> None:
        if sum(weights.values()) != 100 or any(w < 0 for w in weights.values()):
            raise UserError(f"rollout of {service}: weights must sum to 100 (got {dict(weights)})")
        if weights.get(to_revision, 0) == 100:
            raise UserError(f"rollout of {service}: {to_revision} already has all the traffic")
        parse_steps(",".join(str(s) for s in steps))
        for name, value, ok in (
            ("interval", interval, interval > 0),
            ("max_error_rate", max_error_rate, 0.0 <= max_error_rate <= 1.0),
            ("max_p99", max_p99, max_p99 is None or max_p99 > 0),
            ("min_requests", min_requests, min_requests >= 0),
            ("scale_to", scale_to, scale_to >= 1),
            ("ready_timeout", ready_timeout, ready_timeout > 0),
        ):
            if not ok:
                raise UserError(f"rollout of {service}: {name} is out of range (got {value!r})")
        self.service = service
        self.original: dict[str, int] = dict(weights)
        self.to_revision = to_revision
        self.steps: tuple[int, ...] = tuple(steps)
        self.interval = interval
        self.max_error_rate = max_error_rate
        self.max_p99 = max_p99
        self.min_requests = min_requests
        self.scale_to = scale_to
        self.ready_timeout = ready_timeout

        self.phase = Phase.NEW
        self.step_index = -1  # index into steps of the share in force; -1: none shifted yet
        self.weights: dict[str, int] = dict(weights)
        self._ready = 0
        self._deadline = 0.0
        self._extended = False
        self._requests = 0
        self._errors = 0
        self._p99: float | None = None
        self._final: RollBack | Done | None = None

    def next_deadline(self) -> float | None:
        """When ``on_tick`` next has something to decide; None once finished."""
        return None if self._final is not None or self.phase is Phase.NEW else self._deadline

    def start(self, now: float) -> Action:
        """Begin: the new revision must be scaled up and warm before any traffic moves."""
        if self.phase is not Phase.NEW:
            raise RuntimeError(f"rollout of {self.service} already started")
        return self._await_ready(now)

    def on_ready(self, now: float) -> Action:
        """The new revision has a ready instance (the caller saw it become ready)."""
        if self.phase is Phase.NEW:
            raise RuntimeError(f"rollout of {self.service} not started")
        self._ready = max(self._ready, 1)
        if self.phase is Phase.AWAITING_READY:
            return self._shift(now)
        return self._current()

    def on_tick(self, now: float, observation: Observation) -> Action:
        """Account ``observation`` and move on if a deadline has passed."""
        if self._final is not None:
            return self._final
        if self.phase is Phase.NEW:
            raise RuntimeError(f"rollout of {self.service} not started")
        self._ready = observation.ready
        if self.phase is Phase.AWAITING_READY:
            if self._ready > 0:
                return self._shift(now)
            if now >= self._deadline:
                return self._finish(
                    RollBack(
                        weights=dict(self.original),
                        reason=f"{self.to_revision} had no ready instance after "
                        f"{self.ready_timeout:g}s",
                    )
                )
            return Wait(until=self._deadline)
        self._requests += observation.requests
        self._errors += observation.errors
        if observation.p99 is not None:
            # Per-period p99s do not combine exactly; the worst one is the cautious estimate.
            self._p99 = max(observation.p99, self._p99 or 0.0)
        if now < self._deadline:
            return Wait(until=self._deadline)
        if self._requests < self.min_requests and not self._extended:
            self._extended = True
            self._deadline = now + self.interval
            return Wait(until=self._deadline)
        return self._judge(now)

    # -- transitions -------------------------------------------------------------------------

    def _await_ready(self, now: float) -> Action:
        self.phase = Phase.AWAITING_READY
        self._deadline = now + self.ready_timeout
        return Prepare(revision=self.to_revision, scale_to=self.scale_to, until=self._deadline)

    def _shift(self, now: float) -> Action:
        self.phase = Phase.STEPPING
        self.step_index += 1
        self.weights = spread(self.original, self.to_revision, self.steps[self.step_index])
        self._deadline = now + self.interval
        self._extended = False
        self._requests = self._errors = 0
        self._p99 = None
        return SetWeights(weights=dict(self.weights), until=self._deadline)

    def _judge(self, now: float) -> Action:
        share = self.steps[self.step_index]
        if self._requests > 0:
            rate = self._errors / self._requests
            if rate > self.max_error_rate:
                return self._finish(
                    RollBack(
                        weights=dict(self.original),
                        reason=f"error rate of {self.to_revision} was {rate:.2%} "
                        f"({self._errors} of {self._requests} requests) at {share}% of traffic, "
                        f"above the limit of {self.max_error_rate:.2%}",
                    )
                )
        if self.max_p99 is not None and self._p99 is not None and self._p99 > self.max_p99:
            return self._finish(
                RollBack(
                    weights=dict(self.original),
                    reason=f"p99 latency of {self.to_revision} was {self._p99:.3f}s at {share}% "
                    f"of traffic, above the limit of {self.max_p99:.3f}s",
                )
            )
        if self.step_index == len(self.steps) - 1:
            return self._finish(Done(weights=dict(self.weights)))
        if self._ready < 1:
            return self._await_ready(now)  # never shift onto zero instances
        return self._shift(now)

    def _finish(self, action: RollBack | Done) -> Action:
        self.phase = Phase.DONE if isinstance(action, Done) else Phase.ROLLED_BACK
        self.weights = dict(action.weights)
        self._final = action
        return action

    def _current(self) -> Action:
        if self._final is not None:
            return self._final
        return Wait(until=self._deadline)
