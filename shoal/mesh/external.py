"""Destinations outside Shoal (ServiceEntries) as the data plane sees them: endpoints under
each host, and how a proxy reaches them (plaintext, or TLS it originates)."""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, replace

from shoal.resources.endpoint import Endpoint
from shoal.resources.model import OriginTLS, ServiceEntry, TrafficPolicy

__all__ = ["EXTERNAL", "Probe", "entry_endpoints", "origin", "probes"]

EXTERNAL = "external"
"""The revision name of a ServiceEntry's endpoints (they run no Shoal revision)."""

SYSTEM_TRUST = OriginTLS()
"""TLS verified against the system's CAs, SNI the host: what an ``HTTPS`` port means."""


@dataclass(frozen=True, slots=True)
class Probe:
    """An endpoint a proxy checks (:mod:`shoal.mesh.external_health`): its registry key, where
    it listens, and how many results in a row take it out of or back into rotation."""

    key: str
    address: str
    port: int
    failures: int = 3
    successes: int = 1


def probes(
    entries: Iterable[ServiceEntry], policies: Mapping[str, TrafficPolicy]
) -> tuple[Probe, ...]:
    """The endpoints of STATIC entries to check, with their host's DestinationRule thresholds
    (``failureThreshold``, ``healthyThreshold``; by host in ``policies``)."""
    static = [entry for entry in entries if entry.resolution == "STATIC"]
    found = []
    for endpoint in entry_endpoints(static):
        policy = policies.get(endpoint.service) or TrafficPolicy()
        found.append(
            Probe(
                endpoint.key,
                endpoint.address,
                endpoint.port,
                policy.failure_threshold or 3,
                policy.healthy_threshold or 1,
            )
        )
    return tuple(found)


def entry_endpoints(
    entries: Iterable[ServiceEntry], unreachable: Collection[str] = ()
) -> list[Endpoint]:
    """Every ServiceEntry's endpoints, under each of its hosts: ready, unless its key is in
    ``unreachable`` (failing its active health checks; outlier detection takes out one that
    fails requests), reached directly (no node router), at the endpoint's port for the entry's
    first port (its name in the endpoint's ``ports``, else ``targetPort``, else the port's
    number); a DNS entry without endpoints is its host."""
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
    return [replace(e, state="unhealthy") if e.key in unreachable else e for e in found]


def origin(policy: TrafficPolicy, entry_protocol: str | None) -> OriginTLS | None:
    """The TLS a proxy originates to a destination: its DestinationRule's (mode SIMPLE or
    MUTUAL), else the system's trust for a ServiceEntry port of protocol HTTPS, else none."""
    if policy.tls_mode in ("SIMPLE", "MUTUAL"):
        return policy.tls_origin or SYSTEM_TRUST
    if policy.tls_mode is None and entry_protocol == "HTTPS":
        return SYSTEM_TRUST
    return None
