"""A controller and a node in-process, running real instance processes on real Redis."""

from __future__ import annotations

import logging
import os
import signal
from pathlib import Path

import aiohttp
import pytest

from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import SERVICES, Cluster, ready, running_cluster
from tests.support.wait import eventually


def instance_children() -> list[int]:
    """Instance processes this process runs: its children running ``shoal.platform.runtime.serve``,
    and the processes its templates (``shoal.platform.runtime.template_process``) forked."""
    me = os.getpid()
    procs: dict[int, tuple[int, bytes]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            procs[int(stat.parent.name)] = (ppid, (stat.parent / "cmdline").read_bytes())
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
    templates = {
        pid
        for pid, (ppid, cmd) in procs.items()
        if ppid == me and b"shoal.platform.runtime.template_process" in cmd
    }
    return [
        pid
        for pid, (ppid, cmd) in procs.items()
        if (ppid == me and b"shoal.platform.runtime.serve" in cmd) or ppid in templates
    ]


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
        async with s.get(f"{cluster.gateway_url}/", headers={"Host": "hello"}) as r:
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


RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: world}
spec:
  host: world
  trafficPolicy: {failureThreshold: %d, healthyThreshold: 1}
"""


@pytest.mark.timeout(90)
async def test_destination_rule_thresholds_act_on_running_instances(
    cluster: Cluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A DestinationRule applied while an instance runs sets how many failed checks take it
    out of the rotation: SIGSTOPped, it leaves after 1 with ``failureThreshold: 1``, after 6
    with 6 (the Service's own threshold is 3)."""
    caplog.set_level(logging.INFO, logger="shoal.platform")
    doc = SERVICES.split("---")[1].replace(
        "health: {path: /healthz}", "health: {path: /healthz, interval: 0.2s, timeout: 0.2s}"
    )
    await cluster.client.apply(parse_text(doc))
    victim = ready(await cluster.instances(lambda f: len(ready(f, "world")) == 1), "world")[0]
    assert victim.pid is not None
    for threshold in (1, 6):
        await cluster.client.apply(parse_text(RULE % threshold))
        said = f"fail an instance after {threshold} failures"
        await eventually(
            lambda said=said: said in caplog.text,  # type: ignore[misc]
            f"the agent takes failureThreshold {threshold}",
            until=bool,
        )
        caplog.clear()
        os.kill(victim.pid, signal.SIGSTOP)
        try:
            await cluster.instances(
                lambda f: any(e.id == victim.id and e.state == "unhealthy" for e in f)
            )
        finally:
            os.kill(victim.pid, signal.SIGCONT)
        assert f"world/v1/{victim.id} is unhealthy after {threshold} probes" in caplog.text
        await cluster.instances(lambda f: len(ready(f, "world")) == 1)


@pytest.mark.timeout(60)
async def test_stop_ends_hung_and_restarting_instances(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A node stopped right after drills hung (SIGSTOP) and killed (SIGKILL) its instances still
    ends every instance process, deregisters itself and them, and leaves no task running."""
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await cluster.client.apply(parse_text(SERVICES.split("---")[0]))
        hung, killed = ready(
            await cluster.instances(lambda f: len(ready(f, "hello")) == 2), "hello"
        )
        assert hung.pid is not None and killed.pid is not None
        assert sorted(instance_children()) == sorted([hung.pid, killed.pid])
        os.kill(hung.pid, signal.SIGSTOP)
        os.kill(killed.pid, signal.SIGKILL)
    # running_cluster has waited for every component and checked that no task is left.
    assert await cluster.client.registry.instances() == []
    assert "n1" not in await cluster.client.registry.nodes()
    assert instance_children() == []
