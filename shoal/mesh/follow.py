"""How a proxy process stays in step with the store, and reports back to it.

A watcher feeds every view into the :class:`~shoal.mesh.proxy_state.ProxyState` (views that
arrive while one is applied are applied together); an ack loop
records the revision applied and the proxy's report (counters, load, ejections) every second,
which ``shoal apply --wait``, ``shoal status``, drills and the autoscaler read.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace

from shoal.mesh.credentials import Credentials
from shoal.mesh.proxy_state import CONFIG_KINDS, ProxyState
from shoal.store.acks import Acks
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from shoal.store.watch import View, Watcher


async def follow(
    proxy_state: ProxyState,
    redis: Redis,
    url: str,
    keys: Keys,
    component: str,
    credentials: Credentials | None = None,
) -> None:
    """Follow the store for ``proxy_state`` and report back, until cancelled.

    With ``credentials``, the report also says which certificates the process holds and which
    roots it trusts (``shoal certs status`` and root rotation read it).
    """
    if credentials is not None:
        proxy_state.extra_reports.append(lambda: {"certs": credentials.report()})
    acks = Acks(redis, keys, component, report=lambda: proxy_state.report(time.monotonic()))
    watcher = Watcher(url, keys, CONFIG_KINDS)

    views: list[View] = []  # handed over, not applied yet
    arrived = asyncio.Event()

    def on_view(view: View) -> None:
        views.append(view)
        arrived.set()

    async def apply() -> None:
        while True:
            await arrived.wait()
            arrived.clear()
            view = merged(views)
            views.clear()
            await proxy_state.apply(view)
            acks.applied(proxy_state.revision)

    # The loops run until cancelled; if one fails, the group cancels the others and raises.
    async with asyncio.TaskGroup() as group:
        group.create_task(watcher.run(on_view), name=f"{component} config follower")
        group.create_task(apply(), name=f"{component} snapshots")
        group.create_task(acks.run(), name=f"{component} acks")


def merged(views: list[View]) -> View:
    """The last of ``views`` (handed over in order, none applied yet), with what changed since
    the view before the first: a burst of changes is applied once."""
    last = views[-1]
    if len(views) == 1:
        return last
    if any(view.changes is None for view in views):
        return replace(last, changes=None)
    changes: dict[str, frozenset[str]] = {}
    for view in views:
        assert view.changes is not None
        for kind, names in view.changes.items():
            changes[kind] = changes.get(kind, frozenset()) | names
    return replace(last, changes=changes)
