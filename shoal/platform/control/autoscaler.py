"""The autoscaler's math: Knative's KPA (Knative Pod Autoscaler) as a pure function.

Every router and gateway reports, once a second and per service, how many requests it has in
flight (requests held for activation included) and how many arrived. The controller folds those
samples into a :class:`Metrics` window and calls :func:`decide` on each tick with the service's
``Scale``, the number of ready instances and the time; it carries out the returned
``Decision.desired`` and keeps ``Decision.state`` for the next tick. Nothing here reads a clock,
awaits or touches Redis.

Theory of operation (each rule names the Knative concept it mirrors):

* **Stable mode.** desired = ceil(average concurrency over the stable window (60 s) /
  (target_concurrency x target utilisation 0.7)).
* **Panic mode.** The same ratio over the panic window (10% of the stable window, 6 s). When it
  reaches the panic threshold (200%) of the ready capacity, the autoscaler panics: it provisions
  for the larger of the two windows and never scales down. Panic ends once a full stable window
  has passed without the panic condition.
* **Scale rate limits.** One decision may grow the service to at most ``ceil(ready x
  max-scale-up-rate)`` (1000x) and shrink it to no less than ``floor(ready /
  max-scale-down-rate)`` (2x).
* **Scale bounds.** ``min-scale``/``max-scale`` (``scale.min``/``scale.max``) win over everything.
* **Scale to zero.** Only with ``scale.min == 0``, after ``scale.idle_timeout`` without any
  request (even if the stable window still averages the last burst) and then the scale-to-zero
  grace period on top (30 s by default here as in Knative; Shoal's controller uses 0, because
  its proxies hold requests for an empty destination themselves).
* **Activation.** A service at zero that sees a request (arrived, in flight or held) gets at least
  one instance at once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace

from shoal.resources.model import Scale

# Float division leaves dust (e.g. 70 / 7.000000000000001); a ratio this close to a whole number
# is that number, so ceil() does not ask for an instance nobody needs.
_EPSILON = 1e-9


@dataclass(frozen=True, slots=True)
class Sample:
    """One second of one service's traffic: requests in flight and requests that arrived.

    Positional construction is allowed (unlike the models) because samples are built in bulk
    from the proxies' reports: ``Sample(time, in_flight, requests)``.
    """

    time: float
    in_flight: float
    requests: int

    def __post_init__(self) -> None:
        if self.in_flight < 0:
            raise ValueError(f"Sample.in_flight must not be negative (got {self.in_flight!r})")
        if self.requests < 0:
            raise ValueError(f"Sample.requests must not be negative (got {self.requests!r})")


def merge_samples(samples: Iterable[Sample]) -> list[Sample]:
    """Samples of one service from several proxies, one per whole second, oldest first.

    Samples in the same second (``floor(time)``) are summed: in-flight requests and arrivals at
    different proxies add up, as Knative sums the concurrency its queue-proxies report. The merged
    sample's time is that whole second.
    """
    totals: dict[int, tuple[float, int]] = {}
    for sample in samples:
        second = math.floor(sample.time)
        in_flight, requests = totals.get(second, (0.0, 0))
        totals[second] = (in_flight + sample.in_flight, requests + sample.requests)
    return [Sample(float(s), f, r) for s, (f, r) in sorted(totals.items())]


class Metrics:
    """Per-second buckets of one service's samples, holding no more than ``window`` seconds.

    Knative's sliding-window averaging: a window's average is the sum of its buckets divided by
    its length in seconds (a second nobody reported counts as zero), except that a window is not
    diluted by the time before the first sample: right after the first report (or after a quiet
    spell longer than the whole window) only the seconds since then count.
    """

    def __init__(self, *, window: float = 60.0) -> None:
        if not window >= 1.0:
            raise ValueError(f"Metrics window must be at least 1 second (got {window!r})")
        self.window = window
        self._seconds = math.ceil(window)
        self._buckets: dict[int, tuple[float, int]] = {}
        self._first: int | None = None
        self._newest: int | None = None
        self.last_request_at: float | None = None
        """Time of the newest sample in which a request arrived."""
        self.last_active_at: float | None = None
        """Time of the newest sample in which a request arrived or was in flight (or held)."""

    def add(self, sample: Sample) -> None:
        """Count ``sample`` into its second, adding to what other proxies reported for it.

        A sample older than the window (measured from the newest one) is dropped.
        """
        second = math.floor(sample.time)
        if self._newest is not None and second <= self._newest - self._seconds:
            return
        if self._newest is not None and second - self._newest >= self._seconds:
            # A quiet spell longer than the window: start over, as Knative resets its buckets.
            self._buckets.clear()
            self._first = None
        if self._first is None or second < self._first:
            self._first = second
        if self._newest is None or second > self._newest:
            self._newest = second
            horizon = second - self._seconds
            for old in [s for s in self._buckets if s <= horizon]:
                del self._buckets[old]
        in_flight, requests = self._buckets.get(second, (0.0, 0))
        self._buckets[second] = (in_flight + sample.in_flight, requests + sample.requests)
        if sample.requests > 0:
            self.last_request_at = _later(self.last_request_at, sample.time)
        if sample.requests > 0 or sample.in_flight > 0:
            self.last_active_at = _later(self.last_active_at, sample.time)

    def _span(self, now: float, window: float) -> range:
        end = math.floor(now)
        start = end - max(1, math.ceil(window)) + 1
        if self._first is not None:
            start = max(start, self._first)
        return range(start, end + 1)

    def average_concurrency(self, now: float, window: float) -> float:
        """Mean in-flight requests per second over the ``window`` seconds ending at ``now``."""
        span = self._span(now, window)
        if self._first is None or len(span) == 0:
            return 0.0
        total = sum(self._buckets[s][0] for s in span if s in self._buckets)
        return total / len(span)

    def request_count(self, now: float, window: float) -> int:
        """Requests that arrived in the ``window`` seconds ending at ``now``."""
        if self._first is None:
            return 0
        return sum(self._buckets[s][1] for s in self._span(now, window) if s in self._buckets)


def _later(current: float | None, candidate: float) -> float:
    return candidate if current is None else max(current, candidate)


@dataclass(frozen=True, slots=True, kw_only=True)
class AutoscalerState:
    """What one service's autoscaler remembers between decisions (start with ``AutoscalerState()``).

    ``panic_signal_at`` is Knative's ``panicTime``: the last time the panic condition held; panic
    ends a full stable window after it. ``max_panic_pods`` is the high-water mark panic mode never
    scales below.
    """

    observed_since: float | None = None
    panic_started_at: float | None = None
    panic_signal_at: float | None = None
    max_panic_pods: int = 0
    idle_since: float | None = None
    desired: int | None = None
    last_scale_up_at: float | None = None

    @property
    def panicking(self) -> bool:
        """Whether the autoscaler is in panic mode."""
        return self.panic_started_at is not None


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """The instance count to run, the state to keep for the next call, and why."""

    desired: int
    state: AutoscalerState
    panicking: bool
    reason: str


def _check(name: str, value: float, ok: bool) -> None:
    if not ok:
        raise ValueError(f"autoscaler {name} is out of range (got {value!r})")


def decide(
    scale: Scale,
    metrics: Metrics,
    state: AutoscalerState,
    ready: int,
    now: float,
    *,
    utilisation: float = 0.7,
    stable_window: float = 60.0,
    panic_window: float = 6.0,
    panic_threshold: float = 2.0,
    max_scale_up_rate: float = 1000.0,
    max_scale_down_rate: float = 2.0,
    scale_to_zero_grace: float = 30.0,
) -> Decision:
    """How many instances the service should run now, by Knative's KPA rules (module docstring).

    ``scale`` holds the revision's bounds, target and idle timeout; ``ready`` counts its
    instances that pass health checks. Keep the returned ``state`` and pass it to the next call.
    """
    _check("utilisation", utilisation, 0.0 < utilisation <= 1.0)
    _check("stable_window", stable_window, stable_window >= 1.0)
    _check(
        "stable_window (longer than the Metrics window)",
        stable_window,
        stable_window <= metrics.window,
    )
    _check("panic_window", panic_window, 1.0 <= panic_window <= stable_window)
    _check("panic_threshold", panic_threshold, panic_threshold > 1.0)
    _check("max_scale_up_rate", max_scale_up_rate, max_scale_up_rate > 1.0)
    _check("max_scale_down_rate", max_scale_down_rate, max_scale_down_rate > 1.0)
    _check("scale_to_zero_grace", scale_to_zero_grace, scale_to_zero_grace >= 0.0)
    _check("ready", ready, ready >= 0)
    _check("scale.target_concurrency", scale.target_concurrency, scale.target_concurrency > 0)
    _check("scale.max", scale.max, 1 <= scale.max and 0 <= scale.min <= scale.max)

    observed_since = state.observed_since if state.observed_since is not None else now
    target = scale.target_concurrency * utilisation
    stable = metrics.average_concurrency(now, stable_window)
    burst = metrics.average_concurrency(now, panic_window)
    # Knative's stable/panic desired pod counts, before any limit.
    stable_pods = math.ceil(stable / target - _EPSILON)
    panic_pods = math.ceil(burst / target - _EPSILON)

    # Scale rate limits: relative to what is ready now (Knative treats 0 ready as 1 for the
    # threshold; with nothing ready there is nothing to limit growth against).
    max_up = math.ceil(ready * max_scale_up_rate) if ready > 0 else math.inf
    max_down = math.floor(ready / max_scale_down_rate)
    limited_stable = int(min(max(stable_pods, max_down), max_up))
    limited_panic = int(min(max(panic_pods, max_down), max_up))

    # Panic mode: the panic-window demand against ready capacity (at least one instance).
    over_threshold = panic_pods / max(1, ready) >= panic_threshold
    panic_started_at = state.panic_started_at
    panic_signal_at = state.panic_signal_at
    max_panic_pods = state.max_panic_pods
    if over_threshold:
        if panic_started_at is None:
            panic_started_at = now
            max_panic_pods = ready  # never scale down while panicking: not below what runs
        panic_signal_at = now
    elif panic_signal_at is not None and now - panic_signal_at > stable_window:
        # The surge has made its way into the stable window: un-panic.
        panic_started_at = panic_signal_at = None
        max_panic_pods = 0

    desired = limited_stable
    reason = f"stable: {stable:.2f} in flight over {stable_window:g}s / {target:g} per instance"
    if stable_pods != limited_stable:
        reason = _rate_reason(stable_pods, limited_stable, ready, max_scale_down_rate)
    if panic_started_at is not None:
        desired = max(limited_stable, limited_panic, max_panic_pods)
        reason = (
            f"panic for {now - panic_started_at:.0f}s: {burst:.2f} in flight over "
            f"{panic_window:g}s / "
            f"{target:g} per instance (no scale-down while panicking)"
        )

    # Scale bounds win over the rate limits, as min-scale/max-scale do in Knative.
    if desired < scale.min:
        demand = max(stable, burst) if panic_started_at is not None else stable
        reason = (
            f"scale.min {scale.min} (demand: {demand:.2f} in flight / {target:g} per instance "
            f"= {max(stable_pods, panic_pods if panic_started_at is not None else 0)})"
        )
        desired = scale.min
    elif desired > scale.max:
        desired, reason = scale.max, f"{reason}; capped at scale.max {scale.max}"
    if panic_started_at is not None:
        max_panic_pods = desired  # the high-water mark, within the bounds

    # Idle for a whole idle_timeout: the stable window may still remember the last burst, but
    # with min 0 nothing is wanted any more (Shoal's per-service idle_timeout; Knative waits for
    # its stable-window average to reach zero).
    last = metrics.last_active_at
    if (
        scale.min == 0
        and panic_started_at is None
        and last is not None
        and now - last >= scale.idle_timeout
    ):
        # Down at the scale-down rate limit, as any scale-down: 15 → 7 → 3 → 1 → 0.
        desired = max(0, max_down)
        reason = f"idle for {now - last:g}s (idle_timeout {scale.idle_timeout:g}s)"
    idle_since: float | None = None
    if desired == 0:
        desired, reason, idle_since = _zero(
            scale.idle_timeout, metrics, state, ready, now, observed_since, scale_to_zero_grace
        )

    previous = state.desired
    scaled_up = previous is not None and desired > previous
    new_state = replace(
        state,
        observed_since=observed_since,
        panic_started_at=panic_started_at,
        panic_signal_at=panic_signal_at,
        max_panic_pods=max_panic_pods,
        idle_since=idle_since,
        desired=desired,
        last_scale_up_at=now if scaled_up else state.last_scale_up_at,
    )
    return Decision(
        desired=desired,
        state=new_state,
        panicking=panic_started_at is not None,
        reason=reason,
    )


def _rate_reason(wanted: int, got: int, ready: int, down_rate: float) -> str:
    if got > wanted:
        return f"scale-down rate limit: {wanted} wanted, no fewer than {ready} / {down_rate:g}"
    return f"scale-up rate limit: {wanted} wanted, at most {got} from {ready} ready"


def _zero(
    idle_timeout: float,
    metrics: Metrics,
    state: AutoscalerState,
    ready: int,
    now: float,
    observed_since: float,
    grace: float,
) -> tuple[int, str, float | None]:
    """Zero wanted and allowed by ``scale.min``: activation, idle timeout, then grace period."""
    last = metrics.last_active_at
    if last is not None and now - last < idle_timeout:
        if ready == 0:
            return 1, f"activation: request seen at {last:g} with no instance ready", None
        return 1, f"idle {now - last:g}s of idle_timeout {idle_timeout:g}s", None
    if ready == 0:
        return 0, "scaled to zero: no requests", None
    # No request ever seen (say, the controller just started): the idle clock starts now.
    quiet_since = last if last is not None else observed_since
    if now - quiet_since < idle_timeout:
        return 1, f"idle {now - quiet_since:g}s of idle_timeout {idle_timeout:g}s", None
    idle_since = state.idle_since if state.idle_since is not None else now
    if now - idle_since < grace:
        waited = now - idle_since
        return 1, f"idle; scale-to-zero grace period {waited:g}s of {grace:g}s", idle_since
    return 0, f"scale to zero: no requests for {now - quiet_since:g}s", idle_since
