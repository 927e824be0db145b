"""Scale to zero, activation and autoscaling on a real cluster (controller, node, gateway).

The controller's windows are shortened (Knative's ``stable-window``, a user setting too) so a
scale-down takes seconds, not a minute.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from shoal.platform.control.scaling import AutoscaleSettings
from shoal.resources.manifest import parse_text
from shoal.store.acks import live_reports
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import EXAMPLE, Cluster, ready, running_cluster
from tests.support.wait import eventually

SUPPORT = Path(__file__).resolve().parents[1] / "support"
FAST = AutoscaleSettings(stable_window=3.0, panic_window=1.0)

AT_ZERO = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: hello}}
spec:
  app: app:hello
  workdir: {EXAMPLE}
  revision: v1
  scale: {{min: 0, idle_timeout: 1s}}
  health: {{path: /healthz}}
"""

SLOW = f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: slow}}
spec:
  app: apps:slow
  workdir: {SUPPORT}
  revision: v1
  scale: {{min: 1, max: 4, target_concurrency: 2}}
  health: {{path: /healthz}}
"""


@pytest.fixture
async def fast_cluster(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """A cluster whose autoscaler uses a 3 s stable window."""
    async with running_cluster(redis, redis_url, keys, tmp_path, autoscale=FAST) as c:
        yield c


async def get(session: aiohttp.ClientSession, cluster: Cluster, host: str) -> tuple[int, str]:
    async with session.get(cluster.gateway_url, headers={"Host": host}) as r:
        return r.status, await r.text()


@pytest.mark.timeout(60)
async def test_scale_to_zero_and_back_on_the_next_request(fast_cluster: Cluster) -> None:
    """A min-0 service starts at zero; a request is held while an instance starts and then
    answered; after idle_timeout (and the stable window) it is back at zero; the gateway
    reports the activation and its cold start."""
    cluster = fast_cluster
    await cluster.client.apply(parse_text(AT_ZERO))
    (decided,) = await eventually(  # the controller has seen hello/v1: it places nothing
        lambda: cluster.client.revisions("hello"),
        "the autoscaler deciding on hello/v1",
        until=lambda revisions: revisions[0]["desired"] is not None,
    )
    assert decided["desired"] == 0
    assert not [e for e in await cluster.client.registry.instances() if e.service == "hello"]
    async with aiohttp.ClientSession() as s:
        started = time.monotonic()
        assert await get(s, cluster, "hello") == (200, "Hello, World!\n")
        cold = time.monotonic() - started
    await cluster.instances(lambda f: not [e for e in f if e.service == "hello"], timeout=20)
    reports = await live_reports(cluster.client.redis, cluster.client.keys)
    gateway = reports["gateway"]
    assert gateway["activations"] >= 1
    assert 0 < gateway["cold_starts_ms"][-1] <= cold * 1000 + 1


@pytest.mark.timeout(60)
async def test_fifty_concurrent_requests_at_zero_all_succeed(fast_cluster: Cluster) -> None:
    """50 requests arriving together at a service with no instance are all held and served."""
    cluster = fast_cluster
    await cluster.client.apply(parse_text(AT_ZERO))
    async with aiohttp.ClientSession() as s:
        results = await asyncio.gather(*(get(s, cluster, "hello") for _ in range(50)))
    assert results == [(200, "Hello, World!\n")] * 50


@pytest.mark.timeout(90)
async def test_load_scales_up_and_back_down(fast_cluster: Cluster) -> None:
    """20 concurrent clients on 0.2 s requests with target concurrency 2 scale the service
    from 1 to its max of 4 instances; when the load stops it returns to its min of 1."""
    cluster = fast_cluster
    await cluster.client.apply(parse_text(SLOW))
    await cluster.instances(lambda f: len(ready(f, "slow")) == 1)
    stop = asyncio.Event()
    statuses: list[int] = []

    async def client(s: aiohttp.ClientSession) -> None:
        while not stop.is_set():
            statuses.append((await get(s, cluster, "slow"))[0])

    async with aiohttp.ClientSession() as s:
        clients = [asyncio.ensure_future(client(s)) for _ in range(20)]
        try:
            await cluster.instances(lambda f: len(ready(f, "slow")) == 4, timeout=30)
        finally:
            stop.set()
            await asyncio.gather(*clients)
    assert set(statuses) == {200}
    await cluster.instances(lambda f: len([e for e in f if e.service == "slow"]) == 1, timeout=30)
