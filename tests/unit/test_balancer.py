"""Load balancers: picks stay among the candidates and follow each policy's rule."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.mesh.balancer import (
    POLICIES,
    LeastRequestBalancer,
    RandomBalancer,
    RoundRobinBalancer,
    WeightedBalancer,
    make_balancer,
)
from shoal.resources.endpoint import Endpoint

PROPERTY = settings(database=None, derandomize=True, deadline=None, max_examples=200)


def ep(n: int, *, weight: int = 1) -> Endpoint:
    """An endpoint of service ``svc`` with id ``e<n>``."""
    return Endpoint(
        id=f"e{n}",
        service="svc",
        revision="v1",
        node="node-1",
        address="127.0.0.1",
        port=10000 + n,
        weight=weight,
        state="ready",
    )


@PROPERTY
@given(
    policy=st.sampled_from(POLICIES),
    rounds=st.lists(
        st.lists(st.integers(0, 9), min_size=1, max_size=6, unique=True), min_size=1, max_size=30
    ),
    weights=st.lists(st.integers(0, 5), min_size=10, max_size=10),
    seed=st.integers(0, 2**32),
)
def test_never_picks_outside_candidates(
    policy: str, rounds: list[list[int]], weights: list[int], seed: int
) -> None:
    """Whatever the policy and however the candidate list changes, the pick is a candidate."""
    balancer = make_balancer(policy)
    rng = random.Random(seed)
    for ids in rounds:
        candidates = [ep(i, weight=weights[i]) for i in ids]
        picked = balancer.pick(candidates, rng)
        assert picked in candidates
        balancer.on_start(picked)


@pytest.mark.parametrize("policy", POLICIES)
def test_empty_candidates_raise(policy: str) -> None:
    """Every policy refuses to pick from an empty list with ValueError."""
    with pytest.raises(ValueError, match="no candidate"):
        make_balancer(policy).pick([], random.Random(1))


def test_make_balancer_policies() -> None:
    """The factory maps each loadBalancer.simple name to its balancer and rejects others."""
    assert isinstance(make_balancer("ROUND_ROBIN"), RoundRobinBalancer)
    assert isinstance(make_balancer("RANDOM"), RandomBalancer)
    assert isinstance(make_balancer("LEAST_REQUEST"), LeastRequestBalancer)
    assert isinstance(make_balancer("WEIGHTED"), WeightedBalancer)
    for policy in POLICIES:
        assert make_balancer(policy).policy == policy
    with pytest.raises(ValueError, match="MAGLEV"):
        make_balancer("MAGLEV")


@PROPERTY
@given(n=st.integers(1, 12), k=st.integers(1, 8))
def test_round_robin_visits_each_equally(n: int, k: int) -> None:
    """Over k*n picks of n candidates, round robin picks each exactly k times."""
    balancer = RoundRobinBalancer()
    candidates = [ep(i) for i in range(n)]
    counts = Counter(balancer.pick(candidates, random.Random(0)).key for _ in range(k * n))
    assert counts == {c.key: k for c in candidates}


def test_round_robin_counter_survives_list_change() -> None:
    """Round robin keeps one counter, so a shorter list continues at counter % len."""
    balancer = RoundRobinBalancer()
    rng = random.Random(0)
    a, b, c = ep(0), ep(1), ep(2)
    assert [balancer.pick([a, b, c], rng) for _ in range(4)] == [a, b, c, a]
    assert [balancer.pick([a, b], rng) for _ in range(3)] == [a, b, a]  # counter 4, 5, 6


def test_random_is_reproducible_and_covers_all() -> None:
    """RANDOM draws only from the given rng: same seed, same sequence; every candidate appears."""
    candidates = [ep(i) for i in range(4)]
    rng1, rng2 = random.Random(42), random.Random(42)
    seq1 = [RandomBalancer().pick(candidates, rng1) for _ in range(200)]
    seq2 = [RandomBalancer().pick(candidates, rng2) for _ in range(200)]
    assert seq1 == seq2
    assert set(seq1) == set(candidates)


def test_least_request_prefers_less_loaded_of_two() -> None:
    """With two candidates P2C compares both, so the loaded one is never picked."""
    balancer = LeastRequestBalancer()
    busy, idle = ep(0), ep(1)
    balancer.on_start(busy)
    rng = random.Random(3)
    assert all(balancer.pick([busy, idle], rng) == idle for _ in range(100))


@PROPERTY
@given(
    loads=st.lists(st.integers(0, 5), min_size=2, max_size=8),
    seed=st.integers(0, 2**32),
)
def test_least_request_never_picks_unique_most_loaded(loads: list[int], seed: int) -> None:
    """P2C compares two distinct candidates, so a strictly most-loaded endpoint never wins."""
    balancer = LeastRequestBalancer()
    candidates = [ep(i) for i in range(len(loads))]
    for endpoint, load in zip(candidates, loads, strict=True):
        for _ in range(load):
            balancer.on_start(endpoint)
    top = max(loads)
    rng = random.Random(seed)
    for _ in range(50):
        picked = balancer.pick(candidates, rng)
        assert balancer.in_flight(picked) <= top
        if loads.count(top) == 1:
            assert balancer.in_flight(picked) < top


def test_least_request_single_candidate_and_counts() -> None:
    """One candidate is returned as is; starts and finishes balance out and never go negative."""
    balancer = LeastRequestBalancer()
    only = ep(0)
    assert balancer.pick([only], random.Random(0)) == only
    balancer.on_start(only)
    balancer.on_start(only)
    assert balancer.in_flight(only) == 2
    balancer.on_finish(only)
    balancer.on_finish(only)
    balancer.on_finish(only)  # unmatched finish is ignored
    assert balancer.in_flight(only) == 0


def test_least_request_spreads_equal_load() -> None:
    """With equal load every candidate still gets picked (ties do not pin one endpoint)."""
    balancer = LeastRequestBalancer()
    candidates = [ep(i) for i in range(3)]
    rng = random.Random(9)
    assert {balancer.pick(candidates, rng) for _ in range(100)} == set(candidates)


@PROPERTY
@given(weights=st.lists(st.integers(0, 10), min_size=1, max_size=8))
def test_weighted_full_cycle_is_exact(weights: list[int]) -> None:
    """From a fresh balancer, sum(weights) picks pick each endpoint exactly weight times."""
    balancer = WeightedBalancer()
    candidates = [ep(i, weight=w) for i, w in enumerate(weights)]
    total = sum(weights)
    cycle = total if total > 0 else len(weights)  # all zero: every endpoint counts as one
    for _ in range(2):  # the second cycle repeats the first
        counts = Counter(balancer.pick(candidates, random.Random(0)).key for _ in range(cycle))
        expected = {c.key: (c.weight if total > 0 else 1) for c in candidates}
        assert counts == {k: v for k, v in expected.items() if v > 0}


def test_weighted_is_smooth() -> None:
    """Weights 5/1/1 interleave as nginx's smooth WRR does: a a b a c a a."""
    a, b, c = ep(0, weight=5), ep(1, weight=1), ep(2, weight=1)
    balancer = WeightedBalancer()
    picks = [balancer.pick([a, b, c], random.Random(0)) for _ in range(7)]
    assert picks == [a, a, b, a, c, a, a]


def test_weighted_forgets_removed_endpoints() -> None:
    """An endpoint that left the candidates is dropped; the rest keep cycling by weight."""
    a, b, c = ep(0, weight=2), ep(1, weight=1), ep(2, weight=1)
    balancer = WeightedBalancer()
    rng = random.Random(0)
    for _ in range(3):
        balancer.pick([a, b, c], rng)
    picks = Counter(balancer.pick([a, b], rng) for _ in range(30))
    assert abs(picks[a] - 20) <= 2
    assert c not in picks
