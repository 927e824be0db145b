"""A node: the router and the agent of one host, in one process (DESIGN.md §1)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from shoal.mesh.follow import follow
from shoal.mesh.forward import Forwarder
from shoal.mesh.proxy import Proxy
from shoal.mesh.router import Router
from shoal.mesh.upstream import Upstreams
from shoal.platform.agent import Agent
from shoal.store.connection import Redis
from shoal.store.keys import Keys

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
    tasks = follow(proxy, redis, url, keys, f"router/{node_id}")
    try:
        await agent.run(stop)
    finally:
        # The router serves until the agent has drained: instances call out while they drain.
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await router.stop()
