"""Outlier detection: consecutive errors eject, the cap holds, ejections grow, decay and end."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.mesh.outcome import CONNECT_FAILURE, RESET, SUCCESS, TIMEOUT, Outcome
from shoal.mesh.outlier import OutlierDetector, ejection_time, max_ejections
from shoal.resources.endpoint import Endpoint
from shoal.resources.model import OutlierDetection

PROPERTY = settings(database=None, derandomize=True, deadline=None, max_examples=200)
KEYS = ("svc/a", "svc/b", "svc/c")


def ep(key: str) -> Endpoint:
    """A ready endpoint whose registry key is ``key``."""
    service, ident = key.split("/")
    return Endpoint(
        id=ident, service=service, revision="v1", node="n1", address="127.0.0.1", port=9000
    )


def detector(hosts: tuple[str, ...] = KEYS, **policy: float | int | None) -> OutlierDetector:
    """A detector over ``hosts`` with Istio's defaults overridden by ``policy``."""
    return OutlierDetector(OutlierDetection(**policy), hosts)  # type: ignore[arg-type]


def fail(d: OutlierDetector, key: str, times: int, now: float, outcome: Outcome = RESET) -> None:
    """Record ``times`` failures of ``key`` at ``now``."""
    for _ in range(times):
        d.record(key, outcome, now)


def test_five_consecutive_5xx_eject_for_base_time() -> None:
    """The fifth consecutive 500 ejects the host for 30 s (Istio's defaults)."""
    d = detector()
    for _ in range(4):
        assert d.record("svc/a", Outcome.response(500), 100.0) is None
    ejection = d.record("svc/a", Outcome.response(500), 100.0)
    assert ejection is not None
    assert (ejection.reason, ejection.until, ejection.count, ejection.enforced) == (
        "consecutive_5xx",
        130.0,
        1,
        True,
    )
    assert d.is_ejected("svc/a", 129.9)
    assert not d.is_ejected("svc/a", 130.0)


def test_connect_failures_and_timeouts_count_as_5xx() -> None:
    """Local failures are 5xx to the detector: a mix of them ejects."""
    d = detector()
    for outcome in (CONNECT_FAILURE, TIMEOUT, RESET, Outcome.response(503)):
        assert d.record("svc/a", outcome, 100.0) is None
    assert d.record("svc/a", CONNECT_FAILURE, 100.0) is not None


@pytest.mark.parametrize("status", [200, 302, 404, 429])
def test_response_below_500_resets_the_streak(status: int) -> None:
    """Four failures, one non-5xx answer, four failures: no ejection."""
    d = detector()
    fail(d, "svc/a", 4, 100.0)
    d.record("svc/a", Outcome.response(status), 100.0)
    fail(d, "svc/a", 4, 101.0)
    assert d.detected == 0
    assert not d.is_ejected("svc/a", 101.0)


def test_gateway_errors_have_their_own_threshold() -> None:
    """With consecutiveGatewayErrors 3, 502, 503 then a timeout eject before five 5xx."""
    d = detector(consecutive_gateway_errors=3)
    d.record("svc/a", Outcome.response(502), 100.0)
    d.record("svc/a", Outcome.response(503), 100.0)
    ejection = d.record("svc/a", TIMEOUT, 100.0)
    assert ejection is not None and ejection.reason == "consecutive_gateway_errors"


def test_other_5xx_resets_only_the_gateway_streak() -> None:
    """A 500 breaks a run of gateway errors (Envoy) but still counts as a 5xx."""
    d = detector(consecutive_gateway_errors=3, consecutive_5xx_errors=4)
    d.record("svc/a", Outcome.response(502), 100.0)
    d.record("svc/a", Outcome.response(502), 100.0)
    d.record("svc/a", Outcome.response(500), 100.0)
    assert d.record("svc/a", Outcome.response(502), 100.0) is not None  # 4th 5xx
    assert d.snapshot()["svc/a"].reason == "consecutive_5xx"


def test_zero_thresholds_disable_detection() -> None:
    """consecutive5xxErrors 0 and no gateway threshold: nothing is ever detected."""
    d = detector(consecutive_5xx_errors=0)
    fail(d, "svc/a", 50, 100.0)
    assert d.detected == 0


def test_ejection_time_grows_with_each_ejection() -> None:
    """Ejected again right after release: 30 s, then 60 s, then 90 s."""
    d = detector()
    untils = []
    now = 100.0
    for _ in range(3):
        fail(d, "svc/a", 5, now)
        ejection = d.snapshot()["svc/a"]
        untils.append(ejection.until - now)
        now = ejection.until
    assert untils == [30.0, 60.0, 90.0]


