"""Weighted split of a route's destinations."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.mesh.split import pick_weighted

PROPERTY = settings(database=None, derandomize=True, deadline=None, max_examples=300)


@PROPERTY
@given(
    weights=st.lists(st.integers(0, 100), min_size=1, max_size=10).filter(lambda ws: sum(ws) > 0),
    seed=st.integers(0, 2**32),
)
def test_never_picks_zero_weight(weights: list[int], seed: int) -> None:
    """The chosen index is in range and its weight is positive."""
    rng = random.Random(seed)
    for _ in range(20):
        index = pick_weighted(weights, rng)
        assert 0 <= index < len(weights)
        assert weights[index] > 0


@pytest.mark.parametrize("weights", [[90, 10], [70, 20, 10], [1, 1, 1, 1], [50, 0, 50]])
def test_draws_follow_ratios(weights: list[int]) -> None:
    """10,000 seeded draws land within two points of each weight's share."""
    rng = random.Random(20240601)
    draws = 10_000
    counts = Counter(pick_weighted(weights, rng) for _ in range(draws))
    total = sum(weights)
    for index, weight in enumerate(weights):
        share = 100 * counts[index] / draws
        assert abs(share - 100 * weight / total) < 2.0, (index, share)


def test_single_positive_weight_always_chosen() -> None:
    """Among zeros, the one positive weight takes every draw."""
    rng = random.Random(1)
    assert {pick_weighted([0, 0, 7, 0], rng) for _ in range(100)} == {2}


def test_same_seed_same_sequence() -> None:
    """The rng is the only source of randomness: equal seeds give equal picks."""
    rng_a, rng_b = random.Random(11), random.Random(11)
    assert [pick_weighted([3, 5, 2], rng_a) for _ in range(50)] == [
        pick_weighted([3, 5, 2], rng_b) for _ in range(50)
    ]


@pytest.mark.parametrize(
    ("weights", "message"),
    [([], "no positive weight"), ([0, 0], "no positive weight"), ([5, -1], "negative weight")],
)
def test_invalid_weights_raise(weights: list[int], message: str) -> None:
    """Empty, all-zero and negative weights are ValueErrors, not a silent pick."""
    with pytest.raises(ValueError, match=message):
        pick_weighted(weights, random.Random(0))
