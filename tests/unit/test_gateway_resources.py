"""Istio's Gateway: parsing (shoal.resources.gateway) and what the edge makes of it
(shoal.gateway.servers), without I/O."""

from __future__ import annotations

import pytest

from shoal.errors import ManifestError
from shoal.gateway.servers import host_matches, plan_ports
from shoal.resources.manifest import parse_text, to_document
from shoal.resources.model import Gateway, VirtualService


def gateway(servers: str, name: str = "edge") -> str:
    """A Gateway document with the YAML flow list ``servers``."""
    return (
        f"apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata: {{name: {name}}}\n"
        f"spec:\n  selector: {{istio: ingressgateway}}\n  servers: {servers}\n"
    )


HTTPS = "{port: {number: 443, name: https, protocol: HTTPS}, hosts: [a.example], tls: %s}"
SIMPLE = "{mode: SIMPLE, serverCertificate: /c/a.pem, privateKey: /c/a.key}"


def parsed(text: str) -> Gateway:
    found = parse_text(text)[0]
    assert isinstance(found, Gateway)
    return found


def error(text: str) -> ManifestError:
    with pytest.raises(ManifestError) as caught:
        parse_text(text)
    return caught.value


def test_a_gateway_reads_back_and_strips_the_default_namespace() -> None:
    """Servers, hosts (``./``, ``*/`` and ``default/`` prefixes dropped), TLS files; the
    canonical document parses to an equal value."""
    found = parsed(
        gateway(
            "[{port: {number: 8081, name: http, protocol: http}, hosts: ['./a.example', '*/b'],"
            " tls: {httpsRedirect: true}}, " + HTTPS % SIMPLE + "]"
        )
    )
    assert [s.hosts for s in found.servers] == [("a.example", "b"), ("a.example",)]
    assert found.servers[0].protocol == "HTTP" and found.servers[0].tls is not None
    assert found.servers[0].tls.https_redirect and found.servers[1].secure
    assert parse_text(str(to_document(found)).replace("'", '"'))[0] == found


def test_relative_certificate_paths_are_the_manifests_directorys() -> None:
    found = parse_text(
        gateway("[" + HTTPS % "{mode: SIMPLE, serverCertificate: a.pem, privateKey: a.key}" + "]"),
        base_dir="/etc/edge",
    )[0]
    assert isinstance(found, Gateway) and found.servers[0].tls is not None
    assert found.servers[0].tls.server_certificate == "/etc/edge/a.pem"


@pytest.mark.parametrize(
    ("servers", "field", "said"),
    [
        ("[{port: {number: 443, protocol: HTTPS}, hosts: [a]}]", "spec.servers[0].tls", "HTTPS"),
        ("[" + HTTPS % "{mode: PASSTHROUGH}" + "]", "spec.servers[0].tls.mode", "passthrough"),
        ("[" + HTTPS % "{mode: SIMPLE, credentialName: x}" + "]", "credentialName", "files"),
        ("[" + HTTPS % "{mode: MUTUAL, serverCertificate: a, privateKey: b}" + "]", "tls", "CA"),
        ("[" + HTTPS % "{mode: SIMPLE}" + "]", "spec.servers[0].tls", "serverCertificate"),
        ("[{port: {number: 9, protocol: TCP}, hosts: [a]}]", "protocol", "HTTP only"),
        ("[{port: {number: 80, protocol: HTTP}, hosts: [bookinfo/a]}]", "hosts[0]", "namespace"),
        ("[{port: {number: 0, protocol: HTTP}, hosts: [a]}]", "port.number", "1 to 65535"),
        (
            "[{port: {number: 443, protocol: HTTP}, hosts: [a]}, " + HTTPS % SIMPLE + "]",
            "spec.servers[1]",
            "one serves TLS",
        ),
    ],
)
def test_what_shoal_cannot_serve_is_refused_saying_why(servers: str, field: str, said: str) -> None:
    found = error(gateway(servers))
    assert field in (found.field or "") and said.lower() in found.reason.lower(), found


def test_a_virtual_service_binds_to_gateways_by_name() -> None:
    """``gateways`` takes ``name``, ``default/name`` (kept as ``name``) and ``mesh``."""
    text = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: v}\n"
        "spec: {hosts: [a], gateways: [default/edge, mesh], http: [{route: "
        "[{destination: {host: a}}]}]}\n"
    )
    found = parse_text(text)[0]
    assert isinstance(found, VirtualService) and found.gateways == ("edge", "mesh")
    bad = error(text.replace("default/edge", "istio-system/edge"))
    assert "namespace istio-system" in bad.reason


@pytest.mark.parametrize(
    ("pattern", "host", "rank"),
    [
        ("a.example", "a.example", 1_000),
        ("*.example", "a.example", 9),
        ("*.example", "example", None),
        ("*", "anything", 0),
        ("a.example", "b.example", None),
    ],
)
def test_host_matches(pattern: str, host: str, rank: int | None) -> None:
    assert host_matches(pattern, host) == rank


def test_ports_are_planned_and_disagreeing_servers_left_out() -> None:
    """Servers of several Gateways share a port when they agree; the most specific host wins;
    a server on a port the gateway has, or disagreeing on TLS, is left out and said why."""
    first = parsed(
        gateway(
            "[{port: {number: 8081, protocol: HTTP}, hosts: ['*']},"
            " {port: {number: 8080, protocol: HTTP}, hosts: [x]}]",
            name="a",
        )
    )
    second = parsed(
        gateway("[{port: {number: 8081, protocol: HTTP}, hosts: ['*.shop.example']}]", "b")
    )
    third = parsed(
        gateway("[{port: {number: 8081, protocol: HTTPS}, hosts: [y], tls: " + SIMPLE + "}]", "c")
    )
    plans, problems = plan_ports([third, second, first], taken=[8080])
    assert list(plans) == [8081]
    plan = plans[8081]
    assert [b.gateway for b in plan.servers] == ["a", "b"]
    found = plan.server_for("www.shop.example")
    assert found is not None and found.gateway == "b"
    other = plan.server_for("other.example")
    assert other is not None and other.gateway == "a"
    assert len(problems) == 2
    assert "Gateway a server on port 8080" in problems[0] and "own listener" in problems[0]
    assert "Gateway c" in problems[1] and "disagrees with Gateway a" in problems[1]