def test_multiplier_decays_one_per_interval_in_service() -> None:
    """After two ejections, 10 s back in service forgives one: the next lasts 60 s, not 90 s."""
    d = detector()
    fail(d, "svc/a", 5, 100.0)  # until 130, multiplier 1
    fail(d, "svc/a", 5, 130.0)  # until 190, multiplier 2
    assert d.multiplier("svc/a", 199.9) == 2
    assert d.multiplier("svc/a", 200.0) == 1
    fail(d, "svc/a", 5, 200.0)
    assert d.snapshot()["svc/a"].until == 260.0
    assert d.multiplier("svc/a", 260.0 + 10.0 * 5) == 0


def test_ejection_time_is_capped_at_300s() -> None:
    """The multiplier stops at the cap: base 100 s ejects for 100, 200, 300, 300 s."""
    assert [ejection_time(100.0, n) for n in (1, 2, 3, 4)] == [100.0, 200.0, 300.0, 300.0]
    assert ejection_time(400.0, 3) == 400.0  # a base above 300 s is its own cap
    d = detector(base_ejection_time=100.0)
    now = 100.0
    for _ in range(5):
        fail(d, "svc/a", 5, now)
        now = d.snapshot()["svc/a"].until
    assert d.snapshot()["svc/a"].count == 3


@pytest.mark.parametrize(
    ("hosts", "percent", "allowed"),
    [
        (3, 10.0, 1),
        (10, 10.0, 1),
        (20, 10.0, 2),
        (25, 10.0, 2),
        (2, 0.0, 0),
        (1, 10.0, 0),
        (1, 100.0, 1),
        (4, 50.0, 2),
        (3, 33.333333333333336, 1),
        (0, 100.0, 0),
    ],
)
def test_max_ejections(hosts: int, percent: float, allowed: int) -> None:
    """floor(hosts x percent), at least one from two hosts up when percent > 0, none at 0 %."""
    assert max_ejections(hosts, percent) == allowed


def test_cap_refuses_second_ejection_but_counts_it_detected() -> None:
    """Three hosts at 10 %: one ejected; the second outlier is detected, not enforced."""
    d = detector()
    fail(d, "svc/a", 5, 100.0)
    fail(d, "svc/b", 4, 100.0)
    refused = d.record("svc/b", RESET, 100.0)
    assert refused is not None and not refused.enforced
    assert (d.detected, d.enforced) == (2, 1)
    assert not d.is_ejected("svc/b", 100.0)
    fail(d, "svc/b", 5, 130.0)  # "svc/a" has been released: room again
    assert d.is_ejected("svc/b", 130.0)


def test_zero_percent_never_ejects() -> None:
    """maxEjectionPercent 0 means no ejection at all (unlike Envoy's at-least-one)."""
    d = detector(max_ejection_percent=0.0)
    fail(d, "svc/a", 5, 100.0)
    assert (d.detected, d.enforced) == (1, 0)


def test_filter_hot_path_returns_candidates_unchanged() -> None:
    """With nothing ejected, filter hands back the same tuple."""
    d = detector()
    candidates = tuple(ep(k) for k in KEYS)
    assert d.filter(candidates, 100.0) is candidates
    assert d.filter(list(candidates), 100.0) == candidates


def test_filter_drops_ejected_until_their_time() -> None:
    """An ejected host is filtered out until exactly its ``until``."""
    d = detector()
    candidates = tuple(ep(k) for k in KEYS)
    fail(d, "svc/b", 5, 100.0)
    assert [e.key for e in d.filter(candidates, 100.0)] == ["svc/a", "svc/c"]
    assert d.filter(candidates, 130.0) == candidates


def test_min_health_percent_panics_to_all_candidates() -> None:
    """Below minHealthPercent in service, filter returns every candidate (Envoy's panic)."""
    d = detector(hosts=KEYS[:2], min_health_percent=60.0)
    candidates = tuple(ep(k) for k in KEYS[:2])
    fail(d, "svc/a", 5, 100.0)
    assert d.filter(candidates, 100.0) == candidates
    d.policy = OutlierDetection(min_health_percent=50.0)
    assert [e.key for e in d.filter(candidates, 100.0)] == ["svc/b"]


