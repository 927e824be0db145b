"""Failover drills against a real in-process mesh running the example's hello service."""

from __future__ import annotations

import re

import pytest

from shoal.platform.drills.drill import Sample, failover
from shoal.resources.manifest import load_files
from tests.support.cluster import EXAMPLE, Cluster, ready
from tests.support.wait import eventually


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["kill", "hang", "error"])
async def test_drill_sees_no_client_errors(cluster: Cluster, fault: str) -> None:
    """Killing, hanging or breaking one instance under steady GETs costs clients nothing,
    and the report shows when the fault was detected and when the instance recovered."""
    await cluster.client.apply(load_files([str(EXAMPLE / "hello.yaml")]))
    await cluster.instances(lambda f: len(ready(f, "hello")) == 4)
    report = await failover(
        cluster.client,
        gateway=cluster.gateway_url,
        service="hello",
        fault=fault,
        count=1,
        duration=8.0,
        rps=50,
    )  # type: ignore[arg-type]
    assert report.requests >= 350
    assert report.errors == {}
    assert report.detected_after is not None
    assert report.recovered_after is not None
    if fault != "kill":
        assert report.retried > 0


@pytest.mark.timeout(120)
async def test_scale_down_and_redeploy_lose_no_request(cluster: Cluster) -> None:
    """Under steady traffic, scaling a revision down and retiring another (weights first, then
    delete) drains their instances without a single failed request."""
    import asyncio
    import dataclasses
    import time

    from shoal.platform.drills.drill import Traffic
    from shoal.resources.model import Scale, Service

    resources = load_files([str(EXAMPLE / "hello.yaml")])
    await cluster.client.apply(resources)
    await cluster.instances(lambda f: len(ready(f, "hello")) == 4)
    origin = time.monotonic()
    traffic = Traffic(cluster.gateway_url + "/", "hello", 100, lambda: time.monotonic() - origin)
    load = asyncio.ensure_future(traffic.run(8.0))
    await eventually(lambda: len(traffic.samples) >= 100, "traffic flowing", timeout=5)
    v1 = next(r for r in resources if isinstance(r, Service) and r.revision == "v1")
    await cluster.client.apply([dataclasses.replace(v1, scale=Scale(min=1))])
    await cluster.instances(lambda f: len([e for e in f if e.revision == "v1"]) == 1)
    _, revision = await cluster.client.weights("hello", ["v1=100"])
    assert not await cluster.client.wait_applied(revision, 5)
    await cluster.client.delete("service", "hello/v2")
    await cluster.instances(lambda f: not [e for e in f if e.revision == "v2"])
    await load
    failed = [s for s in traffic.samples if s.status != 200]
    assert len(traffic.samples) >= 700
    assert failed == []


@pytest.mark.timeout(120)
async def test_a_drill_faults_an_instance_that_serves_traffic(cluster: Cluster) -> None:
    """With all of hello's traffic on v2, the drill faults a v2 instance (v1 has as many
    instances, but faulting one would prove nothing) and says how many requests it had served;
    it tells its phases as it goes; a named instance is faulted as asked, and the report says
    it served nothing."""
    await cluster.client.apply(load_files([str(EXAMPLE / "hello.yaml")]))
    await cluster.instances(lambda f: len(ready(f, "hello")) == 4)
    _, revision = await cluster.client.weights("hello", ["v1=0", "v2=100"])
    assert not await cluster.client.wait_applied(revision, 5)
    phases: list[str] = []

    def told(phase: str, samples: list[Sample]) -> None:
        if not phases or phases[-1] != phase:
            phases.append(phase)

    report = await failover(
        cluster.client,
        gateway=cluster.gateway_url,
        service="hello",
        fault="error",
        count=1,
        duration=5.0,
        rps=40,
        progress=told,
    )
    [target] = report.targets
    revisions = {e.key: e.revision for e in await cluster.client.registry.instances()}
    assert revisions[target] == "v2", report
    served = re.search(
        r"the faulted instances had served (\d+) of the warm-up's (\d+)", report.notes[0]
    )
    assert served and 0 < int(served[1]) <= int(served[2]), report.notes
    assert phases[0] == "warm-up" and phases[1] == f"error {target}", phases
    assert report.errors == {}, report
    v1 = [e for e in await cluster.client.registry.instances() if e.revision == "v1"]
    named = await failover(
        cluster.client,
        gateway=cluster.gateway_url,
        service="hello",
        fault="error",
        count=1,
        duration=3.0,
        rps=20,
        instances=[v1[0].id],
    )
    assert named.targets == [v1[0].key], named
    assert named.notes[0].startswith("the faulted instances had served 0 of"), named.notes
