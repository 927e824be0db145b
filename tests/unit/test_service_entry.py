"""Istio's ServiceEntry: parsing (shoal.resources.service_entry) and the endpoints the data
plane makes of it (shoal.mesh.external)."""

from __future__ import annotations

import pytest

from shoal.errors import ManifestError
from shoal.mesh.external import SYSTEM_TRUST, Probe, entry_endpoints, origin, probes
from shoal.mesh.external_health import Tracker
from shoal.resources.manifest import parse_text, to_document
from shoal.resources.model import OriginTLS, ServiceEntry, TrafficPolicy


def entry(spec: str) -> str:
    return (
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {name: api}\n"
        f"spec: {spec}\n"
    )


STATIC = (
    "{hosts: [api.example.com, api2.example.com], resolution: STATIC, "
    "ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8080}], "
    "endpoints: [{address: 10.0.0.1, ports: {http: 9090}, labels: {version: v1}}, "
    "{address: 10.0.0.2}]}"
)


def parsed(text: str) -> ServiceEntry:
    found = parse_text(text)[0]
    assert isinstance(found, ServiceEntry)
    return found


def test_a_static_entry_reads_back_and_gives_each_host_its_endpoints() -> None:
    """Each host gets every endpoint, at the endpoint's port for the entry's port name, else
    the targetPort; ready, outside the mesh (no node router)."""
    found = parsed(entry(STATIC))
    assert parse_text(str(to_document(found)).replace("'", '"'))[0] == found
    endpoints = entry_endpoints([found])
    assert [(e.service, e.authority, e.labels) for e in endpoints] == [
        ("api.example.com", "10.0.0.1:9090", (("version", "v1"),)),
        ("api.example.com", "10.0.0.2:8080", ()),
        ("api2.example.com", "10.0.0.1:9090", (("version", "v1"),)),
        ("api2.example.com", "10.0.0.2:8080", ()),
    ]
    assert {(e.state, e.mtls) for e in endpoints} == {("ready", False)}


def test_a_dns_entry_without_endpoints_is_its_host() -> None:
    found = parsed(
        entry("{hosts: [httpbin.org], resolution: DNS, ports: [{number: 443, protocol: HTTPS}]}")
    )
    [endpoint] = entry_endpoints([found])
    assert endpoint.authority == "httpbin.org:443"


HTTP80 = "ports: [{number: 80, protocol: HTTP}]"


@pytest.mark.parametrize(
    ("spec", "field", "said"),
    [
        (f"{{hosts: [a.b], {HTTP80}}}", "resolution", "NONE"),
        (f"{{hosts: [a.b], resolution: STATIC, {HTTP80}}}", "spec", "endpoints"),
        (f"{{hosts: ['*.b'], resolution: DNS, {HTTP80}}}", "hosts[0]", "wildcard"),
        (
            "{hosts: [a.b], resolution: DNS, ports: [{number: 5432, protocol: TCP}]}",
            "protocol",
            "HTTP or HTTPS",
        ),
        (f"{{hosts: [a.b], resolution: DNS, addresses: [1.2.3.4], {HTTP80}}}", "addresses", "IPs"),
        (f"{{hosts: [a.b], resolution: DNS, exportTo: [bar], {HTTP80}}}", "exportTo", "namespace"),
    ],
)
def test_what_shoal_cannot_serve_is_refused_saying_why(spec: str, field: str, said: str) -> None:
    with pytest.raises(ManifestError) as caught:
        parse_text(entry(spec))
    assert field in (caught.value.field or "") and said in caught.value.reason, caught.value


def test_origin_follows_the_rule_else_the_port() -> None:
    """A DestinationRule's SIMPLE/MUTUAL settings; else an HTTPS port means the system's
    trust; DISABLE (or an HTTP port) means plaintext."""
    own = OriginTLS(ca_certificates="/ca.pem", sni="x")
    assert origin(TrafficPolicy(tls_mode="SIMPLE", tls_origin=own), "HTTP") == own
    assert origin(TrafficPolicy(), "HTTPS") == SYSTEM_TRUST
    assert origin(TrafficPolicy(tls_mode="DISABLE"), "HTTPS") is None
    assert origin(TrafficPolicy(), "HTTP") is None
    assert origin(TrafficPolicy(), None) is None


def test_the_tracker_takes_an_endpoint_out_and_back_by_its_thresholds() -> None:
    """Down after ``failures`` failures in a row, up after ``successes`` successes in a row; a
    success in between starts the count again; an endpoint no longer checked is forgotten."""
    tracker = Tracker()
    probe = Probe("api/x-0", "10.0.0.1", 80, failures=2, successes=2)
    assert not tracker.observe(probe, False)
    assert not tracker.observe(probe, True)  # the run is broken
    assert not tracker.observe(probe, False)
    assert tracker.observe(probe, False) and tracker.down == {"api/x-0"}
    assert not tracker.observe(probe, False)
    assert not tracker.observe(probe, True)
    assert tracker.observe(probe, True) and not tracker.down
    tracker.observe(probe, False), tracker.observe(probe, False)
    assert tracker.keep([]) and not tracker.down


def test_only_static_endpoints_are_probed_with_their_rules_thresholds() -> None:
    static = parsed(entry(STATIC))
    dns = parsed(
        entry("{hosts: [httpbin.org], resolution: DNS, ports: [{number: 80, protocol: HTTP}]}")
    )
    found = probes([static, dns], {"api.example.com": TrafficPolicy(failure_threshold=1)})
    assert [(p.key, p.port, p.failures, p.successes) for p in found] == [
        ("api.example.com/api-0", 9090, 1, 1),
        ("api.example.com/api-1", 8080, 1, 1),
        ("api2.example.com/api-0", 9090, 3, 1),
        ("api2.example.com/api-1", 8080, 3, 1),
    ]
    down = entry_endpoints([static], unreachable={"api2.example.com/api-1"})
    assert [e.state for e in down] == ["ready", "ready", "ready", "unhealthy"]
