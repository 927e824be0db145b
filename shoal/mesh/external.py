"""Destinations outside Shoal (ServiceEntries) as the data plane sees them: endpoints under
each host, and how a proxy reaches them (plaintext, or TLS it originates)."""

from __future__ import annotations

from collections.abc import Iterable

from shoal.resources.endpoint import Endpoint
from shoal.resources.model import OriginTLS, ServiceEntry, TrafficPolicy

__all__ = ["EXTERNAL", "entry_endpoints", "origin"]

EXTERNAL = "external"
"""The revision name of a ServiceEntry's endpoints (they run no Shoal revision)."""

SYSTEM_TRUST = OriginTLS()
"""TLS verified against the system's CAs, SNI the host: what an ``HTTPS`` port means."""


def entry_endpoints(entries: Iterable[ServiceEntry]) -> list[Endpoint]:
    """Every ServiceEntry's endpoints, under each of its hosts: ready (outlier detection takes
    a failing one out of rotation), reached directly (no node router), at the endpoint's port
    for the entry's first port (its name in the endpoint's ``ports``, else ``targetPort``,
    else the port's number); a DNS entry without endpoints is its host."""
    found = []
    for entry in entries:
        port = entry.ports[0]
        default = port.target_port or port.number
        for host in entry.hosts:
            endpoints = [
                (e.address, dict(e.ports).get(port.name or "", default), e.labels, e.weight)
                for e in entry.endpoints
            ] or [(host, default, (), 1)]
            for index, (address, number, labels, weight) in enumerate(endpoints):
                found.append(
                    Endpoint(
                        id=f"{entry.name}-{index}",
                        service=host,
                        revision=EXTERNAL,
                        node="",
                        address=address,
                        port=number,
                        labels=labels,
                        weight=weight,
                        state="ready",
                    )
                )
    return found


def origin(policy: TrafficPolicy, entry_protocol: str | None) -> OriginTLS | None:
    """The TLS a proxy originates to a destination: its DestinationRule's (mode SIMPLE or
    MUTUAL), else the system's trust for a ServiceEntry port of protocol HTTPS, else none."""
    if policy.tls_mode in ("SIMPLE", "MUTUAL"):
        return policy.tls_origin or SYSTEM_TRUST
    if policy.tls_mode is None and entry_protocol == "HTTPS":
        return SYSTEM_TRUST
    return None
