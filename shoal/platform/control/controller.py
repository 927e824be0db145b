"""The controller: CA, scheduler and autoscaler, while it leads.

Several controllers may run; one leads through a Redis lease
(:class:`~shoal.store.leader.LeaderLease`: ``SET NX PX``, renewed by a script that only extends
the holder's own lease). A controller that cannot renew stops acting at once.
While leading it signs certificates (:mod:`shoal.platform.ca.authority`), turns the proxies' load
reports and activation requests into a desired instance count per Service revision (Knative's KPA,
:mod:`.scaling`), writes ``Placement`` documents for them (one per live node,
:func:`.scheduler.place`: only on nodes a revision's ``node_selector`` matches, never beyond
a node's capacity; what fits nowhere is logged once and shown in the decision's reason),
publishes its decisions for ``shoal status`` and removes expired registry entries.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from pathlib import Path
from typing import Any

from shoal.errors import StoreError, UserError
from shoal.identity.pki import PKIError
from shoal.mesh.activation import ACTIVATION
from shoal.mesh.metrics import MetricsServer, exposition
from shoal.mesh.tasks import task_group
from shoal.platform.ca.authority import Authority
from shoal.platform.ca.rotation import entitled
from shoal.platform.ca.signer import CAFiles
from shoal.platform.control.counts import InstanceCounts
from shoal.platform.control.metrics import ControllerReport, families
from shoal.platform.control.scaling import AutoscaleSettings, Autoscaling
from shoal.platform.control.scheduler import Node, Schedule, place, unplaced_reason
from shoal.platform.runtime.agent import HEARTBEAT_EVERY, LEASE_TTL, PLACEMENT
from shoal.resources.manifest import StoredResources
from shoal.resources.model import DestinationRule, Service, VirtualService
from shoal.resources.weights import (
    find_rule,
    latest_ready,
    traffic_shares,
    virtual_service_index,
)
from shoal.store.acks import live_reports
from shoal.store.config import Change, ConfigStore, FencedOut
from shoal.store.connection import Redis, honour_cancellation, uptime, wait_at_most
from shoal.store.decisions import AutoscalerDecisions
from shoal.store.keys import Keys
from shoal.store.leader import LeaderLease
from shoal.store.pki import PKIStore
from shoal.store.registry import Registry
from shoal.store.watch import View, Watcher

log = logging.getLogger(__name__)

TICK = 1.0
MIN_TICK = 0.1  # seconds between the starts of two rounds, however fast changes come
PRUNE_GRACE = LEASE_TTL + 2 * HEARTBEAT_EVERY


def live_nodes(view: View) -> dict[str, Node]:
    """The registered nodes, with the labels and capacity their records announce."""
    return {node: Node.from_record(record) for node, record in view.nodes.items()}


def placement_changes(
    view: View,
    wanted: Mapping[str, int],
    selectors: Mapping[str, Mapping[str, str]] | None = None,
) -> tuple[list[Change], Schedule]:
    """The Placement writes that bring the stored placements to ``wanted`` instances per
    ``service/revision`` (each on nodes its selector in ``selectors`` matches), and the
    schedule they come from (its ``unplaced`` says what fitted nowhere)."""
    current = {
        node: dict(doc.get("revisions") or {}) for node, doc in view.documents(PLACEMENT).items()
    }
    schedule = place(dict(wanted), live_nodes(view), current, selectors)
    placed = schedule.placements
    changes = [
        Change(PLACEMENT, node, {"revisions": revs})
        for node, revs in placed.items()
        if current.get(node) != revs
    ]
    changes += [Change(PLACEMENT, node, None) for node in current if node not in placed]
    return changes, schedule


def unrouted_revisions(
    view: View,
    stored: StoredResources,
    services: Sequence[Service],
    routes: Mapping[str, VirtualService],
    ready: Collection[str] = (),
) -> list[str]:
    """Revisions that get 0% of their service's traffic under its VirtualService's split (in
    ``routes``: :func:`virtual_service_index`), or, with none, those older than the latest
    ready one (a newer one that is not ready yet is not routed either, but it must start to
    become ready)."""
    if not services:
        return []
    parsed = stored.parse("DestinationRule", view.documents("DestinationRule")).values()
    rules = [r for r in parsed if isinstance(r, DestinationRule)]
    out = []
    for name in sorted({s.name for s in services}):
        mine = [s for s in services if s.name == name]
        vs = routes.get(name)
        if vs is None:
            latest = latest_ready(mine, ready)
            assert latest is not None  # (mine is not empty)
            newest = latest.created, latest.revision
            # A tagged revision stays reachable (its tag host), so it is not retired.
            out += [s.key for s in mine if (s.created, s.revision) < newest and not s.tags]
            continue
        try:
            shares = traffic_shares(name, vs, find_rule(name, rules), mine)
        except UserError:
            continue  # a subset the rule does not define: leave the revisions alone
        if shares is not None:
            out += [s.key for s in mine if shares.get(s.key, 0.0) == 0.0]
    return out


def collectable(
    services: Sequence[Service],
    managed: Collection[str],
    retired_since: Mapping[str, float],
    running: Mapping[str, int],
    now: float,
    settings: AutoscaleSettings,
) -> list[str]:
    """Revisions to delete (Knative's garbage collection): of each ``managed`` service (no
    VirtualService routes it), the retired ones (``retired_since``; no instance left in
    ``running``) retired for ``delete_retired_after``, but for the newest ``keep_retired``."""
    out = []
    for name in sorted(managed):
        retired = sorted(
            (
                s
                for s in services
                if s.name == name and s.key in retired_since and not running.get(s.key)
            ),
            key=lambda s: (s.created, s.revision),
            reverse=True,
        )
        out += [
            s.key
            for s in retired[settings.keep_retired :]
            if now - retired_since[s.key] >= settings.delete_retired_after
        ]
    return out


def _virtual_services(view: View, stored: StoredResources) -> list[VirtualService]:
    parsed = stored.parse("VirtualService", view.documents("VirtualService")).values()
    return [v for v in parsed if isinstance(v, VirtualService)]


def may_prune(
    now: float, steady_since: float, store_uptime: float, grace: float = PRUNE_GRACE
) -> bool:
    """Whether expired leases may be pruned: only once owners have had time to re-assert them.

    After Redis restarts (its uptime is short) or after this controller regained the store or
    the lead, leases may look expired only because nobody could renew them; pruning then would
    empty a healthy registry. Waiting ``grace`` (a lease TTL plus two heartbeats) lets every
    live owner re-assert first.
    """
    return now - steady_since >= grace and store_uptime >= grace


class Controller:
    """Leader-elected control loop over one store."""

    def __init__(
        self,
        redis: Redis,
        url: str,
        keys: Keys,
        *,
        state_dir: Path,
        trust_domain: str,
        autoscale: AutoscaleSettings | None = None,
        id: str | None = None,
    ) -> None:
        self.id = id or uuid.uuid4().hex[:8]
        self.trust_domain = trust_domain
        self.authority = Authority(
            PKIStore(redis, keys), CAFiles(state_dir / "ca"), trust_domain, self._entitled
        )
        self._signing = False
        self.redis = redis
        self.keys = keys
        self.config = ConfigStore(redis, keys)
        self.registry = Registry(redis, keys)
        self.watcher = Watcher(
            url, keys, ["Service", "VirtualService", "DestinationRule", PLACEMENT, ACTIVATION]
        )
        self.autoscaling = Autoscaling(autoscale)
        self.leading = False
        self.lease = LeaderLease(redis, keys, self.id)
        self.decisions = AutoscalerDecisions(redis, keys)
        self._view = View()
        self._stored = StoredResources()
        self.counts = InstanceCounts()  # of the views handed over so far
        self._dirty = asyncio.Event()
        self._steady_since: float | None = None  # since when we lead with the store reachable
        self._unplaced: dict[str, str] = {}  # revision -> why some of it is unplaced (logged)
        self.report = ControllerReport()  # what its admin port's /metrics shows

    def _entitled(self, requester: str, identity: str) -> bool:
        placements = {
            node: {k: int(v) for k, v in (doc.get("revisions") or {}).items()}
            for node, doc in self._view.documents(PLACEMENT).items()
        }
        return entitled(requester, identity, self.trust_domain, placements)

    async def _sign(self, leading: bool) -> None:
        """Start the CA's work when the lead is gained, stop it when it is lost."""
        if leading and not self._signing:
            try:
                await self.authority.start()
            except PKIError as e:
                log.error("not signing certificates: %s", e)
                return
            self._signing = True
        elif not leading and self._signing:
            await self.authority.stop()
            self._signing = False

    def _on_view(self, view: View) -> None:
        self._view = view
        self.counts.follow(view)
        self._dirty.set()

    async def tick(self) -> None:
        """One round: renew the lease; if leading, place instances and prune leases."""
        try:
            leading = await self.lease.renew()
        except StoreError as e:
            log.warning("lost the store, standing by: %s", e)
            leading = False
            self._steady_since = None
        if leading != self.leading:
            log.info("controller %s %s", self.id, "leads" if leading else "stands by")
            self.leading = leading
        self.report.ticks += 1
        self.report.leading = leading
        await self._sign(leading)
        if not leading:
            self._steady_since = None
            return
        now = time.monotonic()
        if self._steady_since is None:
            self._steady_since = now
        reports = await live_reports(self.redis, self.keys)
        await self._scale(reports, now)
        store_uptime = await uptime(self.redis)
        if self._signing:
            try:
                await self.authority.tick(reports)
            except PKIError as e:
                log.error("root rotation stalled: %s", e)
        if may_prune(now, self._steady_since, store_uptime):
            pruned = await self.registry.prune(fence=self.id)
            if pruned:
                log.info("pruned expired leases: %s", ", ".join(pruned))

    async def _scale(self, reports: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """Autoscale every revision on the proxies' load and pending activations; place the
        instances wanted; publish the decisions for ``shoal status``."""
        view = self._view
        services = [
            s
            for s in self._stored.parse("Service", view.documents("Service")).values()
            if isinstance(s, Service)
        ]
        self.autoscaling.observe(reports, now)
        activations = list(view.documents(ACTIVATION))
        for revision in activations:
            self.autoscaling.activate(revision, now)
        ready = Counter(self.counts.ready)
        routes = virtual_service_index(_virtual_services(view, self._stored)) if services else {}
        unrouted = unrouted_revisions(view, self._stored, services, routes, set(ready))
        decisions = self.autoscaling.decide(services, ready, now, unrouted)
        selectors = {s.key: dict(s.node_selector) for s in services}
        changes, schedule = placement_changes(
            view, {k: d.desired for k, d in decisions.items()}, selectors
        )
        unplaced = self._note_unplaced(schedule, live_nodes(view), selectors)
        changes += [Change(ACTIVATION, revision, None) for revision in activations]
        changes += self._collect(services, routes, now)
        if changes:
            await self.config.write(changes, fence=self.id)
        self.report.decided(
            {key: (d.desired, ready.get(key, 0), d.panicking) for key, d in decisions.items()}
        )
        await self.decisions.publish(
            {
                key: {
                    "desired": d.desired,
                    "ready": ready.get(key, 0),
                    "panicking": d.panicking,
                    "reason": f"{d.reason}; {unplaced[key]}" if key in unplaced else d.reason,
                }
                for key, d in decisions.items()
            }
        )

    def _collect(
        self, services: list[Service], routes: Mapping[str, VirtualService], now: float
    ) -> list[Change]:
        """Deletions of the revisions :func:`collectable` finds (each logged); ``routes``:
        the VirtualService routing each service (:func:`virtual_service_index`)."""
        if not services:
            return []
        managed = {s.name for s in services if s.name not in routes}
        running = self.counts.running
        found = collectable(
            services,
            managed,
            self.autoscaling.retired_since,
            running,
            now,
            self.autoscaling.settings,
        )
        for key in found:
            log.info("deleting revision %s: retired, and older than the ones kept", key)
        return [Change("Service", key, None) for key in found]

    def _note_unplaced(
        self,
        schedule: Schedule,
        nodes: Mapping[str, Node],
        selectors: Mapping[str, Mapping[str, str]],
    ) -> dict[str, str]:
        """Why each revision is (partly) unplaced; logged when that changes, not every tick."""
        now = {
            rev: unplaced_reason(count, nodes, selectors.get(rev))
            for rev, count in schedule.unplaced.items()
        }
        for rev, why in sorted(now.items()):
            if self._unplaced.get(rev) != why:
                log.warning("%s: %s", rev, why)
        for rev in sorted(self._unplaced.keys() - now.keys()):
            log.info("%s: nothing is left unplaced", rev)
        self._unplaced = now
        return now

    async def _wake_on(self, stop: asyncio.Event) -> None:
        """Wake the tick loop when ``stop`` is set, so it need not wait out a tick."""
        await stop.wait()
        self._dirty.set()

    async def _next_tick(self, started: float) -> None:
        """Wait for a change, ``stop`` (see :meth:`_wake_on`) or the tick period, whichever
        comes first; but no less than :data:`MIN_TICK` since the round that ``started`` (a
        burst of changes makes one round, not one each)."""
        await wait_at_most(self._dirty, TICK)
        rest = MIN_TICK - (time.monotonic() - started)
        if rest > 0:
            await asyncio.sleep(rest)
        self._dirty.clear()

    async def _ticks(self, stop: asyncio.Event) -> None:
        """Tick on every change and every second, until ``stop``."""
        while not stop.is_set():
            started = time.monotonic()
            try:
                await self.tick()
            except FencedOut as e:
                log.warning("controller %s stands by: %s", self.id, e)
                self.leading = False
                self._steady_since = None
                await self._sign(False)
            except StoreError as e:
                log.warning("controller tick failed: %s", e)
            # Cancelled by the task group when the watcher fails: a Redis call in the tick
            # may have swallowed that cancellation (Python 3.11, gh-86296).
            honour_cancellation()
            await self._next_tick(started)

    async def run(self, stop: asyncio.Event) -> None:
        """Run ticks on every change and every second, until ``stop``; then release the lease.

        The watcher and the waker belong to a task group: should the watcher fail, the
        controller fails with it rather than lead on a view that no longer changes.
        """
        try:
            async with task_group() as tasks:
                watch = tasks.create_task(self.watcher.run(self._on_view), name="watch")
                wake = tasks.create_task(self._wake_on(stop), name="wake on stop")
                await self._ticks(stop)
                watch.cancel()
                wake.cancel()
        finally:
            await self._sign(False)
            if self.leading:
                try:
                    await self.lease.release()
                except StoreError:
                    pass


async def run_controller(
    redis: Redis,
    url: str,
    keys: Keys,
    *,
    stop: asyncio.Event,
    state_dir: Path,
    trust_domain: str,
    autoscale: AutoscaleSettings | None = None,
    metrics_port: int | None = None,
) -> None:
    """The ``shoal controller`` process body; with ``metrics_port``, its admin listener on
    127.0.0.1 (``/metrics``, ``/healthz``, ``/readyz``: ready once a round has run)."""
    controller = Controller(
        redis, url, keys, state_dir=state_dir, trust_domain=trust_domain, autoscale=autoscale
    )
    admin = MetricsServer(
        lambda: _text(controller.report),
        lambda: None if controller.report.ticks else "no round run yet",
    )
    if metrics_port is not None:
        await admin.start("127.0.0.1", metrics_port)
    try:
        await controller.run(stop)
    finally:
        await admin.stop()


async def _text(report: ControllerReport) -> str:
    return exposition(families(report))
