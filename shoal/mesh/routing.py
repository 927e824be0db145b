"""The routing snapshot: which destination clusters a request goes to.

A :class:`RoutingTable` is built once per config or registry change from the Services,
VirtualServices, DestinationRules and endpoints of the moment, and swapped in by one assignment.
Building does all the work (regexes compiled, hosts indexed, clusters and their ready endpoints
grouped, every possible :class:`RouteMatch` made in advance), so :meth:`RoutingTable.resolve`
is dict lookups and precompiled checks that allocate nothing.

Host lookup (the request host lower-cased, port and trailing dot removed), first hit wins:

1. a VirtualService host equal to it;
2. an Istio short name: VirtualService host ``hello`` (no dot) covers ``hello.<anything>``;
3. the longest wildcard suffix: ``*.b.example.com`` before ``*.example.com``;
4. a VirtualService host ``*``;
5. no VirtualService: the default route of the Service named like the host (or like its
   longest ``name.`` prefix) to all its ready endpoints, as Kubernetes routes a Service.

Within a VirtualService the ``http[]`` rules are tried in order and the first match wins; a rule
matches if any of its match blocks does (a rule without blocks matches everything), a block if
all its conditions hold. Several VirtualServices claiming one host: the first by name wins.

Destination hosts name services by their first DNS label (``hello.default.svc.cluster.local``
is ``hello``) unless a Service is named by the whole host. DestinationRules attach the same way
(several for one service: the first by name wins). Subsets select endpoints whose labels
include the subset's labels; a subset no DestinationRule defines yields a cluster with no
endpoints and ``unknown_subset`` set, so the proxy can say why it has nowhere to go.
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from shoal.mesh.balancer import Balancer, make_balancer
from shoal.mesh.split import pick_weighted
from shoal.resources.endpoint import Endpoint
from shoal.resources.model import (
    Destination,
    DestinationRule,
    HTTPMatchRequest,
    HTTPRoute,
    RouteDestination,
    Service,
    StringMatch,
    TrafficPolicy,
    VirtualService,
)

ClusterKey = tuple[str, str | None]
"""(service name, subset name or None)."""

_Check = Callable[[str], bool]
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

    @property
    def key(self) -> ClusterKey:
        """(service, subset): the identity balancers are kept under."""
        return (self.service, self.subset)

    @property
    def load_balancer(self) -> str:
        """The ``loadBalancer.simple`` policy of this cluster."""
        return self.policy.load_balancer or "ROUND_ROBIN"


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteMatch:
    """What a request matched: the rule, the match block, and the weighted clusters to pick from.

    ``virtual_service`` and ``route_index`` are None for the default route of a Service that no
    VirtualService covers. ``match_index``/``match`` are None when the rule has no match blocks.
    ``clusters`` and ``weights`` are parallel; ``mirror`` is the resolved ``route.mirror``.
    """

    virtual_service: str | None
    route_index: int | None
    route: HTTPRoute
    match_index: int | None = None
    match: HTTPMatchRequest | None = None
    clusters: tuple[Cluster, ...] = ()
    weights: tuple[int, ...] = ()
    mirror: Cluster | None = None

    @property
    def matched_prefix(self) -> str | None:
        """The URI prefix the request matched by, when the matching block used ``uri.prefix``."""
        if self.match is None or self.match.uri is None:
            return None
        return self.match.uri.prefix

    def rewrite_path(self, path: str) -> str:
        """``path`` (no query) after the route's ``rewrite.uri``; see :func:`apply_rewrite`."""
        return apply_rewrite(self.route, self.matched_prefix, path)


def apply_rewrite(route: HTTPRoute, matched_prefix: str | None, path: str) -> str:
    """Istio's ``rewrite.uri``: replace the matched prefix, or the whole path if not prefix-matched.

    ``path`` excludes the query string; the caller re-appends it. Like Envoy, no slash is added
    or removed: prefix ``/api/`` rewritten to ``/`` turns ``/api/x`` into ``/x``.
    """
    rewrite = route.rewrite
    if rewrite is None or rewrite.uri is None:
        return path
    if matched_prefix is not None:
        return rewrite.uri + path[len(matched_prefix) :]
    return rewrite.uri


def merge_policy(base: TrafficPolicy, override: TrafficPolicy) -> TrafficPolicy:
    """A subset's policy laid over its DestinationRule's, field by field (Istio's merge).

    Each optional field of ``override`` replaces ``base``'s when set (not None).
    """
    return TrafficPolicy(
        load_balancer=_set_or(override.load_balancer, base.load_balancer),
        outlier_detection=_set_or(override.outlier_detection, base.outlier_detection),
        connection_pool=_set_or(override.connection_pool, base.connection_pool),
        failure_threshold=_set_or(override.failure_threshold, base.failure_threshold),
        healthy_threshold=_set_or(override.healthy_threshold, base.healthy_threshold),
    )


