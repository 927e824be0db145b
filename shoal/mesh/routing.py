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
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from immutables import Map

from shoal.mesh.balancer import Balancer, make_balancer
from shoal.mesh.clusters import Cluster, ClusterBuilder, ClusterInputs, ClusterKey
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


@dataclass(frozen=True, slots=True)
class _Compiled:
    """A VirtualService as a table holds it: its match blocks, the host slots it claims
    (``(binding, slot)``: see :func:`_slot`) and the clusters its routes name."""

    vs: VirtualService
    blocks: tuple[MatchBlock, ...]
    slots: tuple[tuple[str, str], ...]
    clusters: frozenset[ClusterKey]


@dataclass(frozen=True, slots=True)
class TableChange:
    """A new table and what it changed from the one it was made from: the clusters made
    again or new (``remade``) and those no route names any more (``dropped``)."""

    table: RoutingTable
    remade: frozenset[ClusterKey]
    dropped: frozenset[ClusterKey]


class RoutingTable:
    """An immutable routing snapshot: host and rule matching, clusters, and their balancers.

    Built by :meth:`build`, or made from another by :meth:`changed`; its tables are persistent
    maps (:mod:`immutables`), so a changed table shares everything that did not change with
    the one it was made from, object for object. ``RoutingTable()`` is the empty table that
    routes nothing. The balancer objects it holds are the only mutable part; they are carried
    to the next snapshot.
    """

    __slots__ = (
        "_any",
        "_balancers",
        "_bound",
        "_claims",
        "_clusters",
        "_compiled",
        "_defaults",
        "_exact",
        "_inputs",
        "_owned",
        "_refs",
        "_users",
        "_wildcard",
    )

    def __init__(self) -> None:
        self._bound: dict[str, RoutingTable] = {}  # Gateway name -> the routes bound to it
        self._exact: Map[str, tuple[MatchBlock, ...]] = Map()
        self._wildcard: Map[str, tuple[MatchBlock, ...]] = Map()  # "*.a.com" as ".a.com"
        self._any: tuple[MatchBlock, ...] | None = None
        self._defaults: Map[str, RouteMatch] = Map()
        self._clusters: Map[ClusterKey, Cluster] = Map()
        self._balancers: Map[ClusterKey, Balancer] = Map()
        # What changes are made from (the mesh table's; a bound table keeps none of it):
        self._inputs = ClusterInputs()
        self._compiled: Map[str, _Compiled] = Map()  # by VirtualService name
        # (binding, slot) -> the blocks of each VirtualService claiming it; the first by name wins
        self._claims: Map[tuple[str, str], Map[str, tuple[MatchBlock, ...]]] = Map()
        # service -> its default routes' hosts, each with its subset (None: the latest ready)
        self._owned: Mapping[str, tuple[tuple[str, str | None], ...]] = {}
        self._refs: Map[ClusterKey, int] = Map()  # routes naming each cluster
        self._users: Map[str, frozenset[str]] = Map()  # service -> VirtualServices naming it

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
        inputs = ClusterInputs.of(services, destination_rules, endpoints, entries)
        named = {vs.name: vs for vs in virtual_services}
        kept = previous._balancers if previous is not None else Map()
        return _Draft(cls(), inputs, kept).change(inputs.service_names, named).table

    def changed(
        self,
        inputs: ClusterInputs,
        services: Collection[str],
        virtual_services: Mapping[str, VirtualService | None],
    ) -> TableChange:
        """This table with ``inputs`` in which only ``services`` changed (their endpoints or
        DestinationRule: their clusters are made again, and the routes that name them) and
        with the VirtualServices in ``virtual_services`` compiled again (None: deleted). Costs
        what changed, not the size of the table. Raises ``ValueError`` as :meth:`build`."""
        return _Draft(self, inputs, self._balancers).change(services, virtual_services)

    @property
    def inputs(self) -> ClusterInputs:
        """What this table's clusters are made of (copy it to change it: :meth:`changed`)."""
        return self._inputs

    def bound(self, gateway: str | None) -> RoutingTable:
        """The routes of the VirtualServices bound to the Gateway named ``gateway`` (no
        default routes: a Gateway serves what is bound to it); this table for None."""
        if gateway is None:
            return self
        return self._bound.get(gateway) or _UNBOUND

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


def _slot(host: str, vs_name: str) -> tuple[str, ...]:
    """The index slots a VirtualService host claims: ``*``, ``.suffix`` for ``*.suffix``, or
    ``=host`` (and ``=service`` for a mesh service's long name, reached by its short one)."""
    if host == "*":
        return ("*",)
    if host.startswith("*."):
        return (host[1:],)
    if "*" in host:
        raise ValueError(
            f"VirtualService {vs_name}: hosts: unsupported wildcard {host!r} "
            "(only '*' and '*.suffix')"
        )
    service = mesh_service(host)
    if service is not None and service != host:  # hello.default.svc.cluster.local
        return (f"={host}", f"={service}")  # is reached as hello too
    return (f"={host}",)