def test_sweep_and_next_deadline() -> None:
    """next_deadline is the earliest end; sweep returns what ended, earliest first."""
    d = detector(hosts=("svc/a", "svc/b", "svc/c", "svc/d"), max_ejection_percent=50.0)
    assert d.next_deadline() is None
    fail(d, "svc/b", 5, 105.0)
    fail(d, "svc/a", 5, 100.0)
    assert d.next_deadline() == 130.0
    assert d.sweep(129.0) == []
    assert d.sweep(140.0) == ["svc/a", "svc/b"]
    assert d.next_deadline() is None
    assert d.snapshot() == {}


def test_outcomes_of_an_ejected_host_are_ignored() -> None:
    """In-flight answers from an ejected host neither extend nor reset its ejection."""
    d = detector()
    fail(d, "svc/a", 5, 100.0)
    fail(d, "svc/a", 20, 110.0)
    d.record("svc/a", SUCCESS, 110.0)
    assert d.snapshot()["svc/a"].until == 130.0
    assert d.detected == 1


def test_unknown_hosts_are_ignored_and_departed_hosts_forgotten() -> None:
    """Outcomes of a key not in set_hosts do nothing; removing a host drops its ejection."""
    d = detector()
    fail(d, "svc/zz", 10, 100.0)
    assert d.detected == 0
    fail(d, "svc/a", 5, 100.0)
    d.set_hosts(["svc/b", "svc/c", "svc/d"])
    assert d.hosts == {"svc/b", "svc/c", "svc/d"}
    assert d.snapshot() == {}
    assert not d.is_ejected("svc/a", 100.0)


def test_snapshot_at_now_hides_ended_ejections() -> None:
    """snapshot(now) lists only ejections still in force."""
    d = detector()
    fail(d, "svc/a", 5, 100.0)
    assert set(d.snapshot(129.0)) == {"svc/a"}
    assert d.snapshot(130.0) == {}


EVENTS = st.lists(
    st.tuples(
        st.integers(0, 5),  # host index
        st.sampled_from([200, 500, 502, 503, 504, -1, -2]),  # -1 connect failure, -2 timeout
        st.floats(0.0, 20.0),  # time step
    ),
    max_size=200,
)


def outcome_of(code: int) -> Outcome:
    """Decode a generated outcome."""
    return {-1: CONNECT_FAILURE, -2: TIMEOUT}.get(code) or Outcome.response(code)


@PROPERTY
@given(
    hosts=st.integers(1, 6),
    percent=st.sampled_from([0.0, 10.0, 20.0, 34.0, 50.0, 100.0]),
    five_xx=st.integers(1, 4),
    gateway=st.sampled_from([None, 0, 1, 2, 3]),
    events=EVENTS,
)
def test_never_exceeds_cap_nor_returns_ejected(
    hosts: int,
    percent: float,
    five_xx: int,
    gateway: int | None,
    events: list[tuple[int, int, float]],
) -> None:
    """Ejected hosts never exceed the cap, and filter never returns one of them."""
    keys = tuple(f"svc/h{i}" for i in range(hosts))
    d = detector(
        hosts=keys,
        max_ejection_percent=percent,
        consecutive_5xx_errors=five_xx,
        consecutive_gateway_errors=gateway,
    )
    candidates = tuple(ep(k) for k in keys)
    now = 100.0
    for index, code, step in events:
        now += step
        if step > 15.0:
            d.sweep(now)
        d.record(keys[index % hosts], outcome_of(code), now)
        ejected = {k for k in keys if d.is_ejected(k, now)}
        assert len(ejected) <= max_ejections(hosts, percent)
        assert not ejected & {e.key for e in d.filter(candidates, now)}
        assert d.enforced <= d.detected


@PROPERTY
@given(base=st.floats(1.0, 500.0), counts=st.lists(st.integers(1, 50), min_size=2, max_size=10))
def test_ejection_time_grows_with_count_and_is_capped(base: float, counts: list[int]) -> None:
    """ejection_time is non-decreasing in the count, at least base and at most max(base, 300)."""
    times = [ejection_time(base, n) for n in sorted(counts)]
    assert times == sorted(times)
    assert all(base <= t <= max(base, 300.0) for t in times)


@PROPERTY
@given(rounds=st.integers(1, 15), base=st.sampled_from([10.0, 30.0, 120.0]))
def test_back_to_back_ejections_grow_until_the_cap(rounds: int, base: float) -> None:
    """A host failing at every release is ejected for longer each time, up to the cap."""
    d = detector(base_ejection_time=base)
    now, previous = 100.0, 0.0
    for _ in range(rounds):
        fail(d, "svc/a", 5, now)
        ejection = d.snapshot()["svc/a"]
        length = ejection.until - now
        cap = max(base, 300.0)
        assert length == pytest.approx(min(previous + base, cap))
        previous, now = length, ejection.until
