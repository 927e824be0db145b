"""Weighted traffic split: which of a route's destinations takes this request.

Used for a VirtualService rule's ``route[]`` weights (``v1=90 v2=10``). The random source is an
argument, so a seeded ``random.Random`` makes a run reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Sequence


def pick_weighted(weights: Sequence[int], rng: random.Random) -> int:
    """An index into ``weights``, chosen with probability ``weight / sum(weights)``.

    A zero weight is never chosen. Raises ``ValueError`` when ``weights`` is empty, holds a
    negative weight, or sums to zero.
    """
    total = 0
    for weight in weights:
        if weight < 0:
            raise ValueError(f"negative weight {weight} in {list(weights)}")
        total += weight
    if total == 0:
        raise ValueError(f"no positive weight to pick from in {list(weights)}")
    point = rng.randrange(total)
    for index, weight in enumerate(weights):
        if point < weight:
            return index
        point -= weight
    raise RuntimeError("unreachable: point is below the sum of the weights")
