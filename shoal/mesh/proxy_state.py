"""The state every proxy (gateway, node router) keeps: snapshot, per-cluster state, stats.

A proxy process keeps one :class:`ProxyState`; the :class:`~shoal.mesh.forward.Forwarder`
is what sends requests with it. Each store view is turned into one immutable :class:`Snapshot`
(routing table, node routers' addresses, instances, authorization, mTLS modes), swapped in by
one assignment. A request captures the snapshot once — :meth:`ProxyState.decide` puts it in
the :class:`Route` — and uses that one to the end, whatever happens meanwhile: a node that
leaves while a request body is read cannot pull an address from under it. Per-cluster state
(outliers, breaker, retry budget) outlives snapshots on purpose.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.http.headers import HeaderEdit
from shoal.http.refusal import NO_HEALTHY_UPSTREAM, NO_ROUTE, Refusal
from shoal.mesh.authz import Authorizer, WorkloadAuthorizer, compile_policies, mtls_mode
from shoal.mesh.balancer import Balancer
from shoal.mesh.breaker import Breaker
from shoal.mesh.clusters import Cluster, ClusterInputs, ClusterKey
from shoal.mesh.external import Probe, entry_endpoints, probes
from shoal.mesh.hashing import rendezvous
from shoal.mesh.load import LoadMeter
from shoal.mesh.matching import NO_LABELS, RouteMatch
from shoal.mesh.outlier import OutlierDetector
from shoal.mesh.retry import RetryBudget, RetryPolicy, effective
from shoal.mesh.routing import RoutingTable
from shoal.mesh.stats import Stats
from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import StoredResources
from shoal.resources.model import (
    AuthorizationPolicy,
    DestinationRule,
    Gateway,
    HTTPDirectResponse,
    HTTPRedirect,
    MtlsMode,
    OutlierDetection,
    PeerAuthentication,
    Resource,
    Service,
    ServiceEntry,
    VirtualService,
)
from shoal.store.connection import off_loop
from shoal.store.registry import INSTANCE, NODE
from shoal.store.watch import View

log = logging.getLogger(__name__)

CONFIG_KINDS = (
    "Service",
    "VirtualService",
    "DestinationRule",
    "AuthorizationPolicy",
    "PeerAuthentication",
    "Gateway",
    "ServiceEntry",
)

# What a view may change for the snapshot to be changed in place (every kind a proxy follows;
# else it is built whole, see ProxyState.update).
_INCREMENTAL = frozenset({INSTANCE, NODE, *CONFIG_KINDS})

# Like Linkerd's failure accrual, outlier detection is on even without a DestinationRule saying
# so, with Istio's default thresholds.
DEFAULT_OUTLIER = OutlierDetection()


@dataclass(slots=True)
class ClusterState:
    """Per-cluster state a proxy keeps across snapshots: outliers, breaker, retry budget."""

    detector: OutlierDetector
    breaker: Breaker
    budget: RetryBudget


def mesh_addresses(view: View) -> dict[str, str]:
    """Node id → ``host:port`` of its router's inbound mTLS listener, for live nodes."""
    return {node: str(r["mesh"]) for node, r in view.nodes.items() if r.get("mesh")}


def _to_place(view: View, changes: Mapping[str, frozenset[str]]) -> set[str]:
    """The instances whose place in the clusters may have changed: those that changed, and
    those on nodes that came, went or changed (an instance in the mesh is reachable only
    through its node's router). Finding the latter reads every instance's node: a
    millisecond at 20,000, where building the snapshot again took hundreds."""
    names = set(changes.get(INSTANCE, ()))
    nodes = changes.get(NODE)
    if nodes:
        names.update(key for key, e in view.instances.items() if e.node in nodes)
    return names


