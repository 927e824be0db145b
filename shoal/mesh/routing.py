"""The routing snapshot: which destination clusters a request goes to.

A :class:`RoutingTable` is built once per config or registry change from the Services,
VirtualServices, DestinationRules and endpoints of the moment, and swapped in by one assignment.
Building does all the work (regexes compiled, hosts indexed, clusters and their ready endpoints
grouped, every possible :class:`~shoal.mesh.matching.RouteMatch` made in advance), so
:meth:`RoutingTable.resolve` is dict lookups and precompiled checks that allocate nothing.

Host lookup (the request host lower-cased, port and trailing dot removed), first hit wins:

1. a VirtualService host equal to it;
2. an Istio short name: VirtualService host ``hello`` (no dot) covers ``hello.<anything>``;
3. the longest wildcard suffix: ``*.b.example.com`` before ``*.example.com``;
4. a VirtualService host ``*``;
5. no VirtualService: the default route of the Service named like the host (or like its
   longest ``name.`` prefix) to all its ready endpoints, as Kubernetes routes a Service.

Several VirtualServices claiming one host: the first by name wins. Within one, the rules and
their match blocks are tried in order (:mod:`shoal.mesh.matching`); destinations resolve to
clusters as :mod:`shoal.mesh.clusters` says.
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from shoal.mesh.balancer import Balancer, make_balancer
from shoal.mesh.clusters import Cluster, ClusterBuilder, ClusterKey
from shoal.mesh.matching import (
    NO_LABELS,
    MatchBlock,
    RouteMatch,
    compile_virtual_service,
    normalize_host,
)
from shoal.mesh.split import pick_weighted
from shoal.resources.endpoint import Endpoint
from shoal.resources.hosts import mesh_service
from shoal.resources.model import MESH_GATEWAY, Destination, HTTPRoute, RouteDestination
from shoal.resources.weights import latest_ready

if TYPE_CHECKING:  # annotations only
    from shoal.resources.model import DestinationRule, Service, ServiceEntry, VirtualService


class RoutingTable:
    """An immutable routing snapshot: host and rule matching, clusters, and their balancers.

    Built by :meth:`build`; ``RoutingTable()`` is the empty table that routes nothing. The
    balancer objects it holds are the only mutable part; they are carried to the next snapshot.
    """

    __slots__ = ("_any", "_balancers", "_bound", "_clusters", "_defaults", "_exact", "_wildcard")

    def __init__(self) -> None:
        self._bound: dict[str, RoutingTable] = {}  # Gateway name -> the routes bound to it
        self._exact: dict[str, tuple[MatchBlock, ...]] = {}
        self._wildcard: dict[str, tuple[MatchBlock, ...]] = {}  # "*.example.com" as ".example.com"
        self._any: tuple[MatchBlock, ...] | None = None
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
        entries: Iterable[ServiceEntry] = (),
    ) -> RoutingTable:
        """A snapshot of the given resources; balancers of ``previous`` are kept where a
        cluster's policy is unchanged. Raises ``ValueError`` naming the field for a regex or a
        wildcard host that cannot be compiled.

        As in Istio, a VirtualService applies in the mesh (and at the gateway's own listeners,
        ``--port``/``--tls-port``) when its ``gateways`` is empty or names ``mesh``, and at the
        listeners of each Gateway it names (:meth:`bound`)."""
        builder = ClusterBuilder(services, destination_rules, endpoints, entries)
        table = cls()
        for vs in sorted(virtual_services, key=lambda v: v.name):
            blocks = compile_virtual_service(vs, builder)
            bindings = vs.gateways or (MESH_GATEWAY,)
            for gateway in bindings:
                target = (
                    table if gateway == MESH_GATEWAY else table._bound.setdefault(gateway, cls())
                )
                for host in vs.hosts:
                    target._add_host(host.lower().rstrip("."), blocks, vs.name)
        ready = {e.revision_key for group in builder.ready.values() for e in group}
        for name in sorted(builder.service_names):
            # As in Knative: the latest ready revision (its subset by name) serves a service no
            # VirtualService routes (one of a single revision is the whole service).
            revisions = builder.revisions.get(name, ())
            latest = latest_ready(revisions, ready) if len(revisions) > 1 else None
            destination = Destination(host=name, subset=latest.revision if latest else None)
            table._defaults[name] = _whole(builder, destination)
        for name, revisions in sorted(builder.revisions.items()):
            for revision in revisions:  # Knative's tag hosts: <tag>-<service>, one revision
                for tag in revision.tags:
                    tagged = Destination(host=name, subset=revision.revision)
                    table._defaults.setdefault(f"{tag}-{name}", _whole(builder, tagged))
        table._clusters = builder.clusters
        kept = previous._balancers if previous is not None else {}
        for key, cluster in builder.clusters.items():
            balancer = kept.get(key)
            if balancer is None or balancer.policy != cluster.load_balancer:
                balancer = make_balancer(cluster.load_balancer)
            table._balancers[key] = balancer
        for bound in table._bound.values():
            bound._clusters, bound._balancers = table._clusters, table._balancers
        return table

    def bound(self, gateway: str | None) -> RoutingTable:
        """The routes of the VirtualServices bound to the Gateway named ``gateway`` (no
        default routes: a Gateway serves what is bound to it); this table for None."""
        if gateway is None:
            return self
        return self._bound.get(gateway) or _UNBOUND

    def _add_host(self, host: str, blocks: tuple[MatchBlock, ...], vs_name: str) -> None:
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
            service = mesh_service(host)
            if service is not None and service != host:  # hello.default.svc.cluster.local
                self._exact.setdefault(service, blocks)  # is reached as hello too

    def resolve(
        self,
        host: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        query: str = "",
        source: Mapping[str, str] = NO_LABELS,
    ) -> RouteMatch | None:
        """The route for a request, or None (no route: answer 404 ``no_route``).

        ``host`` is the Host/:authority value (normalised here; authority conditions see it as
        given), ``path`` excludes the query string (``query``), ``headers`` has lower-case names,
        ``source`` holds the calling workload's labels.
        """
        name = normalize_host(host)
        blocks = self._virtual_service_blocks(name)
        if blocks is None:
            return self._default_route(name)
        for block in blocks:
            if block.matches(path, method, host, headers, query, source):
                return block.result
        return None

    def _virtual_service_blocks(self, host: str) -> tuple[MatchBlock, ...] | None:
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
        index = self.pick_index(match, rng)
        return None if index is None else match.clusters[index]

    @staticmethod
    def pick_index(match: RouteMatch, rng: random.Random) -> int | None:
        """The index in ``match.clusters`` of the destination :meth:`pick` chooses."""
        count = len(match.clusters)
        if count == 1:
            return 0
        if not count:
            return None
        try:
            return pick_weighted(match.weights, rng)
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


def _whole(builder: ClusterBuilder, destination: Destination) -> RouteMatch:
    """A route that sends everything to ``destination``."""
    return RouteMatch(
        virtual_service=None,
        route_index=None,
        route=HTTPRoute(route=(RouteDestination(destination=destination),)),
        clusters=(builder.cluster(destination),),
        weights=(100,),
    )


_UNBOUND = RoutingTable()
