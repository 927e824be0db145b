"""How a proxy process stays in step with the store, and reports back to it.

A watcher feeds every view into the :class:`~shoal.mesh.proxy_state.ProxyState`; an ack loop
records the revision applied and the proxy's report (counters, load, ejections) every second,
which ``shoal apply --wait``, ``shoal status``, drills and the autoscaler read.
"""

from __future__ import annotations

import asyncio
import time

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

    def on_view(view: View) -> None:
        proxy_state.update(view)
        acks.applied(proxy_state.revision)

    # Both loops run until cancelled; if one fails, the group cancels the other and raises.
    async with asyncio.TaskGroup() as group:
        group.create_task(watcher.run(on_view), name=f"{component} config follower")
        group.create_task(acks.run(), name=f"{component} acks")
