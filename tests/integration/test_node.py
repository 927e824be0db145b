"""A controller and a node in-process, running real instance processes on real Redis."""

from __future__ import annotations

import os
import signal

import aiohttp
import pytest

from shoal.mesh.endpoint import Endpoint
from shoal.platform.resources import parse_text
from tests.support.cluster import SERVICES, Cluster, ready


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
