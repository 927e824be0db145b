"""``shoal rollout`` on a real cluster: steps under load, and a rollback of a failing revision."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from shoal.platform.control.rollout import Done, RollBack
from shoal.platform.control.rollout_runner import start_rollout
from shoal.resources.manifest import parse_text
from shoal.resources.weights import current_weights, find_virtual_service
from tests.support.cluster import EXAMPLE, Cluster, ready

SUPPORT = Path(__file__).resolve().parents[1] / "support"


def revision(name: str, app: str, workdir: Path) -> str:
    return f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: roll}}
spec:
  app: {app}
  workdir: {workdir}
  revision: {name}
  health: {{path: /healthz}}
"""


ROUTES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: roll}
spec:
  host: roll
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: bad, labels: {version: bad}}
  - {name: slow, labels: {version: slow}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: roll}
spec:
  hosts: [roll]
  http:
  - route: [{destination: {host: roll, subset: v1}, weight: 100}]
"""

MANIFESTS = "---".join(
    (
        revision("v1", "app:hello", EXAMPLE),
        revision("v2", "app:world", EXAMPLE),
        revision("bad", "apps:failing", SUPPORT),
        revision("slow", "apps:slow", SUPPORT),
        ROUTES,
    )
)


@asynccontextmanager
async def traffic(cluster: Cluster) -> AsyncIterator[Counter[int]]:
    """Steady GETs to ``roll`` through the gateway while the block runs; statuses counted."""
    statuses: Counter[int] = Counter()
    stop = asyncio.Event()

    async def send() -> None:
        async with aiohttp.ClientSession() as s:
            while not stop.is_set():
                async with s.get(cluster.gateway_url, headers={"Host": "roll"}) as r:
                    await r.read()
                    statuses[r.status] += 1
                await asyncio.sleep(0.01)

    senders = [asyncio.ensure_future(send()) for _ in range(3)]
    try:
        yield statuses
    finally:
        stop.set()
        await asyncio.gather(*senders)


async def deployed(cluster: Cluster) -> None:
    await cluster.client.apply(parse_text(MANIFESTS))
    await cluster.instances(
        lambda f: all(
            any(e.revision == r and e.service == "roll" for e in ready(f, "roll"))
            for r in ("v1", "v2", "bad", "slow")
        )
    )


async def weights(cluster: Cluster) -> dict[str, int]:
    return current_weights(
        "roll", find_virtual_service("roll", await cluster.client.virtual_services())
    )


async def rolled(
    cluster: Cluster, to: str, **settings: Any
) -> tuple[Done | RollBack, Counter[int], list[str]]:
    """Deploy, then roll ``roll`` out to ``to`` under steady traffic: the result, the statuses
    clients saw and what the rollout said."""
    await deployed(cluster)
    said: list[str] = []
    async with traffic(cluster) as statuses:
        result = await start_rollout(
            cluster.client, "roll", to, said.append, min_requests=5, **settings
        )
    return result, statuses, said


@pytest.mark.timeout(90)
async def test_rollout_moves_traffic_in_steps_without_failures(cluster: Cluster) -> None:
    """10 → 50 → 100 to a healthy revision under load: every request succeeds, and at the end
    all traffic is on it."""
    result, statuses, said = await rolled(cluster, "v2", steps=[10, 50, 100], interval=1.0)
    assert isinstance(result, Done)
    assert set(statuses) == {200} and sum(statuses.values()) > 50
    assert await weights(cluster) == {"v2": 100}
    assert [line for line in said if line.startswith("weights")] == [
        "weights v1=90 v2=10",
        "weights v1=50 v2=50",
        "weights v2=100",
    ]


@pytest.mark.timeout(90)
async def test_rollout_of_a_failing_revision_rolls_back_by_itself(cluster: Cluster) -> None:
    """A revision answering 500 breaches the error-rate limit at its first step: the rollout
    restores the original weights and says why."""
    result, _, said = await rolled(cluster, "bad", steps=[20, 100], interval=1.5)
    assert isinstance(result, RollBack)
    assert "error rate of bad" in result.reason
    assert await weights(cluster) == {"v1": 100}
    assert said[-1].startswith("rolled back: error rate of bad")


@pytest.mark.timeout(90)
async def test_rollout_of_a_slow_revision_rolls_back_on_latency(cluster: Cluster) -> None:
    """A revision answering in 0.2 s breaches a 100 ms p99 limit: rolled back, saying so."""
    result, statuses, _ = await rolled(cluster, "slow", steps=[50, 100], interval=1.5, max_p99=0.1)
    assert isinstance(result, RollBack)
    assert "p99 latency of slow" in result.reason
    assert set(statuses) == {200}
    assert await weights(cluster) == {"v1": 100}


@pytest.mark.timeout(90)
async def test_rollout_by_revision_name_without_any_destination_rule(cluster: Cluster) -> None:
    """No DestinationRule, no VirtualService: ``rollout --to <revision>`` splits from the
    latest ready revision by revision names (each a subset by its own name) and ends with the
    target taking all the traffic, without a failed request."""
    plain = "---".join((revision("v1", "app:hello", EXAMPLE), revision("v2", "app:world", EXAMPLE)))
    await cluster.client.apply(parse_text(plain))
    await cluster.instances(lambda f: {e.revision for e in ready(f, "roll")} == {"v1", "v2"})
    said: list[str] = []
    async with traffic(cluster) as statuses:
        result = await start_rollout(
            cluster.client, "roll", "v1", said.append, min_requests=5, steps=[50, 100], interval=1.0
        )
    assert isinstance(result, Done), said
    assert set(statuses) == {200}, statuses
    assert await weights(cluster) == {"v1": 100}
    assert "rollout of roll to v1 (roll/v1)" in said[0], said
    rules = await cluster.client.destination_rules()
    assert not rules
