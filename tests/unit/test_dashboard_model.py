"""The dashboard's overview from successive readings: topology with traffic shares and health,
rates and latency from counter deltas, certificate expiry, and the events between readings."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime

from shoal.platform.control.client import Status
from shoal.platform.dashboard.model import Reading, Tracker
from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import parse_text
from shoal.resources.model import DestinationRule, Service, VirtualService

CONFIG = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: hello}
spec:
  hosts: [hello]
  http:
  - route:
    - {destination: {host: hello, subset: v1}, weight: 90}
    - {destination: {host: hello, subset: v2}, weight: 10}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello}
spec:
  host: hello
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
"""
ROUTING = parse_text(CONFIG)
VSS = tuple(r for r in ROUTING if isinstance(r, VirtualService))
RULES = tuple(r for r in ROUTING if isinstance(r, DestinationRule))
SERVICES = [
    Service(name="hello", revision=rev, app="app:hello", labels=(("version", rev),))
    for rev in ("v1", "v2")
]


def endpoint(id_: str, revision: str, state: str = "ready") -> Endpoint:
    return Endpoint(
        id=id_,
        service="hello",
        revision=revision,
        node="n1",
        address="127.0.0.1",
        port=9000,
        labels=(("app", "hello"), ("version", revision)),
        state=state,  # type: ignore[arg-type]
    )


def report(requests: int, errors: int, fast: int, slow: int, **extra: object) -> dict[str, object]:
    latency = [0] * 12
    latency[0], latency[5] = fast, slow  # ≤ 5 ms, ≤ 250 ms
    return {"outcomes": {"hello/v1": [requests, errors]}, "latency": {"hello/v1": latency}, **extra}


def reading(
    instances: list[Endpoint],
    reports: dict[str, dict[str, object]],
    vss: tuple[VirtualService, ...] = VSS,
) -> Reading:
    status = Status(
        revision=3,
        nodes={"n1": {}},
        services=SERVICES,
        instances=instances,
        reports=reports,
        autoscaler={"hello/v1": {"desired": 2}},
    )
    return Reading(status, vss, RULES)


LEAF = {"identity": "spiffe://td/gateway", "serial": "aa", "not_after": "2026-12-06T00:00:00+00:00"}


def test_topology_rates_latency_and_certificates() -> None:
    tracker = Tracker()
    instances = [endpoint("a", "v1"), endpoint("b", "v2", "starting")]
    first = tracker.update(reading(instances, {"gateway": report(100, 0, 100, 0)}), now=1000.0)
    hello = first["services"][0]
    assert hello["rps"] is None  # no interval yet
    v1, v2 = hello["revisions"]
    assert (v1["revision"], v1["traffic"], v1["desired"]) == ("v1", 90.0, 2)
    assert v2["traffic"] == 10.0
    assert [(i["id"], i["health"]) for i in v1["instances"]] == [("a", "ok")]
    assert [(i["id"], i["health"]) for i in v2["instances"]] == [("b", "starting")]
    certs = {"certs": {"leaves": [LEAF]}}
    later = reading(instances, {"gateway": report(300, 20, 290, 10, **certs)})
    second = tracker.update(later, now=1002.0)
    hello = second["services"][0]
    assert hello["rps"] == 100.0  # 200 requests in 2 s
    assert hello["error_pct"] == 10.0
    assert (hello["p50_ms"], hello["p99_ms"]) == (5.0, 250.0)
    assert hello["history"]["rps"] == [None, 100.0]
    [cert] = second["certificates"]
    expires = datetime(2026, 12, 6, tzinfo=UTC).timestamp()
    assert (cert["component"], cert["seconds_left"]) == ("gateway", expires - 1002)


def test_a_restarted_proxy_counts_from_zero() -> None:
    tracker = Tracker()
    tracker.update(reading([], {"gateway": report(1000, 0, 1000, 0)}), now=10.0)
    after = tracker.update(reading([], {"gateway": report(30, 0, 30, 0)}), now=11.0)
    assert after["services"][0]["rps"] == 30.0


def test_events_between_readings() -> None:
    """An instance that starts, one that becomes ready, one that goes; an ejection and its
    return; a scale decision; a traffic shift (a rollout step); a certificate rotation."""
    tracker = Tracker()
    a, b = endpoint("a", "v1"), endpoint("b", "v2", "starting")
    leaf = {"certs": {"leaves": [LEAF]}}
    tracker.update(reading([a, b], {"gateway": report(0, 0, 0, 0, **leaf)}), now=1.0)
    ejection = {"ejections": {"hello/v1": [{"instance": "hello/a", "reason": "5xx"}]}}
    rotated = {"certs": {"leaves": [{**LEAF, "serial": "bb"}]}}
    shifted = tuple(
        replace(
            vs,
            http=(
                replace(
                    vs.http[0],
                    route=(
                        replace(vs.http[0].route[0], weight=50),
                        replace(vs.http[0].route[1], weight=50),
                    ),
                ),
            ),
        )
        for vs in VSS
    )
    c = endpoint("c", "v2", "starting")
    later = reading(
        [a, replace(b, state="ready"), c],
        {"gateway": report(0, 0, 0, 0, **ejection, **rotated)},
        shifted,
    )
    later.status.autoscaler["hello/v1"] = {"desired": 3}
    overview = tracker.update(later, now=2.0)
    texts = [e["text"] for e in overview["events"]]
    assert "hello/v2 instance b on n1 ready" in texts
    assert "hello/v2 instance c on n1 started" in texts
    assert "hello/a ejected (5xx)" in texts
    assert "hello/v1 scaled 2 → 3" in texts
    assert "hello traffic: v1 50%, v2 50% (was v1 90%, v2 10%)" in texts
    assert "gateway: new certificate for spiffe://td/gateway" in texts
    [a_now] = overview["services"][0]["revisions"][0]["instances"]
    assert (a_now["health"], a_now["why"]) == ("ejected", "5xx")
    gone = tracker.update(reading([a], {"gateway": report(0, 0, 0, 0)}), now=3.0)
    texts = [e["text"] for e in gone["events"]]
    assert "hello/v2 instance b gone" in texts and "hello/a back in rotation" in texts
    assert texts.index("hello/a back in rotation") < texts.index("hello/a ejected (5xx)")


def test_recorded_events_merge_with_seen_ones_newest_first() -> None:
    tracker = Tracker()
    tracker.update(reading([endpoint("a", "v1")], {}), now=1.0)
    recorded = ({"time": 1.5, "kind": "drill", "text": "failover drill on hello: kill hello/a"},)
    later = replace(reading([], {}), events=recorded)
    overview = tracker.update(later, now=2.0)
    assert [(e["time"], e["kind"]) for e in overview["events"]] == [
        (2.0, "instance"),
        (1.5, "drill"),
    ]
