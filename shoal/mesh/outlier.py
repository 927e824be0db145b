"""Passive outlier detection (Istio's ``outlierDetection``, Envoy's consecutive-error detectors).

Every proxy (gateway, node router) keeps one :class:`OutlierDetector` per upstream cluster and
feeds it the :class:`~shoal.mesh.outcome.Outcome` of every attempt. Ejections are local to that
proxy: nothing is written to the registry. The detector never reads the clock; the proxy passes
``now`` (monotonic seconds) and calls :meth:`OutlierDetector.sweep` at
:meth:`OutlierDetector.next_deadline`.

Theory of operation. Each known host has two counters:

- ``errors`` — consecutive 5xx responses *and* local failures (connect failure 503, timeout 504,
  reset 502, as Envoy maps them); compared with ``consecutive_5xx_errors`` (0 disables it);
- ``gateway_errors`` — consecutive 502/503/504 and local failures; compared with
  ``consecutive_gateway_errors`` (None or 0 disables it). Any other 5xx resets it (Envoy).

A response below 500 resets both. When a counter reaches its threshold the host is *detected*
as an outlier (both counters restart) and, if the ejection cap allows, *ejected* — "enforced".
A refused ejection is still counted as detected, so the two counters give a dry-run report.

- The ejection cap: at most :func:`max_ejections` hosts of the cluster are ejected at once,
  ``floor(hosts * max_ejection_percent / 100)``, but at least one when the percentage is above
  zero and the cluster has two hosts or more. Envoy ejects one host even at 0 %; Shoal does not:
  0 means outlier detection never removes a host. A lone host is never ejected unless the
  percentage is 100 (ejecting it would only turn its errors into ``no_healthy_upstream``).
- The ejection time is ``base_ejection_time * multiplier`` capped at
  ``max(base_ejection_time, 300 s)`` (:func:`ejection_time`). The multiplier goes up by one per
  enforced ejection (never past the point where the cap is reached) and down by one per full
  ``interval`` the host spends back in service — Envoy's decay, computed from the time of
  release instead of by a timer.
- An ejection ends exactly at its ``until``. (Envoy releases hosts on its ``interval`` timer, so
  its ejections last up to one interval longer.) :meth:`~OutlierDetector.is_ejected` and
  :meth:`~OutlierDetector.filter` compare with ``now``; :meth:`~OutlierDetector.sweep` forgets
  ended ejections and reports them.
- Outcomes from an ejected host (requests that were in flight) are ignored.
- ``min_health_percent`` (Envoy's panic threshold, Istio default 0 = off): when fewer than that
  percentage of the candidates given to :meth:`~OutlierDetector.filter` are in service, it
  returns all of them, ejected ones included.

The detector knows the cluster's hosts only through :meth:`~OutlierDetector.set_hosts` (the
percentage needs the count); outcomes of unknown hosts — a late answer from an instance that
has left — are ignored.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

from shoal.mesh.outcome import Outcome
from shoal.resources.endpoint import Endpoint
from shoal.resources.model import OutlierDetection

MAX_EJECTION_TIME = 300.0  # Envoy's max_ejection_time default; Istio does not expose it

Reason = Literal["consecutive_5xx", "consecutive_gateway_errors"]


def max_ejections(hosts: int, percent: float) -> int:
    """How many of ``hosts`` may be ejected at once under ``max_ejection_percent``."""
    if hosts <= 0 or percent <= 0:
        return 0
    allowed = math.floor(hosts * percent / 100.0 + 1e-9)  # 1e-9 absorbs float rounding
    if hosts >= 2:
        allowed = max(allowed, 1)
    return min(allowed, hosts)


def ejection_time(base: float, count: int) -> float:
    """Seconds the ``count``-th consecutive ejection lasts: ``base * count``, capped."""
    return min(base * count, max(base, MAX_EJECTION_TIME))


def _multiplier_cap(base: float) -> int:
    """The multiplier at which :func:`ejection_time` reaches its cap; it never grows past it."""
    return max(1, math.ceil(max(base, MAX_EJECTION_TIME) / base - 1e-9))


@dataclass(frozen=True, slots=True, kw_only=True)
class Ejection:
    """A detection of ``key`` at ``at``: ejected until ``until`` if ``enforced``.

    ``count`` is the ejection multiplier (the host's recent ejections, this one included). For a
    detection the cap refused, ``until`` and ``count`` say what the ejection would have been.
    """

    key: str
    reason: Reason
    at: float
    until: float
    count: int
    enforced: bool


class _Host:
    """Per-host counters; ``released_at`` is when its last ejection ended (None: never)."""

    __slots__ = ("errors", "gateway_errors", "multiplier", "released_at")

    def __init__(self) -> None:
        self.errors = 0
        self.gateway_errors = 0
        self.multiplier = 0
        self.released_at: float | None = None


class OutlierDetector:
    """Consecutive-error outlier detection for the hosts of one cluster (see module doc).

    ``policy`` may be replaced by assignment when the DestinationRule changes; counters and
    ejections carry over.
    """

    __slots__ = ("_detected", "_ejected", "_enforced", "_hosts", "policy")

    def __init__(self, policy: OutlierDetection, hosts: Iterable[str] = ()) -> None:
        self.policy = policy
        self._hosts: dict[str, _Host] = {key: _Host() for key in hosts}
        self._ejected: dict[str, Ejection] = {}  # enforced, not yet swept (may have ended)
        self._detected = 0
        self._enforced = 0

    @property
    def detected(self) -> int:
        """Outliers detected so far, enforced or not."""
        return self._detected

    @property
    def enforced(self) -> int:
        """Ejections actually carried out so far."""
        return self._enforced

    @property
    def hosts(self) -> frozenset[str]:
        """The keys of the cluster's hosts as last given to :meth:`set_hosts`."""
        return frozenset(self._hosts)

    def set_hosts(self, keys: Iterable[str]) -> None:
        """Learn the cluster's current hosts; hosts that left are forgotten, ejections included."""
        wanted = set(keys)
        for key in list(self._hosts):
            if key not in wanted:
                del self._hosts[key]
                self._ejected.pop(key, None)
        for key in wanted:
            if key not in self._hosts:
                self._hosts[key] = _Host()

    def is_ejected(self, key: str, now: float) -> bool:
        """True while ``key`` is ejected at ``now``."""
        ejection = self._ejected.get(key)
        return ejection is not None and now < ejection.until

    def filter(self, endpoints: Sequence[Endpoint], now: float) -> tuple[Endpoint, ...]:
        """The ``endpoints`` not ejected at ``now`` (all of them in panic, see module doc)."""
        ejected = self._ejected
        if not ejected:  # the hot path: nothing ejected, nothing to look up
            return endpoints if isinstance(endpoints, tuple) else tuple(endpoints)
        kept = tuple(e for e in endpoints if (j := ejected.get(e.key)) is None or now >= j.until)
        if len(kept) == len(endpoints):
            return kept
        panic = self.policy.min_health_percent
        if panic > 0 and len(kept) * 100.0 < panic * len(endpoints):
            return tuple(endpoints)
        return kept

    def record(self, key: str, outcome: Outcome, now: float) -> Ejection | None:
        """Count the outcome of one attempt to ``key``; the detection it causes, if any."""
        host = self._hosts.get(key)
        if host is None:
            return None
        current = self._ejected.get(key)
        if current is not None:
            if now < current.until:
                return None
            self._release(key, current)
        if not outcome.is_error:
            host.errors = 0
            host.gateway_errors = 0
            return None
        policy = self.policy
        reason: Reason | None = None
        if outcome.is_gateway_error:
            host.gateway_errors += 1
            limit = policy.consecutive_gateway_errors
            if limit and host.gateway_errors >= limit:
                reason = "consecutive_gateway_errors"
        else:
            host.gateway_errors = 0
        host.errors += 1
        limit_5xx = policy.consecutive_5xx_errors
        if reason is None and limit_5xx and host.errors >= limit_5xx:
            reason = "consecutive_5xx"
        if reason is None:
            return None
        return self._eject(key, host, reason, now)

    def _eject(self, key: str, host: _Host, reason: Reason, now: float) -> Ejection:
        host.errors = 0
        host.gateway_errors = 0
        self._detected += 1
        base = self.policy.base_ejection_time
        count = min(
            self._decayed(host.multiplier, host.released_at, now) + 1, _multiplier_cap(base)
        )
        active = sum(1 for e in self._ejected.values() if now < e.until)
        enforced = active + 1 <= max_ejections(len(self._hosts), self.policy.max_ejection_percent)
        ejection = Ejection(
            key=key,
            reason=reason,
            at=now,
            until=now + ejection_time(base, count),
            count=count,
            enforced=enforced,
        )
        if enforced:
            self._enforced += 1
            host.multiplier = count
            host.released_at = None
            self._ejected[key] = ejection
        return ejection

    def _decayed(self, multiplier: int, released_at: float | None, now: float) -> int:
        """``multiplier`` less one per full interval spent in service since ``released_at``."""
        if released_at is None or multiplier == 0:
            return multiplier
        intervals = math.floor(max(0.0, now - released_at) / self.policy.interval)
        return max(0, multiplier - intervals)

    def _release(self, key: str, ejection: Ejection) -> None:
        del self._ejected[key]
        host = self._hosts.get(key)
        if host is not None:
            host.released_at = ejection.until

    def sweep(self, now: float) -> list[str]:
        """End the ejections due at ``now``; the keys returned to service, earliest first."""
        due = sorted(
            (e for e in self._ejected.values() if e.until <= now), key=lambda e: (e.until, e.key)
        )
        for ejection in due:
            self._release(ejection.key, ejection)
        return [e.key for e in due]

    def next_deadline(self) -> float | None:
        """When the earliest ejection ends (call :meth:`sweep` then); None when none is active."""
        if not self._ejected:
            return None
        return min(e.until for e in self._ejected.values())

    def multiplier(self, key: str, now: float) -> int:
        """The ejection multiplier of ``key`` at ``now`` (0 for unknown hosts)."""
        host = self._hosts.get(key)
        if host is None:
            return 0
        ejection = self._ejected.get(key)
        if ejection is None:
            return self._decayed(host.multiplier, host.released_at, now)
        if now < ejection.until:
            return host.multiplier
        return self._decayed(host.multiplier, ejection.until, now)

    def snapshot(self, now: float | None = None) -> dict[str, Ejection]:
        """Current ejections by host key, for ``shoal status`` (only those in force at ``now``)."""
        if now is None:
            return dict(self._ejected)
        return {k: e for k, e in self._ejected.items() if now < e.until}
