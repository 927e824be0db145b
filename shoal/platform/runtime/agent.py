"""The node agent: runs the instances placed on this node and keeps the registry told.

It watches its node's ``Placement`` (desired instances per revision, written by the controller)
and the ``Service`` documents; a reconcile loop turns the difference into slot starts and drains
(:func:`.reconcile.plan`). A heartbeat loop re-asserts every instance record and
the node record with short leases, at once when a slot changes state and every second
otherwise, so a Redis restart never leaves the registry empty for long.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from shoal.errors import StoreError
from shoal.mesh.tasks import OwnedTasks, task_group
from shoal.platform.runtime import log_files
from shoal.platform.runtime.faults import SIGNALS
from shoal.platform.runtime.health import HealthThresholds, thresholds
from shoal.platform.runtime.instance import InstanceSlot, template_env, templates_enabled
from shoal.platform.runtime.isolation import Isolation
from shoal.platform.runtime.reconcile import Slot, plan
from shoal.platform.runtime.template_pool import Templates
from shoal.platform.runtime.template_protocol import TemplateError
from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import StoredResources
from shoal.resources.model import DestinationRule, Service
from shoal.resources.weights import find_rule
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from shoal.store.registry import Registry
from shoal.store.watch import View, Watcher

log = logging.getLogger(__name__)

PLACEMENT = "Placement"
FAULT = "Fault"  # drills: {"fault": kill|hang|error|slow, "id": drill id} by instance key
_CONFIG = frozenset({"Service", "DestinationRule"})  # the kinds an agent parses
HEARTBEAT_EVERY = 1.0
LEASE_TTL = 5.0
TIDY_LOGS_EVERY = 60.0  # seconds between looks at the instance logs' sizes and ages


def default_node_id() -> str:
    """This host's name: a node id that stays the same across restarts."""
    return socket.gethostname().split(".")[0] or "node"


def desired_for(view: View, node_id: str) -> dict[str, int]:
    """The instances per ``service/revision`` the controller placed on ``node_id``."""
    doc = view.documents(PLACEMENT).get(node_id) or {}
    return {k: int(v) for k, v in (doc.get("revisions") or {}).items()}


