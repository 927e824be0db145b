"""The mesh through a store outage: a stalled Redis and a killed-and-restarted one."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.platform.drills.drill import redis_outage
from shoal.platform.supervisor import Supervisor
from shoal.resources.manifest import load_files
from shoal.store.connection import connect
from shoal.store.keys import Keys
from tests.support.cluster import EXAMPLE, ready, running_cluster


@pytest.fixture
def supervised_redis(tmp_path: Path) -> Iterator[Supervisor]:
    """A Redis of its own (outages must not touch other tests), restarted if it dies."""
    sup = Supervisor(
        state_dir=tmp_path / "state", redis_url=None, component_args={}, env=dict(os.environ)
    )
    sup.start()
    watcher = threading.Thread(target=sup.watch, args=(lambda event: None,), daemon=True)
    watcher.start()
    yield sup
    sup.stop()
    watcher.join(5)


@pytest.mark.slow
@pytest.mark.timeout(120)
@pytest.mark.parametrize("mode", ["stop", "kill"])
async def test_traffic_flows_and_registry_survives(
    supervised_redis: Supervisor, tmp_path: Path, mode: str
) -> None:
    """With the store stalled (SIGSTOP) or killed, clients see no error, and once it is back
    every instance is still registered and ready: nothing was pruned."""
    assert supervised_redis.embedded is not None and supervised_redis.embedded.process
    url = supervised_redis.embedded.url
    redis = connect(url)
    try:
        async with running_cluster(redis, url, Keys(), tmp_path) as cluster:
            await cluster.client.apply(load_files([str(EXAMPLE / "hello.yaml")]))
            await cluster.instances(lambda f: len(ready(f, "hello")) == 4)
            report = await redis_outage(
                cluster.client,
                gateway=cluster.gateway_url,
                service="hello",
                redis_pid=supervised_redis.embedded.process.pid,
                mode=mode,
                down=6.0,
                duration=8.0,
                rps=50,
            )
            assert report.errors == {}
            assert report.requests >= 400
            assert "no instance was pruned" in report.notes
            assert report.recovered_after is not None
            back = await cluster.instances(lambda f: len(ready(f, "hello")) == 4)
            assert len(back) == 4
    finally:
        await redis.aclose()
