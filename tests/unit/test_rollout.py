"""Progressive rollouts as a state machine with explicit time."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.errors import UserError
from shoal.platform.control.rollout import (
    Done,
    Observation,
    Phase,
    Prepare,
    RollBack,
    Rollout,
    SetWeights,
    Wait,
    parse_error_rate,
    parse_interval,
    parse_steps,
    spread,
)


def seen(
    requests: int = 0, errors: int = 0, ready: int = 1, p99: float | None = None
) -> Observation:
    """The new revision's traffic since the previous call."""
    return Observation(requests=requests, errors=errors, ready=ready, p99=p99)


def rollout(
    *,
    weights: dict[str, int] | None = None,
    steps: list[int] | None = None,
    max_error_rate: float = 0.01,
    max_p99: float | None = None,
    ready_timeout: float = 300.0,
) -> Rollout:
    """hello from v1 (all traffic) to v2 in 10/50/100 steps of 30 s, 1% errors allowed."""
    return Rollout(
        service="hello",
        weights={"v1": 100} if weights is None else weights,
        to_revision="v2",
        steps=[10, 50, 100] if steps is None else steps,
        interval=30.0,
        max_error_rate=max_error_rate,
        max_p99=max_p99,
        ready_timeout=ready_timeout,
    )


def test_happy_path_10_50_100() -> None:
    """A healthy v2 gets 10%, then 50%, then 100% of the traffic, each after an interval."""
    r = rollout()
    assert r.start(0.0) == Prepare(revision="v2", scale_to=1, until=300.0)
    assert r.on_ready(5.0) == SetWeights(weights={"v2": 10, "v1": 90}, until=35.0)
    assert r.on_tick(20.0, seen(requests=15)) == Wait(until=35.0)
    assert r.on_tick(35.0, seen(requests=15)) == SetWeights(
        weights={"v2": 50, "v1": 50}, until=65.0
    )
    assert r.on_tick(65.0, seen(requests=300, errors=1)) == SetWeights(
        weights={"v2": 100}, until=95.0
    )
    assert r.on_tick(95.0, seen(requests=600)) == Done(weights={"v2": 100})
    assert r.phase is Phase.DONE
    assert r.next_deadline() is None
    assert r.on_tick(100.0, seen()) == Done(weights={"v2": 100})


def test_rolls_back_on_error_rate_naming_it() -> None:
    """A v2 answering 5xx above the limit is rolled back to the original weights, with the rate."""
    r = rollout(weights={"v1": 80, "v0": 20})
    r.start(0.0)
    assert r.on_ready(0.0) == SetWeights(weights={"v2": 10, "v0": 18, "v1": 72}, until=30.0)
    action = r.on_tick(30.0, seen(requests=40, errors=8))
    assert isinstance(action, RollBack)
    assert action.weights == {"v1": 80, "v0": 20}
    assert "20.00%" in action.reason
    assert "8 of 40" in action.reason
    assert "1.00%" in action.reason
    assert r.phase is Phase.ROLLED_BACK
    assert r.weights == {"v1": 80, "v0": 20}


def test_rolls_back_at_the_last_step() -> None:
    """The 100% step is judged too: failing there still restores the original weights."""
    r = rollout(steps=[50, 100])
    r.start(0.0)
    r.on_ready(0.0)
    assert r.on_tick(30.0, seen(requests=100)) == SetWeights(weights={"v2": 100}, until=60.0)
    action = r.on_tick(60.0, seen(requests=100, errors=50))
    assert isinstance(action, RollBack)
    assert action.weights == {"v1": 100}


def test_rolls_back_on_p99() -> None:
    """A p99 latency above max_p99 rolls back and names both numbers."""
    r = rollout(max_p99=0.5)
    r.start(0.0)
    r.on_ready(0.0)
    r.on_tick(10.0, seen(requests=20, p99=0.2))
    action = r.on_tick(30.0, seen(requests=20, p99=0.8))
    assert isinstance(action, RollBack)
    assert "0.800s" in action.reason
    assert "0.500s" in action.reason


def test_never_shifts_before_ready() -> None:
    """Without a ready v2 no weight changes; after ready_timeout the rollout gives up."""
    r = rollout(ready_timeout=120.0)
    assert isinstance(r.start(0.0), Prepare)
    assert r.on_tick(10.0, seen(ready=0)) == Wait(until=120.0)
    assert r.weights == {"v1": 100}
    action = r.on_tick(120.0, seen(ready=0))
    assert isinstance(action, RollBack)
    assert "no ready instance" in action.reason
    assert action.weights == {"v1": 100}


def test_ready_reported_by_tick_shifts() -> None:
    """A tick that reports a ready v2 counts as readiness."""
    r = rollout()
    r.start(0.0)
    assert r.on_tick(3.0, seen(ready=1)) == SetWeights(weights={"v2": 10, "v1": 90}, until=33.0)


def test_next_step_waits_for_ready_again() -> None:
    """If v2 lost every instance, the next step waits for a ready one instead of shifting."""
    r = rollout()
    r.start(0.0)
    r.on_ready(0.0)
    action = r.on_tick(30.0, seen(requests=50, ready=0))
    assert action == Prepare(revision="v2", scale_to=1, until=330.0)
    assert r.weights == {"v2": 10, "v1": 90}
    assert r.on_ready(40.0) == SetWeights(weights={"v2": 50, "v1": 50}, until=70.0)


