"""A controller and a node in-process, running real instance processes on real Redis."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from shoal.mesh.endpoint import Endpoint
from shoal.platform.client import Client
from shoal.platform.controller import Controller
from shoal.platform.node import run_node
from shoal.platform.resources import parse_text
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "hello-world"

SERVICES = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: hello}}
spec:
  app: app:hello
  workdir: {EXAMPLE}
  revision: v1
  scale: {{min: 2}}
  health: {{path: /healthz}}
---
apiVersion: shoal/v1
kind: Service
metadata: {{name: world}}
spec:
  app: app:world
  workdir: {EXAMPLE}
  revision: v1
  health: {{path: /healthz}}
---
apiVersion: shoal/v1
kind: Service
metadata: {{name: shell}}
spec:
  command: [python3, -m, http.server, "$PORT", --bind, 127.0.0.1]
  revision: v1
"""


@dataclass
class Cluster:
    """A controller and one node on the test's key prefix."""

    client: Client
    mesh_port: int

    async def instances(
        self, cond: Callable[[list[Endpoint]], bool], timeout: float = 20.0
    ) -> list[Endpoint]:
        """Poll the registry until ``cond`` holds for the instance list."""
        async with asyncio.timeout(timeout):
            while True:
                found = await self.client.registry.instances()
                if cond(found):
                    return found
                await asyncio.sleep(0.05)


def ready(found: list[Endpoint], service: str) -> list[Endpoint]:
    """The ready instances of ``service``."""
    return [e for e in found if e.service == service and e.state == "ready"]


@pytest.fixture
async def cluster(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """A controller and a node running until the test ends."""
    stop = asyncio.Event()
    mesh_port = free_port()
    controller = asyncio.create_task(Controller(redis, redis_url, keys).run(stop))
    node = asyncio.create_task(
        run_node(
            redis,
            redis_url,
            keys,
            node_id="n1",
            state_dir=tmp_path,
            stop=stop,
            mesh_port=mesh_port,
            drain_delay=0.1,
            grace=5,
        )
    )
    yield Cluster(Client(redis, keys), mesh_port)
    stop.set()
    await asyncio.wait_for(asyncio.gather(controller, node), 30)


@pytest.mark.timeout(90)
async def test_runs_restarts_and_drains(cluster: Cluster) -> None:
    """Applied Services get instances; a SIGKILLed one is restarted; a delete drains them."""
    await cluster.client.apply(parse_text(SERVICES))
    found = await cluster.instances(
        lambda f: (
            len(ready(f, "hello")) == 2
            and len(ready(f, "world")) == 1
            and len(ready(f, "shell")) == 1
        )
    )
    victim = ready(found, "world")[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGKILL)
    states: set[str] = set()

    def replaced(f: list[Endpoint]) -> bool:
        states.update(e.state for e in f if e.id == victim.id)
        return any(e.id == victim.id and e.pid != victim.pid and e.state == "ready" for e in f)

    await cluster.instances(replaced)
    assert "ready" in states

    # east-west: through the node router, hello's instance calls world
    hello = ready(await cluster.client.registry.instances(), "hello")[0]
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://{hello.authority}/chain") as r:
            assert (r.status, await r.text()) == (200, "World, Hello!\n")
        async with s.get(f"http://127.0.0.1:{cluster.mesh_port}/", headers={"Host": "hello"}) as r:
            assert r.headers["x-version"] == "v1"

    await cluster.client.delete("service", "world")
    await cluster.instances(lambda f: not [e for e in f if e.service == "world"])


@pytest.mark.timeout(60)
async def test_hung_instance_goes_unhealthy_and_back(cluster: Cluster) -> None:
    """SIGSTOP makes an instance fail its health checks (unhealthy); SIGCONT brings it back."""
    doc = SERVICES.split("---")[1].replace(
        "health: {path: /healthz}",
        "health: {path: /healthz, interval: 0.2s, timeout: 0.2s, unhealthy_threshold: 2}",
    )
    await cluster.client.apply(parse_text(doc))
    found = await cluster.instances(lambda f: len(ready(f, "world")) == 1)
    victim = ready(found, "world")[0]
    assert victim.pid is not None
    os.kill(victim.pid, signal.SIGSTOP)
    try:
        await cluster.instances(
            lambda f: any(e.id == victim.id and e.state == "unhealthy" for e in f)
        )
    finally:
        os.kill(victim.pid, signal.SIGCONT)
    back = await cluster.instances(lambda f: len(ready(f, "world")) == 1)
    assert ready(back, "world")[0].pid == victim.pid  # the same process, not a restart