def _compile(vs: VirtualService, builder: ClusterBuilder) -> _Compiled:
    blocks = compile_virtual_service(vs, builder)
    slots = tuple(
        (binding, slot)
        for binding in vs.gateways or (MESH_GATEWAY,)
        for host in vs.hosts
        for slot in _slot(host.lower().rstrip("."), vs.name)
    )
    clusters = {c.key for block in blocks for c in block.result.clusters}
    clusters.update(b.result.mirror.key for b in blocks if b.result.mirror is not None)
    return _Compiled(vs, blocks, slots, frozenset(clusters))


def _default_hosts(inputs: ClusterInputs) -> dict[str, tuple[tuple[str, str | None], ...]]:
    """Each service's default route hosts, by host: its name (subset None: the latest ready
    revision), and ``<tag>-<service>`` for each tagged revision (Knative's tag hosts), unless a
    service has that name or an earlier tagged revision (by service, then revision name) has
    that host."""
    names = inputs.service_names
    tagged = sorted(
        (name, r.revision, r.tags) for name, rs in inputs.revisions.items() for r in rs if r.tags
    )
    owner: dict[str, tuple[str, str]] = {}
    for name, revision, tags in tagged:
        for tag in tags:
            host = f"{tag}-{name}"
            if host not in names:
                owner.setdefault(host, (name, revision))
    owned: dict[str, tuple[tuple[str, str | None], ...]] = {name: ((name, None),) for name in names}
    for host, (service, subset) in owner.items():
        owned[service] = tuple(sorted((*owned[service], (host, subset)), key=lambda h: h[0]))
    return owned


def _whole(builder: ClusterBuilder, destination: Destination) -> RouteMatch:
    """A route that sends everything to ``destination``."""
    return RouteMatch(
        virtual_service=None,
        route_index=None,
        route=HTTPRoute(route=(RouteDestination(destination=destination),)),
        clusters=(builder.cluster(destination),),
        weights=(100,),
    )


