"""Destination clusters: which ready endpoints a (service, subset) sends to, under which policy.

Destination hosts name services by their first DNS label (``hello.default.svc.cluster.local``
is ``hello``) unless a Service is named by the whole host. DestinationRules attach the same way
(several for one service: the first by name wins). Subsets select endpoints whose labels
include the subset's labels; a subset no DestinationRule defines yields a cluster with no
endpoints and ``unknown_subset`` set, so the proxy can say why it has nowhere to go.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from immutables import Map, MapMutation

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


@dataclass(slots=True)
class ClusterInputs:
    """What clusters are made of, by service, in persistent maps (:mod:`immutables`): a
    routing table keeps it, and a change to one service's instances or DestinationRule makes a
    new one (:meth:`copy`, then the changes) that shares everything else."""

    service_names: frozenset[str] = frozenset()  # Services and ServiceEntry hosts
    revisions: Mapping[str, list[Service]] = field(default_factory=dict)  # by service name
    # every endpoint of a service (any state), by key; and its ready ones, sorted by key
    members: Map[str, Map[str, Endpoint]] = field(default_factory=Map)
    ready: Map[str, tuple[Endpoint, ...]] = field(default_factory=Map)
    rule_named: Map[str, DestinationRule] = field(default_factory=Map)  # every rule, by name
    rule_names: Map[str, frozenset[str]] = field(default_factory=Map)  # service: its rules
    entry_protocols: Mapping[str, str] = field(default_factory=dict)  # ServiceEntry host: protocol

    @classmethod
    def of(
        cls,
        services: Iterable[Service],
        destination_rules: Iterable[DestinationRule],
        endpoints: Iterable[Endpoint],
        entries: Iterable[ServiceEntry] = (),
    ) -> ClusterInputs:
        """The inputs of these resources and endpoints."""
        revisions: dict[str, list[Service]] = {}
        for service in services:
            revisions.setdefault(service.name, []).append(service)
        inputs = cls(service_names=frozenset(revisions), revisions=revisions)
        inputs.set_entries(entries)  # (before the rules: it decides what their hosts name)
        members: dict[str, dict[str, Endpoint]] = {}
        for endpoint in endpoints:
            members.setdefault(endpoint.service, {})[endpoint.key] = endpoint
        inputs.members = Map({name: Map(group) for name, group in members.items()})
        inputs.ready = Map({name: _ready(group) for name, group in members.items()})
        named = {rule.name: rule for rule in destination_rules}
        names: dict[str, set[str]] = {}
        for rule in named.values():
            names.setdefault(inputs.service_of(rule.host), set()).add(rule.name)
        inputs.rule_named = Map(named)
        inputs.rule_names = Map({k: frozenset(v) for k, v in names.items()})
        return inputs

    def copy(self) -> ClusterInputs:
        """A copy to change (its maps are shared until then)."""
        return replace(self)

    def service_of(self, host: str) -> str:
        """The service a destination host names: the whole host if a Service has it, else its
        first DNS label."""
        host = host.lower().rstrip(".")
        if host in self.service_names:
            return host
        return host.split(".", 1)[0]

    def rule(self, service: str) -> DestinationRule | None:
        """The DestinationRule of ``service``: the first by name of those naming it."""
        names = self.rule_names.get(service)
        return self.rule_named[min(names)] if names else None

    def set_endpoint(self, key: str, old: Endpoint | None, new: Endpoint | None) -> None:
        """Endpoint ``key`` was ``old`` and is ``new`` (None: absent): the members of its
        service(s) change (call :meth:`settle` for them afterwards)."""
        if old is not None and key in (group := self.members.get(old.service, _NO_MEMBERS)):
            self.members = self.members.set(old.service, group.delete(key))
        if new is not None:
            group = self.members.get(new.service, _NO_MEMBERS)
            self.members = self.members.set(new.service, group.set(key, new))

    def settle(self, service: str) -> bool:
        """Make ``service``'s ready endpoints again from its members; whether they changed."""
        group = self.members.get(service)
        ready = _ready(group) if group else ()
        if not group and service in self.members:
            self.members = self.members.delete(service)
        if ready == self.ready.get(service, ()):
            return False
        if ready:
            self.ready = self.ready.set(service, ready)
        else:
            self.ready = self.ready.delete(service)
        return True

    def set_revision(self, key: str, service: Service | None) -> str:
        """Service revision ``key`` (``name/revision``) is now ``service`` (None: deleted);
        the name of the service whose revisions changed."""
        name, _, revision = key.partition("/")
        current = [s for s in self.revisions.get(name, ()) if s.revision != revision]
        if service is not None:
            current.append(service)
        revisions = dict(self.revisions)
        if current:
            revisions[name] = current
        else:
            revisions.pop(name, None)
        self.revisions = revisions
        self._name_services()
        return name

    def set_entries(self, entries: Iterable[ServiceEntry]) -> set[str]:
        """The ServiceEntries are now ``entries`` (their endpoints: :meth:`set_endpoint`): each
        host a service of its own, named by the whole host, with its first port's protocol
        (which says whether TLS is originated to it).
        The services whose clusters may change: the hosts that came, went or changed protocol,
        and the services those hosts' first labels name (what a destination host names
        depends on which hosts are services)."""
        protocols = {h: e.ports[0].protocol for e in entries for h in e.hosts}
        was = self.entry_protocols
        changed = {h for h in {*protocols, *was} if protocols.get(h) != was.get(h)}
        if not changed:
            return set()
        before = self.service_names
        self.entry_protocols = protocols
        self._name_services()
        renamed = before ^ self.service_names
        for name, rule in self.rule_named.items():  # (rules naming a renamed host move)
            host = rule.host.lower().rstrip(".")
            if host in renamed:
                old = host if host in before else host.split(".", 1)[0]
                self.rule_names = self.rule_names.set(old, self.rule_names[old] - {name})
                new = self.service_of(host)
                self.rule_names = self.rule_names.set(
                    new, self.rule_names.get(new, frozenset()) | {name}
                )
        return {*changed, *(h.split(".", 1)[0] for h in changed)}

    def _name_services(self) -> None:
        self.service_names = frozenset(self.revisions) | frozenset(self.entry_protocols)

    def set_rule(self, name: str, rule: DestinationRule | None) -> set[str]:
        """DestinationRule ``name`` is now ``rule`` (None: deleted); the services whose rule
        may have changed."""
        old = self.rule_named.get(name)
        services = {self.service_of(r.host) for r in (old, rule) if r is not None}
        if old is not None:
            service = self.service_of(old.host)
            self.rule_named = self.rule_named.delete(name)
            self.rule_names = self.rule_names.set(service, self.rule_names[service] - {name})
        if rule is not None:
            service = self.service_of(rule.host)
            self.rule_named = self.rule_named.set(name, rule)
            names = self.rule_names.get(service, frozenset())
            self.rule_names = self.rule_names.set(service, names | {name})
        return services