def table_from_view(
    view: View,
    previous: RoutingTable | None,
    stored: StoredResources,
    meshes: Mapping[str, str],
    unreachable: Collection[str] = (),
) -> RoutingTable:
    """Build a routing snapshot from the view's documents (bad documents are skipped).

    An instance run by a Shoal node is reachable only through that node's router, so one
    whose node is not live (no inbound address) is left out; a ServiceEntry endpoint whose key
    is in ``unreachable`` fails its health checks and is not ready.
    """
    parsed = [r for kind in CONFIG_KINDS for r in stored.parse(kind, view.documents(kind)).values()]
    # (by name: two on one host with different protocols, the last one's counts)
    entries = sorted((r for r in parsed if isinstance(r, ServiceEntry)), key=lambda r: r.name)
    return RoutingTable.build(
        [r for r in parsed if isinstance(r, Service)],
        [r for r in parsed if isinstance(r, VirtualService)],
        [r for r in parsed if isinstance(r, DestinationRule)],
        [
            *(e for e in view.instances.values() if not e.mtls or e.node in meshes),
            *entry_endpoints(entries, unreachable),
        ],
        previous=previous,
        entries=entries,
    )


def authorizer_from_view(view: View, stored: StoredResources) -> Authorizer:
    """The view's AuthorizationPolicies, compiled with its services' accounts."""
    docs = stored.parse("AuthorizationPolicy", view.documents("AuthorizationPolicy"))
    if not docs:  # (allow all: no need to read every Service for its account)
        return compile_policies(())
    accounts: dict[str, set[str]] = {}
    for service in stored.parse("Service", view.documents("Service")).values():
        if isinstance(service, Service):
            accounts.setdefault(service.service_account, set()).add(service.name)
    policies = (r for r in docs.values() if isinstance(r, AuthorizationPolicy))
    return compile_policies(policies, accounts)


@dataclass(frozen=True, slots=True)
class Workload:
    """What a router enforces for one instance, resolved once per snapshot: the policies whose
    selectors match its labels and its PeerAuthentication mode."""

    authz: WorkloadAuthorizer
    mtls_mode: MtlsMode


def _empty_table() -> RoutingTable:
    return RoutingTable.build([], [], [], [])


@dataclass(frozen=True, slots=True, kw_only=True)
class Snapshot:
    """Everything a proxy routes and checks by, from one store view; never changed once built.

    The two memo dicts only cache what follows from the rest (per snapshot, not per request).
    """

    revision: int = 0
    table: RoutingTable = field(default_factory=_empty_table)
    meshes: Mapping[str, str] = field(default_factory=dict)  # node id -> its router's address
    instances: Mapping[str, Endpoint] = field(default_factory=dict)  # every instance, by key
    authorizer: Authorizer = field(default_factory=lambda: compile_policies(()))
    peer_authentications: tuple[PeerAuthentication, ...] = ()
    plaintext_allowed: bool = False  # does any PeerAuthentication let plaintext in
    gateways: tuple[Gateway, ...] = ()  # the Gateways, by name: the edge's listeners
    probes: tuple[Probe, ...] = ()  # ServiceEntry endpoints this proxy checks itself
    workloads: dict[str, Workload] = field(default_factory=dict)  # memo, by instance key
    retry_policies: dict[int, RetryPolicy] = field(default_factory=dict)  # memo, by route id

    def workload(self, endpoint: Endpoint) -> Workload:
        """The authorization and mTLS mode of ``endpoint`` (resolved on first use)."""
        found = self.workloads.get(endpoint.key)
        if found is None:
            labels = dict(endpoint.labels)
            found = self.workloads[endpoint.key] = Workload(
                self.authorizer.for_workload(labels), mtls_mode(self.peer_authentications, labels)
            )
        return found

    def retry_policy(self, match: RouteMatch) -> RetryPolicy:
        """The effective retry policy of a route (computed once per snapshot)."""
        policy = self.retry_policies.get(id(match))
        if policy is None:
            policy = effective(match.route.retries, match.route.timeout)
            self.retry_policies[id(match)] = policy
        return policy


@dataclass(frozen=True, slots=True)
class Route:
    """Where one request goes, short of the instance: the snapshot it was decided on, route,
    cluster, balancer, path to send."""

    snapshot: Snapshot
    match: RouteMatch
    cluster: Cluster
    balancer: Balancer
    path: str
    rewritten: bool
    authority: str | None = None  # the Host to send, when the route rewrites it
    request_edits: tuple[HeaderEdit, ...] = ()  # the route's header operations on the request
    response_edits: tuple[HeaderEdit, ...] = ()  # and on the response


