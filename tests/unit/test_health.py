"""Active health state: thresholds, flips, jittered schedule, DestinationRule override."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.platform.runtime.health import HealthState, HealthThresholds, Transition, thresholds
from shoal.resources.model import HealthCheck, TrafficPolicy

PROPERTY = settings(database=None, derandomize=True, deadline=None, max_examples=200)


def state(
    *, healthy: int = 2, unhealthy: int = 3, interval: float = 2.0, jitter: float = 0.0
) -> HealthState:
    """A fresh machine started at t=100.0."""
    limits = HealthThresholds(
        healthy_threshold=healthy, unhealthy_threshold=unhealthy, interval=interval, jitter=jitter
    )
    return HealthState(limits, now=100.0, rng=random.Random(1))


def test_starts_healthy_with_first_probe_one_interval_later() -> None:
    """Without jitter the first probe is due exactly one interval after the start."""
    s = state()
    assert s.healthy
    assert s.next_deadline() == 102.0


def test_flips_unhealthy_after_threshold_failures() -> None:
    """Three consecutive failures (the threshold) flip to unhealthy, not two."""
    s = state(unhealthy=3)
    rng = random.Random(0)
    assert s.on_result(False, 102.0, rng) is None
    assert s.on_result(False, 104.0, rng) is None
    assert s.on_result(False, 106.0, rng) == Transition(healthy=False, at=106.0, streak=3)
    assert not s.healthy


def test_success_in_between_resets_the_failure_streak() -> None:
    """fail, fail, ok, fail, fail stays healthy: failures must be consecutive."""
    s = state(unhealthy=3)
    rng = random.Random(0)
    for t, ok in [(102.0, False), (104.0, False), (106.0, True), (108.0, False), (110.0, False)]:
        assert s.on_result(ok, t, rng) is None
    assert s.healthy
    assert s.streak == 2


def test_recovers_after_healthy_threshold_successes() -> None:
    """Once unhealthy, two successes (healthy_threshold) bring it back to ready."""
    s = state(healthy=2, unhealthy=1)
    rng = random.Random(0)
    flip = s.on_result(False, 102.0, rng)
    assert flip is not None and flip.state == "unhealthy"
    assert s.on_result(True, 104.0, rng) is None
    back = s.on_result(True, 106.0, rng)
    assert back == Transition(healthy=True, at=106.0, streak=2)
    assert back.state == "ready"


def test_next_probe_is_scheduled_from_the_result_time() -> None:
    """A slow probe pushes the schedule: the next one is due an interval after the result."""
    s = state(interval=5.0)
    s.on_result(True, 103.5, random.Random(0))
    assert s.next_deadline() == 108.5


def test_jitter_keeps_the_delay_within_its_band() -> None:
    """With 10 % jitter every delay lies in [0.9, 1.1] x interval."""
    s = state(interval=10.0, jitter=0.1)
    rng = random.Random(7)
    for t in (110.0, 120.0, 130.0):
        s.on_result(True, t, rng)
        assert t + 9.0 <= s.next_deadline() <= t + 11.0


def test_same_seed_same_schedule() -> None:
    """The schedule depends only on the injected rng."""
    a, b = state(jitter=0.2), state(jitter=0.2)
    ra, rb = random.Random(3), random.Random(3)
    for t in (102.0, 104.0, 106.0):
        a.on_result(True, t, ra)
        b.on_result(True, t, rb)
        assert a.next_deadline() == b.next_deadline()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("healthy_threshold", 0),
        ("unhealthy_threshold", -1),
        ("interval", 0.0),
        ("timeout", -1.0),
        ("jitter", 1.0),
    ],
)
def test_thresholds_validate(field: str, value: float) -> None:
    """A bad parameter is rejected with an error naming the field and the value."""
    with pytest.raises(ValueError, match=f"{field}.*{value!r}"):
        HealthThresholds(**{field: value})  # type: ignore[arg-type]


def test_destination_rule_overrides_service_thresholds() -> None:
    """failureThreshold and healthyThreshold replace the Service's; interval/timeout stay."""
    health = HealthCheck(interval=5.0, timeout=2.0, healthy_threshold=1, unhealthy_threshold=3)
    policy = TrafficPolicy(failure_threshold=7, healthy_threshold=4)
    limits = thresholds(health, policy)
    assert (limits.unhealthy_threshold, limits.healthy_threshold) == (7, 4)
    assert (limits.interval, limits.timeout) == (5.0, 2.0)


def test_service_thresholds_without_destination_rule() -> None:
    """No policy, or a policy without thresholds, leaves the Service's values."""
    health = HealthCheck(healthy_threshold=2, unhealthy_threshold=5)
    for policy in (None, TrafficPolicy()):
        limits = thresholds(health, policy)
        assert (limits.healthy_threshold, limits.unhealthy_threshold) == (2, 5)


@PROPERTY
@given(
    healthy=st.integers(1, 5),
    unhealthy=st.integers(1, 5),
    results=st.lists(st.booleans(), max_size=60),
)
def test_flips_exactly_after_threshold_consecutive_results(
    healthy: int, unhealthy: int, results: list[bool]
) -> None:
    """The state flips exactly when the last `threshold` results all disagree with it."""
    s = state(healthy=healthy, unhealthy=unhealthy, jitter=0.1)
    rng = random.Random(0)
    current, streak = True, 0
    for i, ok in enumerate(results):
        flip = s.on_result(ok, 100.0 + i, rng)
        streak = 0 if ok == current else streak + 1
        needed = unhealthy if current else healthy
        if streak == needed:
            assert flip == Transition(healthy=ok, at=100.0 + i, streak=needed)
            current, streak = ok, 0
        else:
            assert flip is None
        assert s.healthy == current
        assert 100.0 + i + 1.8 <= s.next_deadline() <= 100.0 + i + 2.2
