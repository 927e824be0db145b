"""Per-revision load as the autoscaler wants it: time-weighted concurrency and arrivals.

Knative's queue-proxy reports the *average* number of requests in flight over each second, not
a snapshot: at 400 req/s of 1 ms requests a snapshot is almost always 0 while the average is
0.4. :class:`LoadMeter` integrates in-flight counts over time (a request held for activation
counts as in flight, as in Knative's activator) and hands out one window per :meth:`read`.
The clock is an argument: pure, testable with literal times.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(slots=True)
class _Gauge:
    in_flight: float = 0.0
    since: float = 0.0  # when in_flight last changed, or the window began
    area: float = 0.0  # integral of in_flight over the window so far
    arrivals: int = 0


class LoadMeter:
    """In-flight requests and arrivals per key (``service/revision``), read window by window."""

    def __init__(self, now: float) -> None:
        self._gauges: dict[str, _Gauge] = {}
        self._window_start = now

    def _gauge(self, key: str, now: float) -> _Gauge:
        gauge = self._gauges.get(key)
        if gauge is None:
            gauge = self._gauges[key] = _Gauge(since=max(now, self._window_start))
        return gauge

    def change(self, key: str, delta: float, now: float, *, arrival: bool = False) -> None:
        """``delta`` more (or fewer) requests in flight for ``key`` from ``now`` on; an
        ``arrival`` counts one request arriving."""
        gauge = self._gauge(key, now)
        gauge.area += gauge.in_flight * max(0.0, now - gauge.since)
        gauge.since = now
        gauge.in_flight = max(0.0, gauge.in_flight + delta)
        if arrival:
            gauge.arrivals += 1

    def in_flight(self, key: str) -> float:
        """Requests in flight for ``key`` right now."""
        gauge = self._gauges.get(key)
        return gauge.in_flight if gauge is not None else 0.0

    def read(self, now: float) -> dict[str, tuple[float, int]]:
        """Per key, the average in flight and the arrivals since the previous read; starts the
        next window. Keys idle for a whole window are dropped from the next ones."""
        span = now - self._window_start
        out: dict[str, tuple[float, int]] = {}
        for key, gauge in list(self._gauges.items()):
            area = gauge.area + gauge.in_flight * max(0.0, now - gauge.since)
            average = area / span if span > 0 else gauge.in_flight
            if average > 0 or gauge.arrivals or gauge.in_flight:
                out[key] = (average, gauge.arrivals)
            if gauge.in_flight == 0 and not gauge.arrivals and area == 0:
                del self._gauges[key]
            else:
                gauge.area, gauge.since, gauge.arrivals = 0.0, now, 0
        self._window_start = now
        return out


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q`` quantile (0 < q <= 1, nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]
