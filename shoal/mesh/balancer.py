"""Load balancers: choose one endpoint among the candidates of a cluster.

A balancer object belongs to one (service, subset) cluster of a routing snapshot and is carried
over to the next snapshot while its policy is unchanged, so round-robin positions and in-flight
counts survive config changes. It is mutated only from the event-loop thread: no locks.

The caller passes the candidates on every pick (the ready, non-ejected endpoints of the moment)
and the random source; a balancer never reads the clock or the global ``random``.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from shoal.resources.endpoint import Endpoint

POLICIES = ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "WEIGHTED")


class Balancer(Protocol):
    """Picks an endpoint among candidates; told when a request to an endpoint starts and ends."""

    @property
    def policy(self) -> str:
        """The ``loadBalancer.simple`` name this balancer implements."""
        ...

    def pick(self, candidates: Sequence[Endpoint], rng: random.Random) -> Endpoint:
        """One of ``candidates``; raises ``ValueError`` when there are none."""
        ...

    def on_start(self, endpoint: Endpoint) -> None:
        """A request to ``endpoint`` has started."""
        ...

    def on_finish(self, endpoint: Endpoint) -> None:
        """A request to ``endpoint`` has finished (whatever the outcome)."""
        ...


def _require(candidates: Sequence[Endpoint]) -> None:
    if not candidates:
        raise ValueError("no candidate endpoints to pick from")


class _Untracked:
    """In-flight hooks that do nothing, for policies that do not look at load."""

    __slots__ = ()

    def on_start(self, endpoint: Endpoint) -> None:
        """Ignored: this policy does not track in-flight requests."""

    def on_finish(self, endpoint: Endpoint) -> None:
        """Ignored: this policy does not track in-flight requests."""


class RoundRobinBalancer(_Untracked):
    """Cycles through the candidates: pick ``n`` is ``candidates[n % len(candidates)]``.

    Only a counter is kept, so a changing candidate list never breaks it; over ``k * n`` picks
    of an unchanged list of ``n`` each candidate is picked exactly ``k`` times.
    """

    __slots__ = ("_counter",)
    policy = "ROUND_ROBIN"

    def __init__(self) -> None:
        self._counter = 0

    def pick(self, candidates: Sequence[Endpoint], rng: random.Random) -> Endpoint:
        """The next candidate in turn."""
        _require(candidates)
        index = self._counter % len(candidates)
        self._counter += 1
        return candidates[index]


class RandomBalancer(_Untracked):
    """Uniformly random among the candidates."""

    __slots__ = ()
    policy = "RANDOM"

    def pick(self, candidates: Sequence[Endpoint], rng: random.Random) -> Endpoint:
        """A candidate drawn uniformly with ``rng``."""
        _require(candidates)
        return candidates[rng.randrange(len(candidates))]


class LeastRequestBalancer:
    """Envoy's LEAST_REQUEST: the less loaded of two distinct random candidates (P2C).

    In-flight counts are kept per endpoint key; a key leaves the table when its count returns to
    zero, so endpoints that went away cost nothing.
    """

    __slots__ = ("_in_flight",)
    policy = "LEAST_REQUEST"

    def __init__(self) -> None:
        self._in_flight: dict[str, int] = {}

    def in_flight(self, endpoint: Endpoint) -> int:
        """Requests started and not yet finished on ``endpoint`` through this balancer."""
        return self._in_flight.get(endpoint.key, 0)

    def pick(self, candidates: Sequence[Endpoint], rng: random.Random) -> Endpoint:
        """The candidate with fewer in-flight requests of two sampled ones (first on a tie)."""
        _require(candidates)
        n = len(candidates)
        if n == 1:
            return candidates[0]
        i = rng.randrange(n)
        j = rng.randrange(n - 1)
        if j >= i:  # sample two distinct indices without building a list
            j += 1
        first, second = candidates[i], candidates[j]
        loads = self._in_flight
        if loads.get(second.key, 0) < loads.get(first.key, 0):
            return second
        return first

    def on_start(self, endpoint: Endpoint) -> None:
        """Count one more request in flight on ``endpoint``."""
        key = endpoint.key
        self._in_flight[key] = self._in_flight.get(key, 0) + 1

    def on_finish(self, endpoint: Endpoint) -> None:
        """Count one request fewer; an unmatched finish (never started here) is ignored."""
        key = endpoint.key
        count = self._in_flight.get(key, 0)
        if count <= 1:
            self._in_flight.pop(key, None)
        else:
            self._in_flight[key] = count - 1


class WeightedBalancer(_Untracked):
    """Smooth weighted round robin (nginx) by ``Endpoint.weight``.

    Theory of operation: every endpoint carries a running score. On each pick every candidate's
    score grows by its weight, the highest score wins (first in candidate order on a tie) and
    loses the sum of all weights. Scores therefore always sum to zero after a pick, and over any
    ``sum(weights)`` picks from a fresh balancer each endpoint is picked exactly ``weight`` times,
    interleaved rather than in bursts. Weights below one never win while any candidate has a
    positive weight; if none has, all count as one. Scores are kept only for the candidates of
    the latest pick, so endpoints that went away are forgotten.
    """

    __slots__ = ("_scores",)
    policy = "WEIGHTED"

    def __init__(self) -> None:
        self._scores: dict[str, int] = {}

    def pick(self, candidates: Sequence[Endpoint], rng: random.Random) -> Endpoint:
        """The candidate with the highest score after adding every candidate's weight."""
        _require(candidates)
        return self._step(candidates, unit=False)

    def _step(self, candidates: Sequence[Endpoint], *, unit: bool) -> Endpoint:
        previous = self._scores
        scores: dict[str, int] = {}
        total = 0
        best = candidates[0]
        best_score: int | None = None
        for endpoint in candidates:
            weight = 1 if unit else max(endpoint.weight, 0)
            score = previous.get(endpoint.key, 0) + weight
            scores[endpoint.key] = score
            total += weight
            if best_score is None or score > best_score:
                best, best_score = endpoint, score
        if total == 0:  # no positive weight: every candidate counts as one
            return self._step(candidates, unit=True)
        scores[best.key] -= total
        self._scores = scores
        return best


def make_balancer(policy: str) -> Balancer:
    """A fresh balancer for a ``loadBalancer.simple`` name; ``ValueError`` names unknown ones."""
    if policy == "ROUND_ROBIN":
        return RoundRobinBalancer()
    if policy == "RANDOM":
        return RandomBalancer()
    if policy == "LEAST_REQUEST":
        return LeastRequestBalancer()
    if policy == "WEIGHTED":
        return WeightedBalancer()
    raise ValueError(f"unknown load balancer policy {policy!r}; expected one of {POLICIES}")
