"""``shoal weights``: a traffic split as an edit of the service's VirtualService (pure).

One ``http[]`` route gets the new weighted destinations: the one named with ``--route``, else
the service's default route — the last route with no ``match`` (it takes what no rule before it
matched) whose destinations all point at the service. Every other route (a header rule such as
Istio's ``end-user: jason``, a path rule, a route to another service) stays exactly as it was,
and the destinations keep the host as the route wrote it (``reviews`` or
``reviews.default.svc.cluster.local``). Without a VirtualService for the service, one named
after it is created.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import replace

from shoal.errors import UserError
from shoal.resources.hosts import mesh_service
from shoal.resources.model import (
    Destination,
    DestinationRule,
    HTTPRoute,
    RouteDestination,
    Service,
    VirtualService,
)


def parse_weights(pairs: Sequence[str]) -> dict[str, int]:
    """``["v1=80", "v2=20"]`` → ``{"v1": 80, "v2": 20}``; the weights must sum to 100."""
    weights: dict[str, int] = {}
    for pair in pairs:
        subset, sep, raw = pair.partition("=")
        if not sep or not subset or not raw.strip().isdigit():
            raise UserError(f"weight {pair!r}: expected SUBSET=WEIGHT with a whole number")
        if subset in weights:
            raise UserError(f"weight {pair!r}: subset {subset} given twice")
        weights[subset] = int(raw)
    if not weights:
        raise UserError("give at least one SUBSET=WEIGHT")
    total = sum(weights.values())
    if total != 100:
        raise UserError(f"weights must sum to 100, not {total}")
    return weights


def _targets(route: HTTPRoute, service: str) -> bool:
    hosts = {d.destination.host.split(".")[0] for d in route.route}
    return bool(route.route) and hosts == {service}


def split_route(service: str, vs: VirtualService, route: str | None = None) -> int:
    """The index in ``vs.http`` of the route that carries ``service``'s split: the one named
    ``route``, else the default route (see the module docstring)."""
    if route is not None:
        named = [i for i, r in enumerate(vs.http) if r.name == route]
        if not named:
            have = ", ".join(r.name for r in vs.http if r.name) or "none is named"
            raise UserError(f"VirtualService {vs.name} has no route named {route} ({have})")
        if not _targets(vs.http[named[0]], service):
            raise UserError(f"route {route} of VirtualService {vs.name} does not go to {service}")
        return named[0]
    default = [i for i, r in enumerate(vs.http) if not r.match and _targets(r, service)]
    if not default:
        raise UserError(
            f"VirtualService {vs.name} has no default route (one without match) to {service}: "
            "name the route to change with --route"
        )
    return default[-1]


def set_weights(
    service: str,
    weights: Mapping[str, int],
    vs: VirtualService | None,
    rule: DestinationRule | None,
    services: Sequence[Service],
    route: str | None = None,
) -> VirtualService:
    """The VirtualService that splits ``service``'s traffic by ``weights`` between subsets, on
    the route named ``route`` or the default one. A subset is one of ``rule``'s or a revision
    of ``services`` by name; one given traffic must select a revision, if Shoal runs the
    service (instances registered from outside have no revisions)."""
    runs = any(s.name == service for s in services)
    for subset, weight in sorted(weights.items()):
        chosen = subset_revisions(service, subset, rule, services)
        if weight and runs and not chosen:
            raise UserError(
                f"subset {subset} of {service} selects no revision (its labels match none): "
                "it would get requests with nowhere to send them"
            )
    if vs is None:
        if route is not None:
            raise UserError(f"no VirtualService routes {service}: there is no route {route}")
        return VirtualService(
            name=service, hosts=(service,), http=(HTTPRoute(route=_split(service, weights)),)
        )
    index = split_route(service, vs, route)
    edited = vs.http[index]
    host = edited.route[0].destination.host  # as the route wrote it
    http = list(vs.http)
    http[index] = replace(edited, route=_split(host, weights))
    return replace(vs, http=tuple(http))


def _split(host: str, weights: Mapping[str, int]) -> tuple[RouteDestination, ...]:
    return tuple(
        RouteDestination(destination=Destination(host=host, subset=subset), weight=w)
        for subset, w in weights.items()
    )


def find_virtual_service(
    service: str, candidates: Sequence[VirtualService]
) -> VirtualService | None:
    """The VirtualService that routes requests for ``service``: by host, else by name."""
    for vs in candidates:
        if any(mesh_service(host) == service for host in vs.hosts):
            return vs
    for vs in candidates:
        if vs.name == service:
            return vs
    return None


def virtual_service_index(candidates: Iterable[VirtualService]) -> dict[str, VirtualService]:
    """:func:`find_virtual_service` for every service at once: service name → the
    VirtualService that routes it (by host, else by name; several: the first by name)."""
    ordered = sorted(candidates, key=lambda vs: vs.name)
    index: dict[str, VirtualService] = {}
    for vs in ordered:
        for host in vs.hosts:
            service = mesh_service(host)
            if service is not None:
                index.setdefault(service, vs)
    for vs in ordered:
        index.setdefault(vs.name, vs)
    return index


def find_rule(service: str, rules: Sequence[DestinationRule]) -> DestinationRule | None:
    """The DestinationRule of ``service`` (host is the name or an FQDN starting with it)."""
    for rule in rules:
        if rule.host == service or rule.host.split(".")[0] == service:
            return rule
    return None


def current_weights(
    service: str, vs: VirtualService | None, route_name: str | None = None
) -> dict[str, int]:
    """Subset → weight of the route of ``vs`` that carries ``service``'s split (the one named
    ``route_name``, else the default route)."""
    if vs is None:
        raise UserError(f"no VirtualService route sends traffic to {service} by subset")
    route = vs.http[split_route(service, vs, route_name)]
    if any(d.destination.subset is None for d in route.route):
        raise UserError(f"the route to {service} does not split traffic by subset")
    if len(route.route) == 1:
        return {str(route.route[0].destination.subset): 100}
    return {str(d.destination.subset): d.weight for d in route.route}


def subset_revisions(
    service: str, subset: str, rule: DestinationRule | None, services: Sequence[Service]
) -> list[str]:
    """``service/revision`` keys of the revisions a subset selects: a DestinationRule's by its
    labels, else the revision of that name or tag."""
    found = next((s for s in rule.subsets if s.name == subset), None) if rule else None
    if found is None:
        named = [s.key for s in services if s.name == service and subset in (s.revision, *s.tags)]
        if named:
            return named
        defined = sorted({s.name for s in rule.subsets} if rule else set())
        revisions = sorted(s.revision for s in services if s.name == service)
        raise UserError(
            f"subset {subset} of {service} is neither one of its revisions "
            f"({', '.join(revisions) or 'none'}) nor defined in a DestinationRule "
            f"({', '.join(defined) or 'none'})"
        )
    wanted = set(found.labels)
    return sorted(
        s.key
        for s in services
        if s.name == service and wanted.issubset(s.instance_labels().items())
    )


def latest_ready(revisions: Iterable[Service], ready: Collection[str]) -> Service | None:
    """The revision that serves a service no VirtualService splits, as in Knative: the latest
    applied one with a ready instance (``ready``: ``service/revision`` keys), else (none is
    ready: the first deploy, or all at zero) the latest applied one."""
    ordered = sorted(revisions, key=lambda s: (s.created, s.revision))
    return next((s for s in reversed(ordered) if s.key in ready), ordered[-1] if ordered else None)


def traffic_shares(
    service: str,
    vs: VirtualService | None,
    rule: DestinationRule | None,
    services: Sequence[Service],
    ready: Collection[str] = (),
) -> dict[str, float] | None:
    """Percent of ``service``'s traffic each revision gets under its VirtualService's default
    route (a subset's share split evenly among the revisions it selects), or without one all to
    its latest ready revision (:func:`latest_ready`; ``ready``: revisions with a ready
    instance); None when a VirtualService does not split it by subset (every ready instance
    shares it)."""
    if vs is None:
        latest = latest_ready((s for s in services if s.name == service), ready)
        return None if latest is None else {latest.key: 100.0}
    try:
        weights = current_weights(service, vs)
    except UserError:
        return None
    shares: dict[str, float] = {}
    for subset, weight in weights.items():
        revisions = subset_revisions(service, subset, rule, services)
        for key in revisions:
            shares[key] = shares.get(key, 0.0) + weight / len(revisions)
    return shares


def serving_only(
    service: str, vss: Sequence[VirtualService], rules: Sequence[DestinationRule]
) -> list[VirtualService | DestinationRule]:
    """The routing that serves ``service`` and nothing else: VirtualServices whose every
    destination (and mirror) is it, DestinationRules of its host (what deleting it deletes)."""
    found: list[VirtualService | DestinationRule] = []
    for vs in vss:
        hosts = {dest.destination.host for route in vs.http for dest in route.route} | {
            route.mirror.host for route in vs.http if route.mirror is not None
        }
        routed = {mesh_service(host) or host for host in hosts}
        if routed == {service}:
            found.append(vs)
    found += [rule for rule in rules if (mesh_service(rule.host) or rule.host) == service]
    return found
