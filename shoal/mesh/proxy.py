"""The routing state every proxy (gateway, node router) shares: snapshot, decision, refusal.

A proxy process keeps one :class:`Proxy`. Each store view is turned into a new immutable
:class:`~shoal.mesh.routing.RoutingTable`, swapped in by one assignment; request handlers read
``proxy.table`` once per request and never lock. :meth:`Proxy.decide` is the synchronous part
of the request path: route match, weighted split, balancer pick.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping
from dataclasses import dataclass

from shoal.errors import ShoalError
from shoal.mesh.balancer import Balancer
from shoal.mesh.endpoint import Endpoint
from shoal.mesh.routing import RouteMatch, RoutingTable
from shoal.platform.model import DestinationRule, Service, VirtualService
from shoal.platform.resources import parse_document
from shoal.store.watch import View

log = logging.getLogger(__name__)

CONFIG_KINDS = ("Service", "VirtualService", "DestinationRule")


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request the proxy answers itself: status, ``x-shoal-cause`` and a message."""

    status: int
    cause: str
    message: str


@dataclass(frozen=True, slots=True)
class Target:
    """Where one request goes: the instance, the route it matched, the path to send."""

    endpoint: Endpoint
    match: RouteMatch
    balancer: Balancer
    path: str
    authority: str | None = None  # the Host to send, when the route rewrites it


def table_from_view(view: View, previous: RoutingTable | None) -> RoutingTable:
    """Parse the view's documents and build a routing snapshot (bad documents are skipped)."""
    services: list[Service] = []
    virtual_services: list[VirtualService] = []
    rules: list[DestinationRule] = []
    for kind in CONFIG_KINDS:
        for key, doc in view.documents(kind).items():
            try:
                resource = parse_document(doc)
            except ShoalError as e:
                log.error("skipping stored %s %s: %s", kind, key, e)
                continue
            if isinstance(resource, Service):
                services.append(resource)
            elif isinstance(resource, VirtualService):
                virtual_services.append(resource)
            else:
                rules.append(resource)
    return RoutingTable.build(
        services, virtual_services, rules, view.instances.values(), previous=previous
    )


class Proxy:
    """Holds the current routing snapshot and makes the per-request decision."""

    def __init__(self, rng: random.Random | None = None) -> None:
        self.table = RoutingTable.build([], [], [], [])
        self.revision = 0
        self.rng = rng or random.Random()

    def update(self, view: View) -> None:
        """Swap in a snapshot built from ``view``; keep the old one if it cannot be built."""
        try:
            self.table = table_from_view(view, self.table)
        except ValueError as e:
            log.error("keeping the previous routing snapshot: %s", e)
            return
        self.revision = view.revision

    def decide(
        self, host: str, method: str, path: str, headers: Mapping[str, str]
    ) -> Target | Refusal:
        """Route ``method host path``: the instance to forward to, or why not."""
        table = self.table
        match = table.resolve(host, method, path, headers)
        if match is None:
            return Refusal(404, "no_route", f"no route for host {host!r} and path {path!r}")
        cluster = table.pick(match, self.rng)
        if cluster is None or not cluster.endpoints:
            name = cluster.service if cluster is not None else host
            subset = f" subset {cluster.subset}" if cluster is not None and cluster.subset else ""
            return Refusal(503, "no_healthy_upstream", f"no healthy instance of {name}{subset}")
        balancer = table.balancer_for(cluster)
        endpoint = balancer.pick(cluster.endpoints, self.rng)
        rewrite = match.route.rewrite
        return Target(
            endpoint=endpoint,
            match=match,
            balancer=balancer,
            path=match.rewrite_path(path),
            authority=rewrite.authority if rewrite is not None else None,
        )
