"""Failover drills against a real in-process mesh running the example's hello service."""

from __future__ import annotations

import pytest

from shoal.platform.drill import failover
from shoal.platform.resources import load_files
from tests.support.cluster import EXAMPLE, Cluster, ready


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
