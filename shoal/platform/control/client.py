"""What the CLI's commands do, against one store: apply, get, delete, weights, status.

The CLI parses flags, calls one method here and renders the result; everything that talks to
Redis or decides something lives here or below.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from shoal.errors import NotFoundError, UserError
from shoal.resources.endpoint import Endpoint
from shoal.resources.fields import dns_label
from shoal.resources.manifest import parse_document, to_document
from shoal.resources.model import KINDS, DestinationRule, Resource, Service, VirtualService
from shoal.resources.service_spec import revision_spec
from shoal.resources.weights import (
    find_rule,
    find_virtual_service,
    parse_weights,
    serving_only,
    set_weights,
    traffic_shares,
)
from shoal.store.acks import live_acks, live_reports
from shoal.store.config import Change, ConfigStore, encode
from shoal.store.connection import Redis
from shoal.store.decisions import AutoscalerDecisions
from shoal.store.keys import Keys
from shoal.store.registry import Registry
from shoal.store.watch import View, Watcher

KIND_ALIASES = {
    "service": "Service",
    "services": "Service",
    "svc": "Service",
    "virtualservice": "VirtualService",
    "virtualservices": "VirtualService",
    "vs": "VirtualService",
    "destinationrule": "DestinationRule",
    "destinationrules": "DestinationRule",
    "dr": "DestinationRule",
    "peerauthentication": "PeerAuthentication",
    "peerauthentications": "PeerAuthentication",
    "pa": "PeerAuthentication",
    "authorizationpolicy": "AuthorizationPolicy",
    "authorizationpolicies": "AuthorizationPolicy",
    "ap": "AuthorizationPolicy",
    "gateway": "Gateway",
    "gateways": "Gateway",
    "gw": "Gateway",
    "serviceentry": "ServiceEntry",
    "serviceentries": "ServiceEntry",
    "se": "ServiceEntry",
}


FAILING_AFTER = 3  # exits in a row before ready that make a revision fail `apply --wait`


def _cannot_start(instance: Endpoint) -> bool:
    """Whether ``instance`` shows its revision cannot get ready."""
    if instance.state == "ready" or not instance.restarts:
        return False
    return instance.reason == "import_error" or (
        instance.reason in ("crash_loop", "not_ready") and instance.restarts >= FAILING_AFTER
    )


def _why(instance: Endpoint) -> str:
    """One line: the reason, the exit, the last line of output."""
    last = (instance.output or "").splitlines()[-1:] or [""]
    parts = [instance.reason or "failing", instance.exit or "", last[0].strip()]
    detail = ", ".join(part for part in parts[1:] if part)
    starts = f"{instance.restarts} start{'s' if instance.restarts != 1 else ''}"
    return f"{parts[0]} after {starts}" + (f" ({detail})" if detail else "")


def _revision_state(share: float | None, instances: int) -> str:
    """What ``shoal get revisions`` says of a revision: ``routed`` (it gets traffic, or every
    instance of the service does), ``retired`` (none, and no instance left: deleted after the
    retention unless routed again), else ``not routed`` (its instances are still up: new and
    not ready yet, or on their way out)."""
    if share is None or share > 0:
        return "routed"
    return "retired" if not instances else "not routed"


def kind_of(name: str) -> str:
    """The resource kind a user typed (any case, plural or short form)."""
    kind = KIND_ALIASES.get(name.lower())
    if kind is None:
        raise UserError(f"unknown kind {name!r}: use one of {', '.join(KINDS)}")
    return kind


@dataclass(frozen=True, slots=True)
class Applied:
    """The outcome of an apply: the revision, and what changed."""

    revision: int
    changed: list[str]
    unchanged: list[str]


@dataclass(frozen=True, slots=True)
class Status:
    """Nodes, services and instances, as the registry and config hold them now."""

    revision: int
    nodes: dict[str, dict[str, Any]]
    services: list[Service]
    instances: list[Endpoint]
    acks: dict[str, int] = field(default_factory=dict)
    reports: dict[str, dict[str, Any]] = field(default_factory=dict)
    autoscaler: dict[str, dict[str, Any]] = field(default_factory=dict)  # by service/revision


@dataclass(frozen=True, slots=True)
class InstanceChange:
    """One instance appearing, changing state, port or pid, or disappearing."""

    key: str
    before: Endpoint | None
    after: Endpoint | None


def instance_changes(
    old: Mapping[str, Endpoint], new: Mapping[str, Endpoint]
) -> list[InstanceChange]:
    """What differs between two registry views, in key order."""
    return [
        InstanceChange(k, old.get(k), new.get(k))
        for k in sorted(set(old) | set(new))
        if old.get(k) != new.get(k)
    ]


class Client:
    """Operations on one Shoal store."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys
        self.config = ConfigStore(redis, keys)
        self.registry = Registry(redis, keys)
        self.decisions = AutoscalerDecisions(redis, keys)

    async def apply(self, resources: Sequence[Resource], *, keep_existing: bool = False) -> Applied:
        """Store ``resources`` atomically. A Service revision's spec cannot change once stored.

        With ``keep_existing``, resources already stored are left as they are (how ``shoal up
        --example`` deploys the example without undoing the user's later edits).
        """
        changes: list[Change] = []
        changed: list[str] = []
        unchanged: list[str] = []
        base = await self.config.revision()
        for index, r in enumerate(resources):
            label = f"{r.kind}/{r.key}"
            existing = await self.config.get(r.kind, r.key)
            if isinstance(r, Service):
                # A revision's order: when it was first applied (the latest ready one serves
                # a service that no VirtualService splits).
                before_doc = parse_document(existing) if existing is not None else None
                created = before_doc.created if isinstance(before_doc, Service) else 0
                r = replace(r, created=created or base + 1 + index)
            doc = to_document(r)
            if existing is not None and (keep_existing or encode(existing) == encode(doc)):
                unchanged.append(label)
                continue
            before = (
                parse_document(existing)
                if existing is not None and isinstance(r, Service)
                else None
            )
            if (
                isinstance(r, Service)
                and isinstance(before, Service)
                and (revision_spec(r) != revision_spec(before))
            ):
                raise UserError(
                    f"Service {r.name} revision {r.revision} already exists with another spec; "
                    "revisions are immutable: set a new spec.revision, or omit it to name the "
                    "revision by the spec's hash"
                )
            changes.append(Change(r.kind, r.key, doc))
            changed.append(label)
        revision = await self.config.write(changes) if changes else await self.config.revision()
        return Applied(revision=revision, changed=changed, unchanged=unchanged)

    async def get(self, kind: str, name: str | None = None) -> list[dict[str, Any]]:
        """Stored documents of ``kind`` (a Service name gives all its revisions)."""
        kind = kind_of(kind)
        docs = await self.config.list(kind)
        if name is None:
            return list(docs.values())
        found = [d for k, d in docs.items() if k == name or k.split("/")[0] == name]
        if not found:
            raise NotFoundError(f"{kind} {name} not found")
        return found

    async def delete(
        self, kind: str, name: str, *, keep_routes: bool = False
    ) -> tuple[int, list[str]]:
        """Delete a resource (a Service name deletes all its revisions; ``NAME/REVISION`` one).
        Deleting a whole Service also deletes the VirtualServices and DestinationRules that
        only served it (unless ``keep_routes``), in the same write. Returns the store revision
        and what was deleted (``Kind/name``)."""
        kind = kind_of(kind)
        keys = [k for k in await self.config.list(kind) if k == name or k.split("/")[0] == name]
        if not keys:
            raise NotFoundError(f"{kind} {name} not found")
        changes = [Change(kind, k, None) for k in keys]
        if kind == "Service" and "/" not in name and not keep_routes:
            changes += [
                Change(r.kind, r.key, None)
                for r in serving_only(
                    name, await self.virtual_services(), await self.destination_rules()
                )
            ]
        revision = await self.config.write(changes)
        return revision, [f"{c.kind}/{c.key}" for c in changes]

    async def _resources(self, kind: str) -> list[Any]:
        return [parse_document(d) for d in (await self.config.list(kind)).values()]

    async def services(self) -> list[Service]:
        """Every stored Service revision."""
        return [s for s in await self._resources("Service") if isinstance(s, Service)]

    async def virtual_services(self) -> list[VirtualService]:
        """Every stored VirtualService."""
        return [v for v in await self._resources("VirtualService") if isinstance(v, VirtualService)]

    async def destination_rules(self) -> list[DestinationRule]:
        """Every stored DestinationRule."""
        return [
            r for r in await self._resources("DestinationRule") if isinstance(r, DestinationRule)
        ]

    async def revisions(self, service: str) -> list[dict[str, Any]]:
        """``service``'s revisions: traffic share, instances ready/desired, scale bounds."""
        services = [s for s in await self.services() if s.name == service]
        if not services:
            raise NotFoundError(f"Service {service} not found")
        instances = await self.registry.instances()
        shares = traffic_shares(
            service,
            find_virtual_service(service, await self.virtual_services()),
            find_rule(service, await self.destination_rules()),
            services,
            {e.revision_key for e in instances if e.state == "ready"},
        )
        decisions = await self.decisions.read()
        return [
            {
                "revision": s.revision,
                "traffic": None if shares is None else round(shares.get(s.key, 0.0), 1),
                "ready": sum(
                    1 for e in instances if e.revision_key == s.key and e.state == "ready"
                ),
                "instances": sum(1 for e in instances if e.revision_key == s.key),
                "desired": decisions.get(s.key, {}).get("desired"),
                "min": s.scale.min,
                "max": s.scale.max,
                "tags": list(s.tags),
                "state": _revision_state(
                    None if shares is None else shares.get(s.key, 0.0),
                    sum(1 for e in instances if e.revision_key == s.key),
                ),
            }
            for s in sorted(services, key=lambda s: s.revision)
        ]

    async def weights(
        self, service: str, pairs: list[str], route: str | None = None
    ) -> tuple[VirtualService, int]:
        """Split ``service``'s traffic between subsets; return the new VirtualService."""
        return await self.set_weights(service, parse_weights(pairs), route)

    async def set_weights(
        self, service: str, weights: Mapping[str, int], route: str | None = None
    ) -> tuple[VirtualService, int]:
        """Split ``service``'s traffic between subsets by ``weights`` (summing to 100), on the
        route named ``route`` or the service's default route."""
        vss: list[VirtualService] = await self._resources("VirtualService")
        rules: list[DestinationRule] = await self._resources("DestinationRule")
        services = await self.services()
        found = find_virtual_service(service, vss)
        if found is None and not any(s.name == service for s in services):
            raise NotFoundError(f"Service {service} not found")
        vs = set_weights(service, weights, found, find_rule(service, rules), services, route)
        applied = await self.apply([vs])
        return vs, applied.revision

    async def scale(
        self,
        service: str,
        *,
        min: int | None = None,
        max: int | None = None,
        target: int | None = None,
        revision: str | None = None,
    ) -> list[Service]:
        """Set scaling bounds of a service's revisions (all, or one) in place."""
        if min is None and max is None and target is None:
            raise UserError("give at least one of --min, --max, --target")
        stored = [
            s
            for s in await self._resources("Service")
            if isinstance(s, Service)
            and s.name == service
            and (revision is None or revision in (s.revision, *s.tags))
        ]
        if not stored:
            what = f"{service} revision {revision}" if revision else service
            raise NotFoundError(f"Service {what} not found")
        scaled = []
        for s in stored:
            bounds = replace(
                s.scale,
                min=s.scale.min if min is None else min,
                max=s.scale.max if max is None else max,
                target_concurrency=s.scale.target_concurrency if target is None else target,
            )
            if bounds.min < 0 or bounds.max < 1 or bounds.min > bounds.max:
                raise UserError(
                    f"{s.key}: need 0 <= min <= max and max >= 1 "
                    f"(got min {bounds.min}, max {bounds.max})"
                )
            if bounds.target_concurrency < 1:
                raise UserError(f"--target must be at least 1 (got {bounds.target_concurrency})")
            scaled.append(replace(s, scale=bounds))
        await self.apply(scaled)
        return scaled

    async def tag(
        self, service: str, revision: str | None, tag: str, *, remove: bool = False
    ) -> list[Service]:
        """Give ``service``'s revision ``revision`` the traffic tag ``tag`` (taken from the
        revision that had it), or with ``remove`` take it away; the revisions changed."""
        dns_label(tag, "tag")
        stored = [s for s in await self.services() if s.name == service]
        if not stored:
            raise NotFoundError(f"Service {service} not found")
        if not remove and not any(s.revision == revision for s in stored):
            known = ", ".join(sorted(s.revision for s in stored))
            raise NotFoundError(f"{service} has no revision {revision} (revisions: {known})")
        changed = []
        for s in stored:
            tags = set(s.tags) - {tag}
            if not remove and s.revision == revision:
                tags.add(tag)
            if tags != set(s.tags):
                changed.append(replace(s, tags=tuple(sorted(tags))))
        if remove and not changed:
            raise NotFoundError(f"no revision of {service} has the tag {tag}")
        await self.apply(changed)
        return changed

    async def status(self) -> Status:
        """What runs where."""
        services = [s for s in await self._resources("Service") if isinstance(s, Service)]
        return Status(
            revision=await self.config.revision(),
            nodes=await self.registry.nodes(),
            services=services,
            instances=await self.registry.instances(),
            acks=await live_acks(self.redis, self.keys),
            reports=await live_reports(self.redis, self.keys),
            autoscaler=await self.decisions.read(),
        )

    async def follow(self, url: str, on_change: Callable[[InstanceChange], None]) -> None:
        """Call ``on_change`` for every instance change from now on, until cancelled."""
        seen: dict[str, Endpoint] | None = None

        def on_view(view: View) -> None:
            nonlocal seen
            if seen is not None:
                for change in instance_changes(seen, view.instances):
                    on_change(change)
            seen = dict(view.instances)

        await Watcher(url, self.keys, ()).run(on_view)

    async def wait_ready(self, revisions: Sequence[Service], timeout: float) -> dict[str, str]:
        """Wait until each revision (of those with ``scale.min`` > 0) has a ready instance, or
        shows it cannot get one (an instance failing to import its app, or exiting
        :data:`FAILING_AFTER` times in a row before ever being ready); the ones that did not,
        with why."""
        deadline = asyncio.get_running_loop().time() + timeout
        pending = {s.key for s in revisions if s.scale.min > 0}
        failed: dict[str, str] = {}
        while pending:
            instances = await self.registry.instances()
            for key in sorted(pending):
                mine = [e for e in instances if e.revision_key == key]
                if any(e.state == "ready" for e in mine):
                    pending.discard(key)
                    continue
                failing = next((e for e in mine if _cannot_start(e)), None)
                if failing is not None:
                    failed[key] = _why(failing)
                    pending.discard(key)
            if not pending:
                break
            if asyncio.get_running_loop().time() >= deadline:
                failed.update({key: f"no instance ready within {timeout:g}s" for key in pending})
                break
            await asyncio.sleep(0.2)
        return failed

    async def wait_applied(self, revision: int, timeout: float) -> dict[str, int]:
        """Wait until every live proxy has applied ``revision``; return the laggards."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            lagging = {
                c: r for c, r in (await live_acks(self.redis, self.keys)).items() if r < revision
            }
            if not lagging or asyncio.get_running_loop().time() >= deadline:
                return lagging
            await asyncio.sleep(0.05)
