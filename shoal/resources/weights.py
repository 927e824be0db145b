"""``shoal weights``: a traffic split as an edit of the service's VirtualService (pure).

Every ``http[]`` route whose destinations all point at the service gets the new weighted
destinations; other routes (to other services) are left alone. Without a VirtualService for
the service, one named after it is created.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace

from shoal.errors import UserError
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


def set_weights(
    service: str,
    weights: Mapping[str, int],
    vs: VirtualService | None,
    rule: DestinationRule | None,
) -> VirtualService:
    """The VirtualService that splits ``service``'s traffic by ``weights`` between subsets."""
    defined = {s.name for s in rule.subsets} if rule is not None else set()
    unknown = sorted(set(weights) - defined)
    if unknown:
        known = ", ".join(sorted(defined)) or "none"
        raise UserError(
            f"subset {', '.join(unknown)} of {service} is not defined in a DestinationRule "
            f"(defined: {known})"
        )
    destinations = tuple(
        RouteDestination(destination=Destination(host=service, subset=subset), weight=w)
        for subset, w in weights.items()
    )
    if vs is None:
        return VirtualService(name=service, hosts=(service,), http=(HTTPRoute(route=destinations),))
    if not any(_targets(r, service) for r in vs.http):
        raise UserError(f"VirtualService {vs.name} has no route that sends traffic to {service}")
    http = tuple(replace(r, route=destinations) if _targets(r, service) else r for r in vs.http)
    return replace(vs, http=http)


def find_virtual_service(
    service: str, candidates: Sequence[VirtualService]
) -> VirtualService | None:
    """The VirtualService that routes requests for ``service``: by host, else by name."""
    for vs in candidates:
        if service in vs.hosts:
            return vs
    for vs in candidates:
        if vs.name == service:
            return vs
    return None


def find_rule(service: str, rules: Sequence[DestinationRule]) -> DestinationRule | None:
    """The DestinationRule of ``service`` (host is the name or an FQDN starting with it)."""
    for rule in rules:
        if rule.host == service or rule.host.split(".")[0] == service:
            return rule
    return None


def current_weights(service: str, vs: VirtualService | None) -> dict[str, int]:
    """Subset → weight of the first route of ``vs`` that sends traffic to ``service``."""
    route = next((r for r in vs.http if _targets(r, service)), None) if vs is not None else None
    if route is None:
        raise UserError(f"no VirtualService route sends traffic to {service} by subset")
    if any(d.destination.subset is None for d in route.route):
        raise UserError(f"the route to {service} does not split traffic by subset")
    if len(route.route) == 1:
        return {str(route.route[0].destination.subset): 100}
    return {str(d.destination.subset): d.weight for d in route.route}


def subset_revisions(
    service: str, subset: str, rule: DestinationRule | None, services: Sequence[Service]
) -> list[str]:
    """``service/revision`` keys of the revisions a subset selects (by its labels)."""
    found = next((s for s in rule.subsets if s.name == subset), None) if rule else None
    if found is None:
        raise UserError(f"subset {subset} of {service} is not defined in a DestinationRule")
    wanted = set(found.labels)
    return sorted(
        s.key
        for s in services
        if s.name == service and wanted.issubset(s.instance_labels().items())
    )


def traffic_shares(
    service: str,
    vs: VirtualService | None,
    rule: DestinationRule | None,
    services: Sequence[Service],
) -> dict[str, float] | None:
    """Percent of ``service``'s traffic each revision gets under its VirtualService's first
    route (a subset's share split evenly among the revisions it selects); None when traffic is
    not split by subset (every ready instance shares it)."""
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
