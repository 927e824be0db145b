"""The counters one proxy process keeps and publishes: requests, retries, refusals by cause,
in-flight and served requests by service, per-revision outcomes and latency, and every final
answer by service, revision, route, status class and cause.

Rollouts judge a revision on its outcomes and its latency histogram (:func:`quantile`);
``shoal status``, drills and ``/metrics`` read the rest.
"""

from __future__ import annotations

import bisect
import math
from dataclasses import dataclass, field

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, math.inf)
"""Upper bounds (seconds) of the per-revision latency histogram: Prometheus' defaults."""


_STATUS_CLASSES = ("0xx", "1xx", "2xx", "3xx", "4xx", "5xx")


def quantile(buckets: list[int], q: float) -> float | None:
    """The upper bound of the bucket holding the ``q`` quantile of a LATENCY_BUCKETS histogram
    (counts per bucket), or None when it is empty."""
    total = sum(buckets)
    if total == 0:
        return None
    seen = 0
    for bound, count in zip(LATENCY_BUCKETS, buckets, strict=True):
        seen += count
        if seen >= q * total:
            return bound
    return LATENCY_BUCKETS[-1]


@dataclass(slots=True)
class Stats:
    """Counters of one proxy process, published for ``shoal status``, drills and rollouts."""

    requests: int = 0
    retries: int = 0
    retried: dict[str, int] = field(default_factory=dict)  # retries by service
    refusals: dict[str, int] = field(default_factory=dict)  # by x-shoal-cause
    # requests refused by authorization, by "service policy" (policy empty: no ALLOW matched)
    denied: dict[str, int] = field(default_factory=dict)
    in_flight: dict[str, int] = field(default_factory=dict)  # by service
    served: dict[str, int] = field(default_factory=dict)  # requests by service, since start
    # a router's: requests that came in for each of its instances (by key), since start
    inbound: dict[str, int] = field(default_factory=dict)
    # by service/revision, since start: [requests answered, of which errors (5xx or none)]
    outcomes: dict[str, list[int]] = field(default_factory=dict)
    # by service/revision, since start: answers per LATENCY_BUCKETS bound (request to head)
    latency: dict[str, list[int]] = field(default_factory=dict)
    latency_sum: dict[str, float] = field(default_factory=dict)  # seconds, by service/revision
    # final answers, since start, by (service, revision, route, status class, x-shoal-cause)
    responses: dict[tuple[str, str, str, str, str], int] = field(default_factory=dict)

    def responded(self, service: str, revision: str, route: str, status: int, cause: str) -> None:
        """Count a request's final answer: ``status`` (its class: ``2xx``…) and, when Shoal
        made it, its ``cause``; empty names where the request got no further."""
        key = (service, revision, route, _STATUS_CLASSES[min(status // 100, 5)], cause)
        self.responses[key] = self.responses.get(key, 0) + 1

    def retry(self, service: str) -> None:
        """Count a retry of a request to ``service``."""
        self.retries += 1
        self.retried[service] = self.retried.get(service, 0) + 1

    def deny(self, service: str, policy: str | None) -> None:
        """Count a request to ``service`` an AuthorizationPolicy refused (``policy``: the DENY
        policy that matched; None: no ALLOW policy matched)."""
        self.refusals["denied"] = self.refusals.get("denied", 0) + 1
        key = f"{service} {policy or ''}"
        self.denied[key] = self.denied.get(key, 0) + 1

    def answered(self, revision: str, error: bool, seconds: float) -> None:
        """Count one request's final answer (``error``: 5xx or none) and its latency."""
        outcome = self.outcomes.setdefault(revision, [0, 0])
        outcome[0] += 1
        outcome[1] += error
        buckets = self.latency.setdefault(revision, [0] * len(LATENCY_BUCKETS))
        buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum[revision] = self.latency_sum.get(revision, 0.0) + seconds