_NO_MEMBERS: Map[str, Endpoint] = Map()


def _ready(group: Mapping[str, Endpoint]) -> tuple[Endpoint, ...]:
    return tuple(sorted((e for e in group.values() if e.state == "ready"), key=lambda e: e.key))


class ClusterBuilder:
    """Resolves destinations to clusters while a routing table is built or changed: one cluster
    object per key. ``clusters`` holds the clusters made so far (a changed table's: those of
    its predecessor); those of a service in ``stale`` are made again when first asked for."""

    def __init__(
        self,
        inputs: ClusterInputs,
        clusters: MapMutation[ClusterKey, Cluster],
        stale: Collection[str] = (),
    ) -> None:
        self.inputs = inputs
        self.clusters = clusters
        self.stale = stale
        self.made: set[ClusterKey] = set()  # the keys made here

    def cluster(self, destination: Destination) -> Cluster:
        """The (shared) cluster for a destination."""
        key = (self.inputs.service_of(destination.host), destination.subset)
        cluster = self.clusters.get(key)
        if cluster is None or (key[0] in self.stale and key not in self.made):
            cluster = self.clusters[key] = self._make_cluster(*key)
            self.made.add(key)
        return cluster

    def _make_cluster(self, service: str, subset_name: str | None) -> Cluster:
        inputs = self.inputs
        endpoints = inputs.ready.get(service, ())
        revisions = inputs.revisions.get(service, [])
        rule = inputs.rule(service)
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
            unknown_service=service not in inputs.service_names,
            unknown_subset=unknown_subset,
            revisions=tuple(sorted(r.key for r in revisions)),
            origin=origin(policy, inputs.entry_protocols.get(service)),
        )
