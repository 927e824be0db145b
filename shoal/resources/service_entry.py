"""ServiceEntry specs: Istio's field names to model values and back.

A ServiceEntry adds hosts served outside Shoal (a VM, a managed API) to the mesh's registry:
with ``resolution: STATIC`` its ``endpoints`` are addresses; with ``DNS`` they are names (or,
without endpoints, the host itself) resolved when a connection is made. Its first port says
how to reach the endpoints: ``HTTP`` in plaintext, ``HTTPS`` with TLS that Shoal originates
(verified against the system's CAs, SNI the host) — or write ``HTTP`` and a DestinationRule
with ``tls.mode: SIMPLE`` (its own CA, SNI name) as Istio's egress TLS origination does.

Refused with a reason: ``resolution: NONE`` (Shoal routes by Host, it captures no traffic to
pass on), ``addresses`` (no virtual IPs), ``workloadSelector``, protocols other than HTTP and
HTTPS, ``exportTo`` beyond this namespace, endpoint ``network``/``locality``/``serviceAccount``.
"""

from __future__ import annotations

from typing import Literal, cast

from shoal.errors import ManifestError
from shoal.resources.fields import (
    Section,
    entries,
    host_name,
    integer,
    labels,
    list_of,
    one_of,
    put,
    string,
)
from shoal.resources.model import EntryEndpoint, EntryPort, EntryProtocol, ServiceEntry

__all__ = ["parse_service_entry", "service_entry_spec"]

_HINTS = {
    "addresses": "not supported by Shoal: it routes by Host, without virtual IPs",
    "workloadSelector": "not supported by Shoal: list the endpoints",
    "subjectAltNames": "not supported by Shoal: a DestinationRule's tls (SIMPLE) verifies the "
    "endpoints' certificates",
}
_ENDPOINT_HINTS = {
    "network": "not supported by Shoal (one network)",
    "locality": "not supported by Shoal (no locality load balancing)",
    "serviceAccount": "not supported by Shoal: endpoints outside Shoal have no mesh identity",
}
_PROTOCOLS = ("HTTP", "HTTPS")


def parse_service_entry(name: str, value: object) -> ServiceEntry:
    """The ServiceEntry named ``name`` whose ``spec`` is ``value``."""
    spec = Section(
        value,
        "spec",
        ("hosts", "ports", "location", "resolution", "endpoints", "exportTo"),
        _HINTS,
    )
    resolution = spec.get("resolution", string, "NONE")
    if resolution == "NONE":
        raise ManifestError(
            "Shoal needs to know where to send the requests: write STATIC with endpoints, or "
            "DNS (the endpoints' names, or the host, resolved when connecting); NONE passes "
            "captured traffic on, and Shoal captures none",
            field=spec.at("resolution"),
            value=resolution,
        )
    resolution = one_of(("STATIC", "DNS"))(resolution, spec.at("resolution"))
    export: tuple[str, ...] = spec.get("exportTo", list_of(string)) or ()
    if any(to not in ("*", ".") for to in export):
        raise ManifestError(
            "Shoal serves one namespace: exportTo may be '*' or '.'",
            field=spec.at("exportTo"),
            value=list(export),
        )
    entry = ServiceEntry(
        name=name,
        hosts=spec.need("hosts", list_of(_host, min_items=1)),
        ports=spec.need("ports", list_of(_port, min_items=1)),
        resolution=cast(Literal["STATIC", "DNS"], resolution),
        location=cast(
            Literal["MESH_EXTERNAL", "MESH_INTERNAL"],
            spec.get("location", one_of(("MESH_EXTERNAL", "MESH_INTERNAL")), "MESH_EXTERNAL"),
        ),
        endpoints=spec.get("endpoints", list_of(_endpoint), ()),
    )
    if resolution == "STATIC" and not entry.endpoints:
        raise ManifestError(
            "resolution STATIC needs endpoints (their addresses)", field="spec", value=value
        )
    return entry


def _host(value: object, field: str) -> str:
    host = host_name(value, field).lower()
    if "*" in host:
        raise ManifestError(
            "a wildcard host needs resolution NONE, which Shoal cannot serve: name each host",
            field=field,
            value=value,
        )
    return host


def _port(value: object, field: str) -> EntryPort:
    port = Section(value, field, ("number", "protocol", "name", "targetPort"))
    protocol = port.need("protocol", string).upper()
    if protocol not in _PROTOCOLS:
        raise ManifestError(
            "Shoal reaches endpoints outside it over HTTP or HTTPS (HTTP/1.1) only",
            field=port.at("protocol"),
            value=protocol,
        )
    return EntryPort(
        number=port.need("number", integer(1, 65535)),
        protocol=cast(EntryProtocol, protocol),
        name=port.get("name", string),
        target_port=port.get("targetPort", integer(1, 65535)),
    )


def _endpoint(value: object, field: str) -> EntryEndpoint:
    endpoint = Section(value, field, ("address", "ports", "labels", "weight"), _ENDPOINT_HINTS)
    address = endpoint.need("address", string)
    if not address or any(c in address for c in " /") or address.startswith("unix:"):
        raise ManifestError(
            "must be an IP address or a host name", field=endpoint.at("address"), value=address
        )
    return EntryEndpoint(
        address=address,
        ports=endpoint.get("ports", _port_map, ()),
        labels=endpoint.get("labels", labels, ()),
        weight=endpoint.get("weight", integer(1), 1),
    )


def _port_map(value: object, field: str) -> tuple[tuple[str, int], ...]:
    return tuple(
        sorted((key, integer(1, 65535)(item, path)) for key, item, path in entries(value, field))
    )


def service_entry_spec(entry: ServiceEntry) -> dict[str, object]:
    """The canonical ``spec`` of a ServiceEntry, in Istio's field names."""
    ports = []
    for port in entry.ports:
        out: dict[str, object] = {"number": port.number, "protocol": port.protocol}
        put(out, "name", port.name)
        put(out, "targetPort", port.target_port)
        ports.append(out)
    endpoints = []
    for endpoint in entry.endpoints:
        shown: dict[str, object] = {"address": endpoint.address}
        put(shown, "ports", dict(endpoint.ports), {})
        put(shown, "labels", dict(endpoint.labels), {})
        put(shown, "weight", endpoint.weight, 1)
        endpoints.append(shown)
    spec: dict[str, object] = {
        "hosts": list(entry.hosts),
        "ports": ports,
        "location": entry.location,
        "resolution": entry.resolution,
    }
    put(spec, "endpoints", endpoints, [])
    return spec