class Agent:
    """Supervises this node's instance slots and their registry records."""

    def __init__(
        self,
        redis: Redis,
        url: str,
        keys: Keys,
        *,
        node_id: str,
        mesh_url: Callable[[Service], Awaitable[str]],
        log_dir: Path,
        node_record: dict[str, Any] | None = None,
        drain_delay: float = 1.0,
        grace: float = 30.0,
        rng: random.Random | None = None,
        isolation: Isolation | None = None,
    ) -> None:
        self.node_id = node_id
        # Who instances run as; None: the platform's user (tests of the agent alone)
        self.isolation = isolation
        self.mesh_url = mesh_url  # revision -> URL of its instances' outbound listener
        self.log_dir = log_dir
        self.registry = Registry(redis, keys)
        self.watcher = Watcher(url, keys, ["Service", "DestinationRule", PLACEMENT, FAULT])
        self.slots: dict[str, InstanceSlot] = {}
        self.node_record = {"pid": os.getpid(), "host": socket.gethostname(), **(node_record or {})}
        self.drain_delay = drain_delay
        self.grace = grace
        self.rng = rng or random.Random()
        self._services: dict[str, Service] = {}
        self._stored = StoredResources()
        self._rules: list[DestinationRule] = []
        self._faults: dict[str, dict[str, Any]] = {}  # instance key -> the fault applied
        self._desired: dict[str, int] = {}
        self._dirty = asyncio.Event()
        self._registry_dirty = asyncio.Event()
        # Slot runs, drains and template warm-ups: each ends on its own, all before we stop.
        self._tasks = OwnedTasks(f"agent {node_id}")
        self._removed: set[str] = set()
        # The endpoint last written for each instance (None: nothing written by this run yet)
        self._sent: dict[str, Endpoint] | None = None
        # One pre-warmed template per app revision: instances are forked, not started afresh.
        self.templates = Templates()

    def _on_view(self, view: View) -> None:
        changes = view.changes
        if changes is None and self._sent is not None:
            # Loaded whole: the store was reconnected to (a restart, a failover to a replica
            # that may have missed the last writes): every record is written again.
            self._sent = {}
        if changes is None or not _CONFIG.isdisjoint(changes):  # (else: as they were)
            self._services = {
                k: r
                for k, r in self._stored.parse("Service", view.documents("Service")).items()
                if isinstance(r, Service)
            }
            self._rules = [
                r
                for r in self._stored.parse(
                    "DestinationRule", view.documents("DestinationRule")
                ).values()
                if isinstance(r, DestinationRule)
            ]
            self._follow_thresholds()
        services = self._services
        self._apply_faults(dict(view.documents(FAULT)))
        self._desired = {k: n for k, n in desired_for(view, self.node_id).items() if k in services}
        self._dirty.set()

    def _slot_changed(self) -> None:
        self._registry_dirty.set()

    def _reconcile(self) -> None:
        slots = [
            Slot(id=s.id, revision_key=s.revision_key, state=s.state, started=s.created)
            for s in self.slots.values()
        ]
        p = plan(self._desired, slots)
        for rev, count in p.start:
            for _ in range(count):
                slot = InstanceSlot(
                    self._services[rev],
                    node=self.node_id,
                    mesh_url=functools.partial(self.mesh_url, self._services[rev]),
                    log_dir=self.log_dir,
                    on_change=self._slot_changed,
                    rng=self.rng,
                    thresholds=self._thresholds(self._services[rev]),
                    templates=self.templates,
                    user=self._user(self._services[rev]),
                )
                self.slots[slot.id] = slot
                self._tasks.spawn(slot.run(), name=f"run {rev} {slot.id}")
                log.info("starting %s instance %s", rev, slot.id)
        for slot_id in p.stop:
            self._tasks.spawn(self._drain(self.slots[slot_id]), name=f"drain {slot_id}")
        if templates_enabled():
            self._tasks.spawn(self._warm_templates(), name="warm templates")

    async def _warm_templates(self) -> None:
        """Retire the templates of revisions gone; start those of ``app:`` revisions that may
        be at zero (``scale.min: 0``), so that their first activation here is a fork too."""
        await self.templates.retire(self._services.keys())
        running = self.templates.running()
        for service in list(self._services.values()):
            if service.app is not None and service.scale.min == 0 and service.key not in running:
                self.log_dir.mkdir(parents=True, exist_ok=True)
                user = self._user(service)
                try:
                    await self.templates.get(
                        service, template_env(service, user), log_dir=self.log_dir, user=user
                    )
                except TemplateError as e:
                    log.debug("%s: no template: %s", service.key, e)

    def _user(self, service: Service) -> int | None:
        return None if self.isolation is None else self.isolation.user(service)

    def _apply_faults(self, wanted: dict[str, dict[str, Any]]) -> None:
        """Start drill faults on our instances as they appear; undo them when they go."""
        slots = {f"{s.service.name}/{s.id}": s for s in self.slots.values()}
        for key, doc in wanted.items():
            slot = slots.get(key)
            if slot is None or self._faults.get(key) == doc or doc.get("fault") not in SIGNALS:
                continue
            log.warning("drill: %s fault on %s", doc["fault"], key)
            slot.signal(SIGNALS[doc["fault"]][0])
            self._faults[key] = doc
        for key in [k for k in self._faults if k not in wanted]:
            undo = SIGNALS[self._faults.pop(key)["fault"]][1]
            slot = slots.get(key)
            if undo is not None and slot is not None:
                log.warning("drill: fault on %s ends", key)
                slot.signal(undo)

    def _follow_thresholds(self) -> None:
        """A DestinationRule's health thresholds act on running instances too (each takes
        them at its next probe)."""
        changed: dict[str, HealthThresholds] = {}
        for slot in self.slots.values():
            wanted = self._thresholds(slot.service)
            if wanted != slot.thresholds:
                slot.thresholds = changed[slot.revision_key] = wanted
        for key, now in sorted(changed.items()):
            log.info(
                "%s: health checks now fail an instance after %d failures, pass it after %d",
                key,
                now.unhealthy_threshold,
                now.healthy_threshold,
            )

    def _thresholds(self, service: Service) -> HealthThresholds:
        rule = find_rule(service.name, self._rules)
        return thresholds(service.health, rule.traffic_policy if rule is not None else None)

    async def _drain(self, slot: InstanceSlot) -> None:
        log.info("draining %s instance %s", slot.revision_key, slot.id)
        await slot.stop(drain_delay=self.drain_delay, grace=self.grace)
        self.slots.pop(slot.id, None)
        ep = slot.endpoint()
        if ep is not None:
            self._removed.add(ep.key)
        self._registry_dirty.set()

    async def _heartbeat_once(self) -> None:
        """Renew the node's lease (its instances live on it) and write what changed: the
        records of instances that changed, the removal of those that are gone. A store that
        lost the node's record (restarted empty, or the lease expired) gets every record
        again; a node that starts removes what an earlier run of it left registered."""
        registry, node = self.registry, self.node_id
        fresh = await registry.put_node(node, self.node_record, ttl=LEASE_TTL)
        if self._sent is None:  # (this run's first heartbeat)
            self._removed |= await registry.node_instances(node)
            self._sent = {}
        elif fresh:
            self._sent = {}
        endpoints = {ep.key: ep for s in self.slots.values() if (ep := s.endpoint()) is not None}
        sent = self._sent
        self._removed |= {key for key in sent if key not in endpoints}
        self._removed -= endpoints.keys()
        changed = [ep for key, ep in endpoints.items() if sent.get(key) != ep]
        await registry.put_node_instances(node, changed)
        sent.update((ep.key, ep) for ep in changed)
        if self._removed:
            removed = sorted(self._removed)
            await registry.remove_instances(removed, node=node)
            self._removed.difference_update(removed)
            for key in removed:
                sent.pop(key, None)

    async def _heartbeats(self, done: asyncio.Event) -> None:
        # Ended by ``done`` (set with ``_registry_dirty`` to wake it), not by cancellation: the
        # Redis calls here go through asyncio.wait_for, which on Python 3.11 can swallow one.
        while not done.is_set():
            self._registry_dirty.clear()
            try:
                await self._heartbeat_once()
            except StoreError as e:
                log.warning("heartbeat failed: %s", e)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(HEARTBEAT_EVERY):
                    await self._registry_dirty.wait()

    def _live_logs(self) -> set[str]:
        """The log files being written: each slot's, and each current revision's template."""
        slots = {s.log.name for s in self.slots.values()}
        return slots | {f"template-{s.name}-{s.revision}.log" for s in self._services.values()}

    async def _tidy_logs(self) -> None:
        """Keep the instance logs within bounds (:mod:`.log_files`), every minute."""
        while True:
            await asyncio.to_thread(log_files.tidy, self.log_dir, self._live_logs(), time.time())
            await asyncio.sleep(TIDY_LOGS_EVERY)

    async def _reconciler(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            self._reconcile()

    async def _follow(self, stop: asyncio.Event) -> None:
        """Follow the views and reconcile them until ``stop`` is set."""
        async with task_group() as tasks:
            watch = tasks.create_task(self.watcher.run(self._on_view), name="watch")
            reconcile = tasks.create_task(self._reconciler(), name="reconcile")
            logs = tasks.create_task(self._tidy_logs(), name="logs")
            await stop.wait()
            # No new views, so no new slots; heartbeats go on and publish the drain.
            watch.cancel()
            reconcile.cancel()
            logs.cancel()

    async def _drain_all(self) -> None:
        """Drain every instance and wait for every slot task; then close the templates."""
        for s in list(self.slots.values()):
            self._tasks.spawn(self._drain(s), name=f"drain {s.id}")
        await self._tasks.join()
        await self.templates.close()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain every instance and deregister.

        The watcher, the reconciler and the heartbeats belong to task groups: should one fail,
        the agent drains and fails with it rather than run on without it.
        """
        drained = asyncio.Event()
        try:
            async with task_group() as tasks:
                tasks.create_task(self._heartbeats(drained), name="heartbeats")
                try:
                    await self._follow(stop)
                finally:
                    await self._drain_all()
                    drained.set()
                    self._registry_dirty.set()
        finally:
            try:
                await self._heartbeat_once()
                await self.registry.remove_node(self.node_id)
            except StoreError as e:
                log.warning("could not deregister on shutdown: %s", e)
