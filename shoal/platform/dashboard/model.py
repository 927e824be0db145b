"""What the dashboard and ``shoal top`` show, computed from what the store holds (pure).

Each poll reads a :class:`Reading` (the status ``shoal status`` shows — services, instances,
nodes, the proxies' reports, the autoscaler's decisions — and the VirtualServices and
DestinationRules that set traffic shares); a :class:`Tracker` turns successive readings into
an overview: the topology (services → revisions with their traffic share → instances on nodes,
each with a health), per service requests/s, error % and p50/p99 over the last interval with
a short history, certificate expiries, and events found by comparing a reading with the one
before (instances started, ready, gone or failing; ejections and returns; scale decisions;
traffic shifts, i.e. rollouts and rollbacks; certificate rotations), merged with the events
operators' tools record (drills: :mod:`shoal.store.events`).

Rates come from the proxies' counters (``outcomes`` and ``latency`` per service/revision in
every gateway worker's and router's report: each routed request counted once, by the proxy that
forwarded it); a counter that went down (a process restarted) counts from zero. p50/p99 are
the upper bounds of the latency buckets the quantile falls in (5 ms, 10 ms, 25 ms…).
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from shoal.mesh.stats import LATENCY_BUCKETS, quantile
from shoal.platform.control.client import Status
from shoal.resources.endpoint import Endpoint
from shoal.resources.model import DestinationRule, VirtualService
from shoal.resources.weights import find_rule, find_virtual_service, traffic_shares

HISTORY = 60  # points kept per series (one per poll)
EVENTS = 50  # events kept, newest first


@dataclass(frozen=True, slots=True)
class Reading:
    """What one poll read from the store."""

    status: Status
    virtual_services: tuple[VirtualService, ...] = ()
    rules: tuple[DestinationRule, ...] = ()
    events: tuple[dict[str, Any], ...] = ()  # recorded by operators' tools (drills), newest first


@dataclass(slots=True)
class _Totals:
    """One service's counters summed over every proxy's report."""

    requests: int = 0
    errors: int = 0
    buckets: list[int] = field(default_factory=lambda: [0] * len(LATENCY_BUCKETS))


def _totals(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, _Totals]:
    totals: dict[str, _Totals] = {}
    for report in reports.values():
        for revision, (answered, failed) in (report.get("outcomes") or {}).items():
            t = totals.setdefault(revision.partition("/")[0], _Totals())
            t.requests += answered
            t.errors += failed
        for revision, counts in (report.get("latency") or {}).items():
            t = totals.setdefault(revision.partition("/")[0], _Totals())
            t.buckets = [a + b for a, b in zip(t.buckets, counts, strict=False)]
    return totals


def _ejected(reports: Mapping[str, Mapping[str, Any]]) -> dict[str, str]:
    """Instance key → why, for every instance some proxy holds out."""
    found: dict[str, str] = {}
    for report in reports.values():
        for entries in (report.get("ejections") or {}).values():
            for entry in entries:
                found.setdefault(entry["instance"], entry.get("reason") or "ejected")
    return found


def _health(endpoint: Endpoint, ejected: Mapping[str, str]) -> str:
    """``ok``, ``starting``, ``draining``, ``ejected`` or ``failing``: what the colour says."""
    if endpoint.key in ejected:
        return "ejected"
    if endpoint.reason is not None and endpoint.state != "ready":
        return "failing"
    if endpoint.state == "ready":
        return "ok"
    return "draining" if endpoint.state == "draining" else "starting"


def _certificates(reports: Mapping[str, Mapping[str, Any]], now: float) -> list[dict[str, Any]]:
    shown = []
    for component, report in sorted(reports.items()):
        for leaf in (report.get("certs") or {}).get("leaves") or ():
            expires = datetime.fromisoformat(leaf["not_after"]).timestamp()
            shown.append(
                {
                    "component": component,
                    "identity": leaf["identity"],
                    "serial": leaf.get("serial"),
                    "not_after": leaf["not_after"],
                    "seconds_left": round(expires - now),
                }
            )
    return shown


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 1)


class Tracker:
    """Turns successive readings into overviews, keeping what rates, histories and events
    need from the reading before."""

    def __init__(self, history: int = HISTORY, events: int = EVENTS) -> None:
        self._history = history
        self._before: Reading | None = None
        self._split: dict[str, dict[str, float] | None] = {}  # the last reading's traffic split
        self._totals: dict[str, _Totals] = {}
        self._at: float | None = None
        self._series: dict[str, dict[str, collections.deque[float | None]]] = {}
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=events)

    def update(self, reading: Reading, now: float) -> dict[str, Any]:
        """The overview at ``now`` (Unix time), given this poll's ``reading``."""
        st = reading.status
        totals = _totals(st.reports)
        ejected = _ejected(st.reports)
        names = sorted({s.name for s in st.services})
        ready = {e.revision_key for e in st.instances if e.state == "ready"}
        split: dict[str, dict[str, float] | None] = {}  # by the services a VirtualService routes
        every: dict[str, dict[str, float] | None] = {}
        for name in names:
            vs = find_virtual_service(name, reading.virtual_services)
            mine = [s for s in st.services if s.name == name]
            every[name] = traffic_shares(name, vs, find_rule(name, reading.rules), mine, ready)
            if vs is not None:  # (without one, all goes to the latest ready revision)
                split[name] = every[name]
        if self._before is not None:
            self._note_changes(self._before, reading, ejected, now)
            for name, shares in split.items():
                was = self._split.get(name, shares)
                if shares is not None and shares != was:
                    text = f"{name} traffic: {_split(shares)} (was {_split(was)})"
                    self._events.appendleft({"time": now, "kind": "traffic", "text": text})
        self._split = split
        services = []
        for name in names:
            mine = [s for s in st.services if s.name == name]
            shares = every[name]
            rates = self._rates(name, totals.get(name, _Totals()), now)
            services.append(
                {
                    "name": name,
                    **rates,
                    "history": {k: list(v) for k, v in self._series[name].items()},
                    "revisions": [
                        {
                            "revision": s.revision,
                            "traffic": None if shares is None else round(shares.get(s.key, 0), 1),
                            "desired": st.autoscaler.get(s.key, {}).get("desired"),
                            "min": s.scale.min,
                            "max": s.scale.max,
                            "tags": list(s.tags),
                            "instances": [
                                {
                                    "id": e.id,
                                    "node": e.node,
                                    "state": e.state,
                                    "health": _health(e, ejected),
                                    "why": ejected.get(e.key) or e.reason,
                                    "restarts": e.restarts,
                                }
                                for e in sorted(st.instances, key=lambda e: e.id)
                                if e.revision_key == s.key
                            ],
                        }
                        for s in sorted(mine, key=lambda s: s.revision)
                    ],
                }
            )
        self._before, self._totals, self._at = reading, totals, now
        return {
            "time": now,
            "revision": st.revision,
            "nodes": sorted(st.nodes),
            "proxies": sorted(st.reports),
            "services": services,
            "certificates": _certificates(st.reports, now),
            "events": sorted(
                [*self._events, *reading.events], key=lambda e: e["time"], reverse=True
            )[: self._events.maxlen],
        }

    def _rates(self, name: str, now_totals: _Totals, now: float) -> dict[str, float | None]:
        """requests/s, error % and p50/p99 (ms) since the last reading; appended to the
        service's history."""
        before = self._totals.get(name, _Totals())  # (no counter yet: none so far)
        rates: dict[str, float | None] = {"rps": None, "error_pct": None, "p50_ms": None}
        rates["p99_ms"] = None
        if self._at is not None and now > self._at:
            requests = now_totals.requests - before.requests
            errors = now_totals.errors - before.errors
            buckets = [a - b for a, b in zip(now_totals.buckets, before.buckets, strict=False)]
            if requests < 0 or errors < 0 or min(buckets, default=0) < 0:  # a process restarted
                requests, errors, buckets = (
                    now_totals.requests,
                    now_totals.errors,
                    now_totals.buckets,
                )
            rates["rps"] = round(requests / (now - self._at), 2)
            rates["error_pct"] = round(100 * errors / requests, 2) if requests else 0.0
            rates["p50_ms"] = _ms(quantile(buckets, 0.5))
            rates["p99_ms"] = _ms(quantile(buckets, 0.99))
        series = self._series.setdefault(
            name, {k: collections.deque(maxlen=self._history) for k in rates}
        )
        for k, v in rates.items():
            series[k].append(v)
        return rates

    def _note_changes(
        self, before: Reading, now_reading: Reading, ejected: Mapping[str, str], now: float
    ) -> None:
        """Record the events between two readings."""
        old, new = before.status, now_reading.status
        events: list[tuple[str, str]] = []
        was = {e.key: e for e in old.instances}
        for e in new.instances:
            prior = was.pop(e.key, None)
            where = f"{e.revision_key} instance {e.id} on {e.node}"
            if prior is None:
                events.append(("instance", f"{where} started"))
            elif prior.state != e.state:
                if e.state == "ready":
                    events.append(("instance", f"{where} ready"))
                elif e.reason is not None:
                    events.append(("failure", f"{where} {e.state}: {e.reason}"))
                else:
                    events.append(("instance", f"{where} {e.state}"))
        events += [("instance", f"{e.revision_key} instance {e.id} gone") for e in was.values()]
        held_out = _ejected(old.reports)
        events += [
            ("ejection", f"{key} ejected ({why})")
            for key, why in sorted(ejected.items())
            if key not in held_out
        ]
        events += [
            ("ejection", f"{key} back in rotation")
            for key in sorted(held_out.keys() - ejected.keys())
        ]
        for key, decision in sorted(new.autoscaler.items()):
            desired, prior_desired = (
                decision.get("desired"),
                old.autoscaler.get(key, {}).get("desired"),
            )
            if prior_desired is not None and desired != prior_desired:
                events.append(("scale", f"{key} scaled {prior_desired} → {desired}"))
        events += _rotations(old.reports, new.reports)
        for kind, text in events:
            self._events.appendleft({"time": now, "kind": kind, "text": text})


def _split(shares: Mapping[str, float] | None) -> str:
    if not shares:
        return "unsplit"
    return ", ".join(f"{key.partition('/')[2]} {share:g}%" for key, share in sorted(shares.items()))


def _rotations(
    old: Mapping[str, Mapping[str, Any]], new: Mapping[str, Mapping[str, Any]]
) -> list[tuple[str, str]]:
    def serials(reports: Iterable[tuple[str, Mapping[str, Any]]]) -> dict[tuple[str, str], str]:
        return {
            (component, leaf["identity"]): leaf.get("serial", "")
            for component, report in reports
            for leaf in (report.get("certs") or {}).get("leaves") or ()
        }

    before, after = serials(old.items()), serials(new.items())
    return [
        ("certificate", f"{component}: new certificate for {identity}")
        for (component, identity), serial in sorted(after.items())
        if (component, identity) in before and before[component, identity] != serial
    ]