Decision = Route | Refusal | HTTPRedirect | HTTPDirectResponse
"""Where a request goes, why it goes nowhere, or the answer its route gives itself."""


class ProxyState:
    """The current snapshot, the per-cluster state and the stats of one proxy process; makes
    the synchronous decisions (route, pick) of the request path."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self._stored = StoredResources()
        self._whole = StoredResources()  # (the thread that builds snapshots whole has its own)
        self.snapshot = Snapshot()
        self.load = LoadMeter(time.monotonic())  # per revision, for the autoscaler
        self.changed = asyncio.Event()  # set (and replaced) on every new snapshot
        self.unreachable: frozenset[str] = frozenset()  # ServiceEntry endpoints failing checks
        self._view: View | None = None  # the last one, to rebuild from when those change
        self._rebuild = False  # the last view could not be applied: build the next one whole
        self.extra_reports: list[Callable[[], Mapping[str, Any]]] = []
        self.last_report: dict[str, Any] = {}  # what report() returned last, for /metrics
        self.applied = False  # a view of the store has been applied (the process is ready)
        self._reports = 0
        self.rng = rng or random.Random()
        self.stats = Stats()
        self.clusters: dict[ClusterKey, ClusterState] = {}

    # The current snapshot's parts, for readers outside the request path (reports, tests).
    @property
    def revision(self) -> int:
        """The store revision of the current snapshot."""
        return self.snapshot.revision

    @property
    def table(self) -> RoutingTable:
        """The current routing table."""
        return self.snapshot.table

    @property
    def plaintext_allowed(self) -> bool:
        """Whether any PeerAuthentication now lets plaintext in (asked per new connection)."""
        return self.snapshot.plaintext_allowed

    def set_unreachable(self, keys: frozenset[str]) -> None:
        """The ServiceEntry endpoints now failing their health checks: a new snapshot without
        them (and with those that recovered)."""
        if keys == self.unreachable:
            return
        was, self.unreachable = self.unreachable, keys
        view = self._view
        if view is not None and not self._changed_in_place(replace(view, changes={}), was):
            self.update(view, whole=True)

    async def apply(self, view: View) -> None:
        """:meth:`update` without holding up the requests this process serves: a snapshot
        built whole (hundreds of ms at 20,000 instances) is built in a thread, so the event
        loop goes on serving meanwhile (:func:`off_loop`); a change is applied at once, on the
        loop."""
        if self._changed_in_place(view):
            return
        meshes, unreachable = mesh_addresses(view), self.unreachable
        try:
            table = await off_loop(
                table_from_view, view, self.snapshot.table, self._whole, meshes, unreachable
            )
        except ValueError as e:
            self._failed(view, e)
            return
        if unreachable is not self.unreachable:  # (changed meanwhile: build it on the loop)
            self.update(view, whole=True)
            return
        self._view = view
        self._install(view, table, meshes)
        self._done()

    def update(self, view: View, *, whole: bool = False) -> None:
        """Swap in a snapshot built from ``view``; keep the old one if it cannot be built.

        When the view says what changed since the one before it (any kinds of
        :data:`_INCREMENTAL`: all a proxy follows), the new snapshot is the old one changed
        where they are (:meth:`RoutingTable.changed`: a change costs its own size, whatever the
        cluster's); when it was loaded whole (a start, a reconnect), or with ``whole``,
        everything is built again."""
        if not whole and self._changed_in_place(view):
            return
        self._view = view
        meshes = mesh_addresses(view)
        try:
            table = table_from_view(
                view, self.snapshot.table, self._stored, meshes, self.unreachable
            )
        except ValueError as e:
            self._failed(view, e)
            return
        self._install(view, table, meshes)
        self._done()

    def _changed_in_place(self, view: View, unreachable: frozenset[str] | None = None) -> bool:
        """Apply ``view`` as a change of the current snapshot if it can be (``unreachable``:
        the ServiceEntry endpoints failing checks in it, if they changed since); False when it
        must be built whole (True too when it could not be applied: the previous one is
        kept)."""
        previous, changes = self._view, view.changes
        if (
            self._rebuild
            or previous is None
            or changes is None
            or not _INCREMENTAL.issuperset(changes)
        ):
            return False
        try:
            was = self.unreachable if unreachable is None else unreachable
            self._change(view, previous, changes, was)
        except ValueError as e:
            self._failed(view, e)
            return True
        self._view = view
        self._done()
        return True

    def _failed(self, view: View, error: ValueError) -> None:
        """``view`` could not be applied: keep the previous snapshot, build the next whole."""
        log.error("keeping the previous routing snapshot: %s", error)
        self._view, self._rebuild = view, True

    def _done(self) -> None:
        """A new snapshot is in: say so."""
        self._rebuild = False
        self.applied = True
        self.changed.set()
        self.changed = asyncio.Event()

    def _install(self, view: View, table: RoutingTable, meshes: dict[str, str]) -> None:
        """Swap in the snapshot of ``view`` around ``table``, built whole."""
        for key, cluster in table.clusters.items():
            self._cluster_changed(key, cluster)
        for key in set(self.clusters) - set(table.clusters):
            del self.clusters[key]
        self.snapshot = Snapshot(
            revision=view.revision,
            table=table,
            meshes=meshes,
            instances=view.instances,
            authorizer=authorizer_from_view(view, self._stored),
            **self._peer_authentications(view),
            gateways=self._gateways(view),
            probes=self._probes(view, table),
        )

    def _change(
        self,
        view: View,
        previous: View,
        changes: Mapping[str, frozenset[str]],
        unreachable: frozenset[str],
    ) -> None:
        """Change the snapshot by ``changes``, from ``previous`` to ``view`` (any kinds of
        :data:`_INCREMENTAL`), and from ``unreachable`` ServiceEntry endpoints to
        :attr:`unreachable`."""
        meshes = mesh_addresses(view)
        snapshot = self.snapshot
        inputs = snapshot.table.inputs.copy()
        services: set[str] = set()  # whose clusters are made again
        for revision in changes.get("Service", ()):
            service = self._parsed(view, "Service", revision)
            services.add(
                inputs.set_revision(revision, service if isinstance(service, Service) else None)
            )
        moved: set[str] = set()  # services some of whose instances changed
        for name in _to_place(view, changes):
            old, new = previous.instances.get(name), view.instances.get(name)
            reachable = new is not None and (not new.mtls or new.node in meshes)
            inputs.set_endpoint(name, old, new if reachable else None)
            moved.update(e.service for e in (old, new) if e is not None)
        entries = "ServiceEntry" in changes or unreachable != self.unreachable
        if entries:
            now = self._entries(view)
            moved |= self._place_entries(inputs, self._entries(previous), unreachable, now)
            services |= inputs.set_entries(now)
        services.update(service for service in moved if inputs.settle(service))
        for name in changes.get("DestinationRule", ()):
            rule = self._parsed(view, "DestinationRule", name)
            services |= inputs.set_rule(name, rule if isinstance(rule, DestinationRule) else None)
        virtual_services: dict[str, VirtualService | None] = {}
        for name in changes.get("VirtualService", ()):
            vs = self._parsed(view, "VirtualService", name)
            virtual_services[name] = vs if isinstance(vs, VirtualService) else None
        change = snapshot.table.changed(inputs, services, virtual_services)
        table = change.table
        for key in change.remade:
            self._cluster_changed(key, table.clusters[key])
        for key in change.dropped:
            self.clusters.pop(key, None)
        self.snapshot = replace(
            snapshot,
            revision=view.revision,
            table=table,
            meshes=meshes,
            instances=view.instances,
            probes=(
                self._probes(view, table)
                if entries or "DestinationRule" in changes
                else snapshot.probes
            ),
            authorizer=(
                authorizer_from_view(view, self._stored)
                if "Service" in changes or "AuthorizationPolicy" in changes
                else snapshot.authorizer
            ),
            gateways=self._gateways(view) if "Gateway" in changes else snapshot.gateways,
            workloads={},
            retry_policies={},
            **(self._peer_authentications(view) if "PeerAuthentication" in changes else {}),
        )

    def _place_entries(
        self,
        inputs: ClusterInputs,
        was: list[ServiceEntry],
        unreachable: frozenset[str],
        now: list[ServiceEntry],
    ) -> set[str]:
        """Place the endpoints of the ServiceEntries ``now`` (healthy unless in
        :attr:`unreachable`) where those of the ones there ``was`` (by ``unreachable``) were;
        the hosts whose endpoints changed."""
        old = {e.key: e for e in entry_endpoints(was, unreachable)}
        new = {e.key: e for e in entry_endpoints(now, self.unreachable)}
        hosts: set[str] = set()
        for key in {*old, *new}:
            before, after = old.get(key), new.get(key)
            if before != after:
                inputs.set_endpoint(key, before, after)
                hosts.update(e.service for e in (before, after) if e is not None)
        return hosts

    def _entries(self, view: View) -> list[ServiceEntry]:
        """``view``'s ServiceEntries, by name."""
        return [r for r in self._stored_of(view, "ServiceEntry") if isinstance(r, ServiceEntry)]

    def _gateways(self, view: View) -> tuple[Gateway, ...]:
        """``view``'s Gateways, by name: the edge's listeners."""
        return tuple(r for r in self._stored_of(view, "Gateway") if isinstance(r, Gateway))

    def _peer_authentications(self, view: View) -> dict[str, Any]:
        """The snapshot's fields of ``view``'s PeerAuthentications."""
        policies = tuple(
            r
            for r in self._stored_of(view, "PeerAuthentication")
            if isinstance(r, PeerAuthentication)
        )
        return {
            "peer_authentications": policies,
            "plaintext_allowed": any(p.mtls_mode in ("PERMISSIVE", "DISABLE") for p in policies),
        }

    def _parsed(self, view: View, kind: str, name: str) -> Resource | None:
        return self._stored.parse_one(kind, name, view.documents(kind).get(name))

    def _probes(self, view: View, table: RoutingTable) -> tuple[Probe, ...]:
        """The ServiceEntry endpoints this proxy checks itself, under ``table``'s policies."""
        entries = self._entries(view)
        if not entries:
            return ()
        return probes(
            entries, {key[0]: c.policy for key, c in table.clusters.items() if key[1] is None}
        )

    def _cluster_changed(self, key: ClusterKey, cluster: Cluster) -> None:
        """Carry the state of cluster ``key`` over to its new object (or start it)."""
        state = self.clusters.get(key)
        if state is None:
            self.cluster_state(cluster)
        else:
            state.detector.policy = cluster.policy.outlier_detection or DEFAULT_OUTLIER
            state.detector.set_hosts(e.key for e in cluster.endpoints)
            state.breaker.update(cluster.policy.connection_pool)

    def _stored_of(self, view: View, kind: str) -> list[Resource]:
        """The view's resources of ``kind``, in name order."""
        parsed = self._stored.parse(kind, view.documents(kind))
        return [parsed[key] for key in sorted(parsed)]

    def decide(
        self,
        host: str,
        method: str,
        path: str,
        headers: Mapping[str, str],
        query: str = "",
        source: Mapping[str, str] = NO_LABELS,
        gateway: str | None = None,
    ) -> Decision:
        """Route ``method host path`` (from a workload labelled ``source``, or received on a
        listener of the Gateway named ``gateway``) to a cluster on the current snapshot, or
        say why not, or the answer the matched rule gives itself (``redirect``,
        ``directResponse``)."""
        snapshot = self.snapshot
        table = snapshot.table.bound(gateway)
        match = table.resolve(host, method, path, headers, query, source)
        if match is None:
            return Refusal(404, NO_ROUTE, f"no route for host {host!r} and path {path!r}")
        action = match.route.redirect or match.route.direct_response
        if action is not None:
            return action
        index = table.pick_index(match, self.rng)
        if index is None:
            return Refusal(503, NO_HEALTHY_UPSTREAM, f"route for {host!r} has no destination")
        cluster = match.clusters[index]
        rewrite = match.route.rewrite
        new_path = match.rewrite_path(path)
        request_edits, response_edits = match.edits[index] if match.edits else ((), ())
        return Route(
            snapshot=snapshot,
            match=match,
            cluster=cluster,
            balancer=table.balancer_for(cluster),
            path=new_path,
            rewritten=new_path != path,
            authority=rewrite.authority if rewrite is not None else None,
            request_edits=request_edits,
            response_edits=response_edits,
        )

    def cluster_state(self, cluster: Cluster) -> ClusterState:
        """The state kept for ``cluster`` (made on first use for a cluster not yet seen)."""
        state = self.clusters.get(cluster.key)
        if state is None:
            outlier = cluster.policy.outlier_detection or DEFAULT_OUTLIER
            state = ClusterState(
                detector=OutlierDetector(outlier, (e.key for e in cluster.endpoints)),
                breaker=Breaker(cluster.policy.connection_pool),
                budget=RetryBudget(),
            )
            self.clusters[cluster.key] = state
        return state

    def pick(
        self, route: Route, state: ClusterState, now: float, tried: set[str], key: str | None = None
    ) -> Endpoint | None:
        """An instance for the next attempt: ready, not ejected, and not tried yet if possible;
        the one ``key`` hashes to when given (``consistentHash``), else the balancer's."""
        detector = state.detector
        deadline = detector.next_deadline()
        if deadline is not None and now >= deadline:
            detector.sweep(now)
        candidates = detector.filter(route.cluster.endpoints, now)
        if tried:
            fresh = tuple(e for e in candidates if e.key not in tried)
            candidates = fresh or candidates
        if not candidates:
            return None
        if key is not None:
            return rendezvous(candidates, key)
        return route.balancer.pick(candidates, self.rng)

    def report(self, now: float) -> dict[str, Any]:
        """What this proxy tells the store every second: counters, load, ejections."""
        ejections: dict[str, list[dict[str, Any]]] = {}
        outliers: dict[str, list[int]] = {}  # by cluster: [detected, enforced] so far
        for (service, subset), state in self.clusters.items():
            detector = state.detector
            if not detector.detected:  # (nor anything ejected: most clusters, at once)
                continue
            cluster = f"{service}/{subset}" if subset else service
            outliers[cluster] = [detector.detected, detector.enforced]
            ejected = [
                {
                    "instance": key,
                    "reason": e.reason,
                    "count": e.count,
                    "for": round(max(0.0, e.until - now), 1),
                }
                for key, e in state.detector.snapshot(now).items()
                if e.enforced
            ]
            if ejected:
                ejections[cluster] = ejected
        s = self.stats
        if s.inbound:  # instances that are gone are forgotten
            s.inbound = {k: n for k, n in s.inbound.items() if k in self.snapshot.instances}
        self._reports += 1
        out: dict[str, Any] = {}
        for extra in self.extra_reports:
            out.update(extra())
        self.last_report = {
            **out,
            "seq": self._reports,
            "load": {k: [round(c, 3), n] for k, (c, n) in self.load.read(now).items()},
            "revision": self.revision,
            "requests": s.requests,
            "retries": s.retries,
            "retried": dict(s.retried),
            "refusals": dict(s.refusals),
            "denied": dict(s.denied),
            "in_flight": {k: v for k, v in s.in_flight.items() if v},
            "served": dict(s.served),
            "inbound": dict(s.inbound),
            "unreachable": sorted(self.unreachable),
            "outcomes": {k: list(v) for k, v in s.outcomes.items()},
            "latency": {k: list(v) for k, v in s.latency.items()},
            "latency_sum": {k: round(v, 6) for k, v in s.latency_sum.items()},
            "responses": [[*k, n] for k, n in s.responses.items()],
            "ejections": ejections,
            "outliers": outliers,
        }
        return self.last_report
