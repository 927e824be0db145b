"""Destination clusters: which ready endpoints a (service, subset) sends to, under which policy.

Destination hosts name services by their first DNS label (``hello.default.svc.cluster.local``
is ``hello``) unless a Service is named by the whole host. DestinationRules attach the same way
(several for one service: the first by name wins). Subsets select endpoints whose labels
include the subset's labels; a subset no DestinationRule defines yields a cluster with no
endpoints and ``unknown_subset`` set, so the proxy can say why it has nowhere to go.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TypeVar

from shoal.mesh.external import origin
from shoal.resources.endpoint import Endpoint
from shoal.resources.model import (
    Destination,
    DestinationRule,
    OriginTLS,
    Service,
    ServiceEntry,
    TrafficPolicy,
)

ClusterKey = tuple[str, str | None]
"""(service name, subset name or None)."""

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Cluster:
    """A (service, subset) destination: its ready endpoints and its effective traffic policy.

    ``endpoints`` are sorted by key. ``unknown_service``: no Service resource has that name
    (endpoints registered under the name are still used). ``unknown_subset``: no
    DestinationRule of the service defines the subset, so there are no endpoints.
    """

    service: str
    subset: str | None = None
    endpoints: tuple[Endpoint, ...] = ()
    policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    unknown_service: bool = False
    unknown_subset: bool = False
    revisions: tuple[str, ...] = ()  # ``service/revision`` of the Services the subset selects
    # TLS the proxy originates to its endpoints (a destination outside Shoal), or None
    origin: OriginTLS | None = None

    @property
    def key(self) -> ClusterKey:
        """(service, subset): the identity balancers are kept under."""
        return (self.service, self.subset)

    @property
    def load_balancer(self) -> str:
        """The ``loadBalancer.simple`` policy of this cluster."""
        return self.policy.load_balancer or "ROUND_ROBIN"


def merge_policy(base: TrafficPolicy, override: TrafficPolicy) -> TrafficPolicy:
    """A subset's policy laid over its DestinationRule's, field by field (Istio's merge).

    Each optional field of ``override`` replaces ``base``'s when set (not None).
    """
    return TrafficPolicy(
        load_balancer=_set_or(override.load_balancer, base.load_balancer),
        consistent_hash=(
            override.consistent_hash
            if override.consistent_hash is not None or override.load_balancer is not None
            else base.consistent_hash
        ),
        outlier_detection=_set_or(override.outlier_detection, base.outlier_detection),
        connection_pool=_set_or(override.connection_pool, base.connection_pool),
        failure_threshold=_set_or(override.failure_threshold, base.failure_threshold),
        healthy_threshold=_set_or(override.healthy_threshold, base.healthy_threshold),
        tls_mode=_set_or(override.tls_mode, base.tls_mode),
        tls_origin=override.tls_origin if override.tls_mode is not None else base.tls_origin,
    )


def _set_or(value: _T | None, fallback: _T | None) -> _T | None:
    return value if value is not None else fallback


class ClusterBuilder:
    """Resolves destinations to clusters while a routing table is built; one cluster object per
    key."""

    def __init__(
        self,
        services: Iterable[Service],
        destination_rules: Iterable[DestinationRule],
        endpoints: Iterable[Endpoint],
        entries: Iterable[ServiceEntry] = (),
    ) -> None:
        services = list(services)
        # A ServiceEntry's hosts are services too, named by the whole host; its first port's
        # protocol says whether TLS is originated to them.
        self.entry_protocols = {h: e.ports[0].protocol for e in entries for h in e.hosts}
        self.service_names = {service.name for service in services} | set(self.entry_protocols)
        self.revisions: dict[str, list[Service]] = {}
        for service in services:
            self.revisions.setdefault(service.name, []).append(service)
        ready: dict[str, list[Endpoint]] = {}
        for endpoint in endpoints:
            if endpoint.state == "ready":
                ready.setdefault(endpoint.service, []).append(endpoint)
        self.ready = {
            name: tuple(sorted(group, key=lambda ep: ep.key)) for name, group in ready.items()
        }
        self.rules: dict[str, DestinationRule] = {}
        for rule in sorted(destination_rules, key=lambda dr: dr.name):
            self.rules.setdefault(self.service_of(rule.host), rule)
        self.clusters: dict[ClusterKey, Cluster] = {}

    def service_of(self, host: str) -> str:
        """The service a destination host names: the whole host if a Service has it, else its
        first DNS label."""
        host = host.lower().rstrip(".")
        if host in self.service_names:
            return host
        return host.split(".", 1)[0]

    def cluster(self, destination: Destination) -> Cluster:
        """The (shared) cluster for a destination."""
        key = (self.service_of(destination.host), destination.subset)
        cluster = self.clusters.get(key)
        if cluster is None:
            cluster = self.clusters[key] = self._make_cluster(*key)
        return cluster

    def _make_cluster(self, service: str, subset_name: str | None) -> Cluster:
        endpoints = self.ready.get(service, ())
        revisions = self.revisions.get(service, [])
        rule = self.rules.get(service)
        policy = rule.traffic_policy if rule is not None else TrafficPolicy()
        unknown_subset = False
        if subset_name is not None:
            subsets = rule.subsets if rule is not None else ()
            subset = next((s for s in subsets if s.name == subset_name), None)
            named = [r for r in revisions if subset_name in (r.revision, *r.tags)]
            if subset is None and named:  # a revision is a subset by its name and its tags
                chosen = {r.revision for r in named}
                endpoints = tuple(ep for ep in endpoints if ep.revision in chosen)
                revisions = named
            elif subset is None:
                endpoints, revisions, unknown_subset = (), [], True
            else:
                wanted = set(subset.labels)  # endpoint labels must include these pairs
                endpoints = tuple(ep for ep in endpoints if wanted.issubset(ep.labels))
                revisions = [r for r in revisions if wanted.issubset(r.instance_labels().items())]
                if subset.traffic_policy is not None:
                    policy = merge_policy(policy, subset.traffic_policy)
        return Cluster(
            service=service,
            subset=subset_name,
            endpoints=endpoints,
            policy=policy,
            unknown_service=service not in self.service_names,
            unknown_subset=unknown_subset,
            revisions=tuple(sorted(r.key for r in revisions)),
            origin=origin(policy, self.entry_protocols.get(service)),
        )