class _Draft:
    """A routing table being made from another (``base``): its tables as mutations of the
    base's, finished into the new table by :meth:`change`."""

    def __init__(
        self, base: RoutingTable, inputs: ClusterInputs, kept: Map[ClusterKey, Balancer]
    ) -> None:
        self.base, self.inputs, self.kept = base, inputs, kept
        self.owned = base._owned
        if (  # (services came, went or were retagged: who holds which host may change)
            inputs.revisions is not base._inputs.revisions
            or inputs.service_names is not base._inputs.service_names
        ):
            self.owned = _default_hosts(inputs)
        self.hosts: dict[str, _Hosts] = {}  # by binding (mesh, Gateway names): those changed
        self.defaults = base._defaults.mutate()
        self.clusters, self.balancers = base._clusters.mutate(), base._balancers.mutate()
        self.compiled, self.claims = base._compiled.mutate(), base._claims.mutate()
        self.refs, self.users = base._refs.mutate(), base._users.mutate()
        self.touched: set[ClusterKey] = set()  # whose reference counts went down

    def change(
        self, services: Collection[str], virtual_services: Mapping[str, VirtualService | None]
    ) -> TableChange:
        """Make the clusters of ``services`` again, compile ``virtual_services`` (and those
        naming ``services``) again, and finish the table."""
        base = self.base
        builder = ClusterBuilder(self.inputs, self.clusters, stale=services)
        recompile = dict(virtual_services)
        for service in services:
            for name in base._users.get(service, ()):
                if name not in recompile:
                    recompile[name] = base._compiled[name].vs
        slots: set[tuple[str, str]] = set()
        for name, vs in recompile.items():
            old = self.compiled.pop(name, None)
            if old is not None:
                self._forget(name, old)
                slots.update(old.slots)
            if vs is not None:
                compiled = self.compiled[name] = _compile(vs, builder)
                self._remember(name, compiled)
                slots.update(compiled.slots)
        self._set_defaults(services, builder)
        for binding, slot in slots:
            self._settle(binding, slot)
        dropped = {key for key in self.touched if not self.refs.get(key)}
        for key in dropped:
            self.refs.pop(key, None)
            del self.clusters[key]
            del self.balancers[key]
        remade = builder.made - dropped
        for key in remade:
            cluster = self.clusters[key]
            balancer = self.kept.get(key)
            if balancer is None or balancer.policy != cluster.load_balancer:
                balancer = make_balancer(cluster.load_balancer)
            self.balancers[key] = balancer
        return TableChange(self._finish(), frozenset(remade), frozenset(dropped))

    def _finish(self) -> RoutingTable:
        base = self.base
        new = RoutingTable.__new__(RoutingTable)
        new._inputs, new._owned = self.inputs, self.owned
        new._exact, new._wildcard, new._any = base._exact, base._wildcard, base._any
        new._defaults = self.defaults.finish()
        new._clusters, new._balancers = self.clusters.finish(), self.balancers.finish()
        new._compiled, new._claims = self.compiled.finish(), self.claims.finish()
        new._refs, new._users = self.refs.finish(), self.users.finish()
        new._bound = {}
        for name, old in base._bound.items():
            new._bound[name] = bound = RoutingTable()
            bound._exact, bound._wildcard, bound._any = old._exact, old._wildcard, old._any
        for binding, hosts in self.hosts.items():
            if binding == MESH_GATEWAY:
                hosts.finish(new)
            else:
                hosts.finish(new._bound.setdefault(binding, RoutingTable()))
        for bound in new._bound.values():
            bound._clusters, bound._balancers = new._clusters, new._balancers
        return new

    def _remember(self, name: str, compiled: _Compiled) -> None:
        for slot in compiled.slots:
            self.claims[slot] = self.claims.get(slot, _NO_CLAIMS).set(name, compiled.blocks)
        for key in compiled.clusters:
            self.refs[key] = self.refs.get(key, 0) + 1
        for service in {key[0] for key in compiled.clusters}:
            self.users[service] = self.users.get(service, frozenset()) | {name}

    def _forget(self, name: str, compiled: _Compiled) -> None:
        for slot in compiled.slots:
            claims = self.claims[slot].delete(name)
            if claims:
                self.claims[slot] = claims
            else:
                del self.claims[slot]
        for key in compiled.clusters:
            self.refs[key] -= 1
            self.touched.add(key)
        for service in {key[0] for key in compiled.clusters}:
            users = self.users[service] - {name}
            if users:
                self.users[service] = users
            else:
                del self.users[service]

    def _set_defaults(self, services: Collection[str], builder: ClusterBuilder) -> None:
        """Make the default routes of ``services`` and of those whose hosts changed hands
        again (Knative's: the latest ready revision for the service's own host, each tagged
        revision for its tag host)."""
        inputs, was, owned = self.inputs, self.base._owned, self.owned
        if owned is not was:  # (worked out again: some hosts may have changed hands)
            services = {*services, *(s for s in {*was, *owned} if was.get(s) != owned.get(s))}
        for service in services:
            for host, _ in was.get(service, ()):
                old = self.defaults.pop(host, None)
                if old is not None:
                    self.refs[old.clusters[0].key] -= 1
                    self.touched.add(old.clusters[0].key)
        for service in services:
            for host, subset in owned.get(service, ()):
                if subset is None:
                    # As in Knative: the latest ready revision (its subset by name) serves a
                    # service no VirtualService routes (one of a single revision is the whole
                    # service).
                    revisions = inputs.revisions.get(service, ())
                    ready = {e.revision_key for e in inputs.ready.get(service, ())}
                    latest = latest_ready(revisions, ready) if len(revisions) > 1 else None
                    subset = latest.revision if latest is not None else None
                destination = Destination(host=service, subset=subset)
                route = self.defaults[host] = _whole(builder, destination)
                key = route.clusters[0].key
                self.refs[key] = self.refs.get(key, 0) + 1

    def _settle(self, binding: str, slot: str) -> None:
        """Set the host ``slot`` of ``binding`` to the blocks of the first VirtualService by
        name that claims it (or none)."""
        claims = self.claims.get((binding, slot))
        hosts = self.hosts.get(binding)
        if hosts is None:
            table = self.base if binding == MESH_GATEWAY else self.base._bound.get(binding)
            hosts = self.hosts[binding] = _Hosts(table or _UNBOUND)
        hosts.set(slot, claims[min(claims)] if claims else None)


class _Hosts:
    """A table's host index (exact, wildcard and ``*`` hosts) while a draft changes it."""

    def __init__(self, table: RoutingTable) -> None:
        self.exact, self.wildcard = table._exact.mutate(), table._wildcard.mutate()
        self.any = table._any

    def set(self, slot: str, blocks: tuple[MatchBlock, ...] | None) -> None:
        """Host ``slot`` (see :func:`_slot`) goes to ``blocks`` (None: to none)."""
        if slot == "*":
            self.any = blocks
            return
        index, host = (self.wildcard, slot) if slot[0] == "." else (self.exact, slot[1:])
        if blocks is None:
            index.pop(host, None)
        else:
            index[host] = blocks

    def finish(self, table: RoutingTable) -> None:
        """Give ``table`` this index."""
        table._exact, table._wildcard, table._any = (
            self.exact.finish(),
            self.wildcard.finish(),
            self.any,
        )


_NO_CLAIMS: Map[str, tuple[MatchBlock, ...]] = Map()


_UNBOUND = RoutingTable()