def _set_or(value: _T | None, fallback: _T | None) -> _T | None:
    return value if value is not None else fallback


def normalize_host(host: str) -> str:
    """A Host/:authority value as routing sees it: lower case, no port, no trailing dot."""
    host = host.lower()
    if host.startswith("["):  # IPv6 literal: the port follows the bracket
        end = host.find("]")
        return host if end == -1 else host[: end + 1]
    colon = host.rfind(":")
    if colon != -1:
        host = host[:colon]
    return host[:-1] if host.endswith(".") else host


@dataclass(frozen=True, slots=True)
class _Block:
    """One compiled match block; None checks always hold. ``result`` is returned on a match."""

    result: RouteMatch
    uri: _Check | None = None
    method: _Check | None = None
    authority: _Check | None = None
    headers: tuple[tuple[str, _Check | None], ...] = ()

    def matches(self, path: str, method: str, authority: str, headers: Mapping[str, str]) -> bool:
        """Whether every condition of the block holds for the request."""
        if self.uri is not None and not self.uri(path):
            return False
        if self.method is not None and not self.method(method):
            return False
        if self.authority is not None and not self.authority(authority):
            return False
        for name, check in self.headers:
            value = headers.get(name)
            if value is None or (check is not None and not check(value)):
                return False
        return True


def _compile(match: StringMatch | None, where: str, *, ignore_case: bool = False) -> _Check | None:
    """A check for a StringMatch; None for an absent or empty one (for a header: presence only).

    ``ignore_case`` applies to exact and prefix only, as Istio documents for ``ignoreUriCase``.
    Regexes must match the whole value (RE2 full match in Istio, ``re.fullmatch`` here).
    """
    if match is None:
        return None
    if match.exact is not None:
        exact = match.exact
        if ignore_case:
            folded = exact.lower()
            return lambda value: value.lower() == folded
        return lambda value: value == exact
    if match.prefix is not None:
        prefix = match.prefix
        if ignore_case:
            folded = prefix.lower()
            return lambda value: value.lower().startswith(folded)
        return lambda value: value.startswith(prefix)
    if match.regex is not None:
        try:
            pattern = re.compile(match.regex)
        except re.error as exc:
            raise ValueError(f"{where}.regex: invalid regex {match.regex!r}: {exc}") from None
        return lambda value: pattern.fullmatch(value) is not None
    return None


def _compile_block(block: HTTPMatchRequest, where: str, result: RouteMatch) -> _Block:
    return _Block(
        result,
        uri=_compile(block.uri, f"{where}.uri", ignore_case=block.ignore_uri_case),
        method=_compile(block.method, f"{where}.method"),
        authority=_compile(block.authority, f"{where}.authority"),
        headers=tuple(
            (name.lower(), _compile(check, f"{where}.headers.{name}"))
            for name, check in block.headers
        ),
    )


class _Builder:
    """Resolves destinations to clusters while a table is built; one cluster object per key."""

    def __init__(
        self,
        services: Iterable[Service],
        destination_rules: Iterable[DestinationRule],
        endpoints: Iterable[Endpoint],
    ) -> None:
        services = list(services)
        self.service_names = {service.name for service in services}
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
            if subset is None:
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
        )

    def compile_virtual_service(self, vs: VirtualService) -> tuple[_Block, ...]:
        """The VirtualService's match blocks flattened in order: the first to match wins."""
        blocks: list[_Block] = []
        for index, route in enumerate(vs.http):
            clusters = tuple(self.cluster(dest.destination) for dest in route.route)
            weights = tuple(dest.weight for dest in route.route)
            mirror = self.cluster(route.mirror) if route.mirror is not None else None
            result = RouteMatch(
                virtual_service=vs.name,
                route_index=index,
                route=route,
                clusters=clusters,
                weights=weights,
                mirror=mirror,
            )
            if not route.match:
                blocks.append(_Block(result))
                break  # matches everything: later rules are unreachable
            for match_index, block in enumerate(route.match):
                where = f"VirtualService {vs.name}: http[{index}].match[{match_index}]"
                matched = replace(result, match_index=match_index, match=block)
                blocks.append(_compile_block(block, where, matched))
        return tuple(blocks)


