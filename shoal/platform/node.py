"""A node: the router and the agent of one host, in one process (DESIGN.md §1)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal.mesh.forward import Forwarder
from shoal.mesh.proxy import CONFIG_KINDS, Proxy
from shoal.mesh.router import Router
from shoal.mesh.upstream import Upstreams
from shoal.platform.agent import Agent
from shoal.store.acks import Acks
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from shoal.store.watch import View, Watcher

DEFAULT_MESH_PORT = 15001  # Istio's outbound port, for familiarity


async def run_node(
    redis: Redis,
    url: str,
    keys: Keys,
    *,
    node_id: str,
    state_dir: Path,
    stop: asyncio.Event,
    mesh_port: int = DEFAULT_MESH_PORT,
    drain_delay: float = 1.0,
    grace: float = 30.0,
) -> None:
    """Serve the node's router and run its agent until ``stop``; then drain and deregister."""
    proxy = Proxy()
    router = Router(Forwarder(proxy, Upstreams()))
    port = await router.start("127.0.0.1", mesh_port)
    acks = Acks(redis, keys, f"router/{node_id}")
    watcher = Watcher(url, keys, CONFIG_KINDS)

    def on_view(view: View) -> None:
        proxy.update(view)
        acks.applied(proxy.revision)

    agent = Agent(
        redis,
        url,
        keys,
        node_id=node_id,
        mesh_url=f"http://127.0.0.1:{port}",
        log_dir=state_dir / "logs",
        node_record={"mesh": f"127.0.0.1:{port}"},
        drain_delay=drain_delay,
        grace=grace,
    )
    tasks = [asyncio.ensure_future(watcher.run(on_view)), asyncio.ensure_future(acks.run())]
    try:
        await agent.run(stop)
    finally:
        for t in tasks:
            t.cancel()
        await router.stop()
