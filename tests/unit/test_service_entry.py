"""Istio's ServiceEntry: parsing (shoal.resources.service_entry) and the endpoints the data
plane makes of it (shoal.mesh.external)."""

from __future__ import annotations

import pytest

from shoal.errors import ManifestError
from shoal.mesh.external import SYSTEM_TRUST, entry_endpoints, origin
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