class RoutingTable:
    """An immutable routing snapshot: host and rule matching, clusters, and their balancers.

    Built by :meth:`build`; ``RoutingTable()`` is the empty table that routes nothing. The
    balancer objects it holds are the only mutable part; they are carried to the next snapshot.
    """

    __slots__ = ("_any", "_balancers", "_clusters", "_defaults", "_exact", "_wildcard")

    def __init__(self) -> None:
        self._exact: dict[str, tuple[_Block, ...]] = {}
        self._wildcard: dict[str, tuple[_Block, ...]] = {}  # "*.example.com" as ".example.com"
        self._any: tuple[_Block, ...] | None = None
        self._defaults: dict[str, RouteMatch] = {}
        self._clusters: dict[ClusterKey, Cluster] = {}
        self._balancers: dict[ClusterKey, Balancer] = {}

    @classmethod
    def build(
        cls,
        services: Iterable[Service],
        virtual_services: Iterable[VirtualService],
        destination_rules: Iterable[DestinationRule],
        endpoints: Iterable[Endpoint],
        previous: RoutingTable | None = None,
    ) -> RoutingTable:
        """A snapshot of the given resources; balancers of ``previous`` are kept where a
        cluster's policy is unchanged. Raises ``ValueError`` naming the field for a regex or a
        wildcard host that cannot be compiled."""
        builder = _Builder(services, destination_rules, endpoints)
        table = cls()
        for vs in sorted(virtual_services, key=lambda v: v.name):
            blocks = builder.compile_virtual_service(vs)
            for host in vs.hosts:
                table._add_host(host.lower().rstrip("."), blocks, vs.name)
        for name in sorted(builder.service_names):
            route = HTTPRoute(route=(RouteDestination(destination=Destination(host=name)),))
            table._defaults[name] = RouteMatch(
                virtual_service=None,
                route_index=None,
                route=route,
                clusters=(builder.cluster(Destination(host=name)),),
                weights=(100,),
            )
        table._clusters = builder.clusters
        kept = previous._balancers if previous is not None else {}
        for key, cluster in builder.clusters.items():
            balancer = kept.get(key)
            if balancer is None or balancer.policy != cluster.load_balancer:
                balancer = make_balancer(cluster.load_balancer)
            table._balancers[key] = balancer
        return table

    def _add_host(self, host: str, blocks: tuple[_Block, ...], vs_name: str) -> None:
        if host == "*":
            if self._any is None:
                self._any = blocks
        elif host.startswith("*."):
            self._wildcard.setdefault(host[1:], blocks)
        elif "*" in host:
            raise ValueError(
                f"VirtualService {vs_name}: hosts: unsupported wildcard {host!r} "
                "(only '*' and '*.suffix')"
            )
        else:
            self._exact.setdefault(host, blocks)

    def resolve(
        self, host: str, method: str, path: str, headers: Mapping[str, str]
    ) -> RouteMatch | None:
        """The route for a request, or None (no route: answer 404 ``no_route``).

        ``host`` is the Host/:authority value (normalised here; authority conditions see it as
        given), ``path`` excludes the query string, ``headers`` has lower-case names.
        """
        name = normalize_host(host)
        blocks = self._virtual_service_blocks(name)
        if blocks is None:
            return self._default_route(name)
        for block in blocks:
            if block.matches(path, method, host, headers):
                return block.result
        return None

    def _virtual_service_blocks(self, host: str) -> tuple[_Block, ...] | None:
        blocks = self._exact.get(host)
        if blocks is not None:
            return blocks
        dot = host.find(".")
        if dot != -1:
            blocks = self._exact.get(host[:dot])  # Istio short name
            if blocks is not None:
                return blocks
            wildcard = self._wildcard
            while wildcard and dot != -1:  # longest suffix first
                blocks = wildcard.get(host[dot:])
                if blocks is not None:
                    return blocks
                dot = host.find(".", dot + 1)
        return self._any

    def _default_route(self, host: str) -> RouteMatch | None:
        route = self._defaults.get(host)
        dot = host.rfind(".")
        while route is None and dot > 0:
            route = self._defaults.get(host[:dot])
            dot = host.rfind(".", 0, dot)
        return route

    def pick(self, match: RouteMatch, rng: random.Random) -> Cluster | None:
        """The cluster this request goes to, by the route's weights (a lone destination takes all
        traffic, as in Istio). None when the route has no destination with a positive weight."""
        clusters = match.clusters
        if len(clusters) == 1:
            return clusters[0]
        if not clusters:
            return None
        try:
            return clusters[pick_weighted(match.weights, rng)]
        except ValueError:
            return None

    def balancer_for(self, cluster: Cluster) -> Balancer:
        """The balancer kept for the cluster's (service, subset) in this snapshot."""
        try:
            return self._balancers[cluster.key]
        except KeyError:
            raise KeyError(f"cluster {cluster.key} is not in this routing table") from None

    @property
    def clusters(self) -> Mapping[ClusterKey, Cluster]:
        """Every cluster any route or default route refers to, by (service, subset)."""
        return self._clusters

    def cluster(self, service: str, subset: str | None = None) -> Cluster | None:
        """The cluster for (service, subset) if any route or default route refers to it."""
        return self._clusters.get((service, subset))
