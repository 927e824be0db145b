"""The autoscaler follows Knative's KPA as documented: stable and panic windows, rate limits,
bounds, scale to zero and activation."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.platform.control.autoscaler import (
    AutoscalerState,
    Decision,
    Metrics,
    Sample,
    decide,
    merge_samples,
)
from shoal.resources.model import Scale

SCALE = Scale(min=0, max=100, target_concurrency=10, idle_timeout=60.0)


def load(metrics: Metrics, start: int, end: int, in_flight: float, requests: int = 0) -> None:
    """One sample per second in [start, end)."""
    for t in range(start, end):
        metrics.add(Sample(float(t), in_flight, requests))


def test_merge_sums_proxies_per_second() -> None:
    """Samples from several proxies in the same second add up, one merged sample per second."""
    merged = merge_samples(
        [Sample(10.2, 3, 4), Sample(10.9, 5, 1), Sample(9.5, 1, 1), Sample(11.0, 0, 0)]
    )
    assert merged == [Sample(9.0, 1, 1), Sample(10.0, 8, 5), Sample(11.0, 0, 0)]


def test_metrics_average_and_memory_bound() -> None:
    """Averages cover only the window; samples older than the stable window are forgotten."""
    metrics = Metrics(window=60.0)
    load(metrics, 0, 60, 10.0, requests=2)
    load(metrics, 60, 66, 100.0)
    assert metrics.average_concurrency(65.5, 6.0) == 100.0
    assert metrics.average_concurrency(65.5, 60.0) == (54 * 10 + 6 * 100) / 60
    assert metrics.request_count(65.5, 60.0) == 2 * 54
    metrics.add(Sample(0.0, 1000.0, 0))  # older than the window: dropped
    assert metrics.average_concurrency(65.5, 60.0) == (54 * 10 + 6 * 100) / 60
    assert metrics.last_request_at == 59.0
    assert metrics.last_active_at == 65.0


def test_metrics_not_diluted_before_first_sample() -> None:
    """Right after the first report only the seconds since then count (Knative's buckets)."""
    metrics = Metrics()
    metrics.add(Sample(100.0, 50.0, 50))
    assert metrics.average_concurrency(100.5, 60.0) == 50.0
    assert metrics.average_concurrency(102.5, 6.0) == 50.0 / 3


def test_steady_load_divides_by_target_times_utilisation() -> None:
    """100 concurrent requests with target 10 x 0.7 ask for ceil(100 / 7) = 15 instances."""
    metrics = Metrics()
    load(metrics, 0, 60, 100.0, requests=100)
    decision = decide(SCALE, metrics, AutoscalerState(), 10, 59.5)
    assert decision.desired == 15
    assert not decision.panicking
    assert decision.reason.startswith("stable")


def panic_scenario() -> tuple[Metrics, Decision]:
    """Steady 10 in flight on 2 instances for a minute, then a burst of 100 for 6 seconds."""
    metrics = Metrics()
    load(metrics, 0, 60, 10.0, requests=10)
    calm = decide(SCALE, metrics, AutoscalerState(), 2, 59.5)
    assert (calm.desired, calm.panicking) == (2, False)
    load(metrics, 60, 66, 100.0, requests=100)
    return metrics, decide(SCALE, metrics, calm.state, 2, 65.5)


def test_burst_triggers_panic_and_fast_scale_up() -> None:
    """A burst at 2x ready capacity in the panic window panics and provisions for the burst."""
    _, decision = panic_scenario()
    assert decision.panicking
    assert decision.desired == 15  # ceil(100 / 7) from the 6 s window; the 60 s one says 3
    assert decision.state.panic_started_at == 65.5
    assert decision.state.last_scale_up_at == 65.5


def test_no_scale_down_while_panicking() -> None:
    """After the burst stops, panic mode keeps the high-water mark instead of scaling down."""
    metrics, decision = panic_scenario()
    load(metrics, 66, 80, 0.0)
    for now in (70.0, 80.0, 100.0, 125.5):
        decision = decide(SCALE, metrics, decision.state, 15, now)
        assert decision.panicking
        assert decision.desired == 15


def test_panic_ends_after_a_stable_window_without_panic() -> None:
    """A full stable window after the last panic signal, the autoscaler returns to stable mode."""
    metrics, decision = panic_scenario()
    load(metrics, 66, 126, 0.0)
    decision = decide(SCALE, metrics, decision.state, 15, 125.5)
    assert decision.panicking
    decision = decide(SCALE, metrics, decision.state, 15, 125.6)
    assert not decision.panicking
    assert decision.state.max_panic_pods == 0
    assert decision.desired == 7  # stable says 1; the scale-down rate limit allows 15 // 2


def test_panic_signal_extends_panic() -> None:
    """Each time the panic condition holds again, the stable window to leave panic restarts."""
    metrics, decision = panic_scenario()
    load(metrics, 66, 120, 0.0)
    load(metrics, 120, 126, 400.0)
    decision = decide(SCALE, metrics, decision.state, 15, 125.5)
    assert decision.panicking
    assert decision.state.panic_started_at == 65.5
    assert decision.state.panic_signal_at == 125.5
    assert decision.desired == 58  # ceil(400 / 7)


def test_scale_to_zero_after_idle_timeout_and_grace() -> None:
    """With min 0, the last instance goes after idle_timeout without requests plus the grace."""
    metrics = Metrics()
    load(metrics, 0, 10, 1.0, requests=1)
    state = AutoscalerState()
    expected = {9.5: 1, 50.0: 1, 68.5: 1, 69.0: 1, 98.5: 1, 99.0: 0}  # last request at 9.0
    for now, want in expected.items():
        decision = decide(SCALE, metrics, state, 1, now)
        state = decision.state
        assert decision.desired == want, (now, decision.reason)
    assert state.idle_since == 69.0
    assert "scale to zero" in decision.reason


def test_no_scale_to_zero_with_min_one() -> None:
    """With min 1 the service keeps one instance however long it idles."""
    metrics = Metrics()
    load(metrics, 0, 10, 1.0, requests=1)
    state = AutoscalerState()
    for now in (50.0, 70.0, 100.0, 1000.0):
        decision = decide(Scale(min=1, max=10), metrics, state, 1, now)
        state = decision.state
        assert decision.desired == 1


def test_idle_clock_starts_when_watching_starts() -> None:
    """A service nobody has called is idle from the first decision, not from time zero."""
    state = AutoscalerState()
    for now, want in {1000.0: 1, 1059.0: 1, 1060.0: 1, 1090.0: 0}.items():
        decision = decide(SCALE, Metrics(), state, 1, now)
        state = decision.state
        assert decision.desired == want, (now, decision.reason)


def test_activation_from_zero() -> None:
    """At zero instances, a request seen in the samples asks for one instance at once."""
    metrics = Metrics()
    metrics.add(Sample(200.0, 0.0, 1))
    decision = decide(SCALE, metrics, AutoscalerState(idle_since=100.0), 0, 200.2)
    assert decision.desired == 1
    assert decision.reason.startswith("activation")
    assert decision.state.idle_since is None


def test_held_burst_at_zero_panics() -> None:
    """50 requests held at zero panic the autoscaler into ceil(50 / 7) = 8 instances at once."""
    metrics = Metrics()
    metrics.add(Sample(200.0, 50.0, 50))
    decision = decide(SCALE, metrics, AutoscalerState(), 0, 200.5)
    assert decision.desired == 8
    assert decision.panicking


def test_stays_at_zero_without_requests() -> None:
    """At zero with no traffic, nothing is started."""
    decision = decide(SCALE, Metrics(), AutoscalerState(), 0, 500.0)
    assert decision.desired == 0


def test_bounds_win() -> None:
    """scale.max caps a huge load; scale.min holds instances with no load at all."""
    metrics = Metrics()
    load(metrics, 0, 60, 1000.0)
    capped = decide(Scale(min=0, max=10), metrics, AutoscalerState(), 10, 59.5)
    assert capped.desired == 10
    assert "scale.max" in capped.reason
    floor = decide(Scale(min=3, max=10), Metrics(), AutoscalerState(), 3, 59.5)
    assert floor.desired == 3


def test_scale_down_rate_limit_halves_at_most() -> None:
    """Without load, each decision at most halves the ready instances (max-scale-down-rate 2)."""
    state = AutoscalerState()
    ready = 20
    seen = []
    for now in (10.0, 12.0, 14.0, 16.0):
        decision = decide(Scale(min=1, max=100), Metrics(), state, ready, now)
        state, ready = decision.state, decision.desired
        seen.append(decision.desired)
    assert seen == [10, 5, 2, 1]


def test_scale_up_rate_limit() -> None:
    """One decision grows the service to at most ready x max-scale-up-rate."""
    metrics = Metrics()
    load(metrics, 0, 60, 700.0)
    decision = decide(SCALE, metrics, AutoscalerState(), 2, 59.5, max_scale_up_rate=10.0)
    assert decision.desired == 20


scales = st.builds(
    lambda lo, extra, target, idle: Scale(
        min=lo, max=max(1, lo + extra), target_concurrency=target, idle_timeout=idle
    ),
    st.integers(0, 5),
    st.integers(0, 20),
    st.integers(1, 50),
    st.floats(1.0, 120.0),
)
ticks = st.lists(
    st.tuples(st.floats(0.0, 500.0), st.integers(0, 100), st.integers(0, 40)),
    min_size=1,
    max_size=150,
)


@settings(max_examples=200, deadline=None)
@given(scales, ticks)
def test_desired_within_bounds_and_never_down_in_panic(
    scale: Scale, seconds: list[tuple[float, int, int]]
) -> None:
    """desired is within [min, max] (0 only when min is 0) and never drops while panicking."""
    metrics = Metrics()
    state = AutoscalerState()
    previous: Decision | None = None
    for t, (in_flight, requests, ready) in enumerate(seconds):
        metrics.add(Sample(float(t), in_flight, requests))
        decision = decide(scale, metrics, state, ready, t + 0.5)
        assert decision.desired <= scale.max
        assert decision.desired >= scale.min
        assert decision.desired > 0 or scale.min == 0
        if previous is not None and previous.panicking and decision.panicking:
            assert decision.desired >= previous.desired
        state, previous = decision.state, decision


def test_idle_timeout_wins_over_a_stable_window_that_remembers_traffic() -> None:
    """With min 0 and a 5 s idle_timeout, the service goes to zero 5 s after its last request
    even though the 60 s stable window still averages that traffic; from several instances it
    steps down at the scale-down rate limit."""
    scale = Scale(min=0, max=100, target_concurrency=10, idle_timeout=5.0)
    metrics = Metrics()
    load(metrics, 0, 10, 1.0, requests=1)  # last request at 9.0
    kept = decide(scale, metrics, AutoscalerState(), 1, 13.5, scale_to_zero_grace=0.0)
    assert kept.desired == 1
    gone = decide(scale, metrics, kept.state, 1, 14.0, scale_to_zero_grace=0.0)
    assert gone.desired == 0 and "scale to zero" in gone.reason
    stepped = decide(scale, metrics, AutoscalerState(), 6, 14.0, scale_to_zero_grace=0.0)
    assert stepped.desired == 3