def test_few_requests_extend_once_then_judge() -> None:
    """Under min_requests the wait is extended once; then the step is judged on what came."""
    r = rollout()
    r.start(0.0)
    r.on_ready(0.0)
    assert r.on_tick(30.0, seen(requests=5)) == Wait(until=60.0)
    action = r.on_tick(60.0, seen(requests=3, errors=1))
    assert isinstance(action, RollBack)
    assert "1 of 8" in action.reason


def test_no_traffic_at_all_proceeds_after_extension() -> None:
    """With no requests even after the extension, the step passes (nothing failed)."""
    r = rollout()
    r.start(0.0)
    r.on_ready(0.0)
    assert r.on_tick(30.0, seen()) == Wait(until=60.0)
    assert r.on_tick(60.0, seen()) == SetWeights(weights={"v2": 50, "v1": 50}, until=90.0)


def test_constructor_validates() -> None:
    """Weights not summing to 100, a finished target and bad limits are user errors."""
    with pytest.raises(UserError, match="sum to 100"):
        rollout(weights={"v1": 90})
    with pytest.raises(UserError, match="already has all"):
        rollout(weights={"v2": 100})
    with pytest.raises(UserError, match="max_error_rate"):
        rollout(max_error_rate=2.0)
    with pytest.raises(UserError, match="last step"):
        rollout(steps=[10, 50])


def test_spread_largest_remainder() -> None:
    """The rest is split in proportion and rounded so the total is exactly 100."""
    assert spread({"a": 1, "b": 1, "c": 1}, "v2", 0) == {"a": 34, "b": 33, "c": 33}
    assert spread({"a": 1, "b": 1, "c": 1}, "v2", 1) == {"v2": 1, "a": 33, "b": 33, "c": 33}
    assert spread({"v1": 70, "v0": 30, "v2": 0}, "v2", 10) == {"v2": 10, "v0": 27, "v1": 63}
    assert spread({"v1": 100}, "v2", 100) == {"v2": 100}


def test_parse_steps() -> None:
    """Steps parse to whole percents, increasing, ending with 100."""
    assert parse_steps("10,50,100") == [10, 50, 100]
    assert parse_steps(" 25%, 100 ") == [25, 100]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("10,50", "last step must be 100"),
        ("50,10,100", "does not come after 50"),
        ("0,100", "not within 1..100"),
        ("10,x,100", "not a whole percent"),
        ("", "not a whole percent"),
        ("10,150", "not within 1..100"),
    ],
)
def test_parse_steps_rejects(text: str, message: str) -> None:
    """Bad steps name the offending value."""
    with pytest.raises(UserError, match=message):
        parse_steps(text)


def test_parse_interval_and_error_rate() -> None:
    """Intervals are durations in seconds; error rates are percents or fractions."""
    assert parse_interval("30s") == 30.0
    assert parse_interval("2m") == 120.0
    assert parse_interval("45") == 45.0
    assert parse_error_rate("1%") == 0.01
    assert parse_error_rate("0.05") == 0.05
    for bad in ("0s", "soon", "-3s"):
        with pytest.raises(UserError, match="--interval"):
            parse_interval(bad)
    for bad in ("lots", "150%"):
        with pytest.raises(UserError, match="--max-error-rate"):
            parse_error_rate(bad)


@st.composite
def weight_maps(draw: st.DrawFn) -> dict[str, int]:
    """Original weights of 1-4 old revisions (some possibly 0), summing to 100."""
    names = draw(st.lists(st.sampled_from(["v0", "v1", "a", "b"]), min_size=1, unique=True))
    cuts = sorted(
        draw(st.lists(st.integers(0, 100), min_size=len(names) - 1, max_size=len(names) - 1))
    )
    bounds = [0, *cuts, 100]
    weights = {n: bounds[i + 1] - bounds[i] for i, n in enumerate(names)}
    if not any(weights.values()):
        weights[names[0]] = 100
    return weights


step_lists = st.lists(st.integers(1, 99), unique=True).map(lambda s: [*sorted(s), 100])


@settings(max_examples=200, deadline=None)
@given(weight_maps(), step_lists)
def test_weights_always_sum_to_100(original: dict[str, int], steps: list[int]) -> None:
    """Every weight map a rollout writes sums to 100 and gives v2 exactly the step's share."""
    r = Rollout(service="hello", weights=original, to_revision="v2", steps=steps, interval=10.0)
    r.start(0.0)
    action = r.on_ready(0.0)
    now = 0.0
    shares = []
    while not isinstance(action, Done):
        assert isinstance(action, SetWeights)
        assert sum(action.weights.values()) == 100
        assert all(w > 0 for w in action.weights.values())
        shares.append(action.weights["v2"])
        for name, weight in action.weights.items():
            assert name == "v2" or 0 < weight <= original[name]
        now += 10.0
        action = r.on_tick(now, seen(requests=100))
    assert shares == steps
    assert action.weights == {"v2": 100}
