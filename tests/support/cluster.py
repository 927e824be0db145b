"""A controller, a node and a gateway in-process, on real Redis, running real instances."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from shoal.gateway.server import GatewaySettings, run_gateway
from shoal.http.limits import EdgeLimits
from shoal.platform.ca.tokens import JoinTokens
from shoal.platform.control.client import Client
from shoal.platform.control.controller import Controller
from shoal.platform.control.scaling import AutoscaleSettings
from shoal.platform.node import run_node
from shoal.platform.runtime.isolation import UidRange
from shoal.resources.endpoint import Endpoint
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from shoal.store.pki import PKIStore
from tests.support.wait import eventually

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "hello-world"
TRUST_DOMAIN = "shoal.test"
STOP_TIMEOUT = 30.0  # seconds; a node drains an instance that ignores SIGTERM in grace=5

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
    """A controller, one node and a gateway on the test's key prefix."""

    client: Client
    mesh_port: int
    gateway_port: int
    tls_port: int | None = None  # the gateway's TLS port, when it serves one
    gateway_admin: int = 0  # the gateway's admin port (/metrics, /healthz, /readyz)
    node_admin: int = 0  # the node's

    @property
    def gateway_url(self) -> str:
        """The gateway's plaintext base URL."""
        return f"http://127.0.0.1:{self.gateway_port}"

    async def instances(
        self, cond: Callable[[list[Endpoint]], bool], timeout: float = 20.0
    ) -> list[Endpoint]:
        """Poll the registry until ``cond`` holds for the instance list."""
        return await eventually(
            self.client.registry.instances,
            "the registry's instances to match",
            until=cond,
            timeout=timeout,
            interval=0.05,
            show=lambda found: str([f"{e.key} {e.state}" for e in found]),
        )


def ready(found: list[Endpoint], service: str) -> list[Endpoint]:
    """The ready instances of ``service``."""
    return [e for e in found if e.service == service and e.state == "ready"]


@pytest.fixture
async def cluster(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> AsyncIterator[Cluster]:
    """A controller, a node and a gateway running until the test ends."""
    async with running_cluster(redis, redis_url, keys, tmp_path) as c:
        yield c


@asynccontextmanager
async def running_cluster(
    redis: Redis,
    redis_url: str,
    keys: Keys,
    state_dir: Path,
    autoscale: AutoscaleSettings | None = None,
    limits: EdgeLimits | None = None,
    tls: tuple[Path, Path] | None = None,
    instance_uids: UidRange | None = None,
    trust_domain: str = TRUST_DOMAIN,
    access_logs: Path | None = None,
    otlp_endpoint: str | None = None,
) -> AsyncIterator[Cluster]:
    """A controller (with ``autoscale`` settings), a node and a gateway (with edge ``limits``,
    and a TLS port with the certificate and key ``tls`` if given) in this event loop, on the
    given store. Instances run as this process's user unless ``instance_uids`` is given: the
    test apps and commands live in this checkout, which other uids may not be able to enter
    (a clone in a ``mktemp -d`` directory); tests of isolation itself give the range. With
    ``access_logs`` (a directory), the gateway and the node write their access logs there; with
    ``otlp_endpoint``, they export their spans there."""
    stop = asyncio.Event()
    mesh_port, gateway_admin, node_admin = free_port(), free_port(), free_port()
    token = await JoinTokens(PKIStore(redis, keys)).create(uses=2)  # the node's and the gateway's
    controller = asyncio.create_task(
        Controller(
            redis,
            redis_url,
            keys,
            state_dir=state_dir,
            trust_domain=trust_domain,
            autoscale=autoscale,
        ).run(stop)
    )
    node = asyncio.create_task(
        run_node(
            redis,
            redis_url,
            keys,
            node_id="n1",
            state_dir=state_dir,
            stop=stop,
            trust_domain=trust_domain,
            join_token=token,
            mesh_port=mesh_port,
            drain_delay=0.1,
            grace=5,
            limits=limits,
            instance_uids=instance_uids,
            access_log=str(access_logs / "access-node.log") if access_logs else "off",
            metrics_port=node_admin,
            otlp_endpoint=otlp_endpoint,
        )
    )
    gateway_port = free_port()
    tls_port, serving = None, {}
    if tls is not None:
        tls_port = free_port()
        serving = {"tls_port": tls_port, "certfile": str(tls[0]), "keyfile": str(tls[1])}
    gateway = asyncio.create_task(
        run_gateway(
            redis,
            redis_url,
            keys,
            stop=stop,
            trust_domain=trust_domain,
            join_token=token,
            settings=GatewaySettings(
                host="127.0.0.1",
                port=gateway_port,
                limits=limits or EdgeLimits(),
                access_log=str(access_logs / "access-gateway.log") if access_logs else "off",
                metrics_port=gateway_admin,
                otlp_endpoint=otlp_endpoint,
                **serving,
            ),
        )
    )
    try:
        # The gateway listens once it holds its mesh certificate.
        _, writer = await eventually(
            lambda: asyncio.open_connection("127.0.0.1", gateway_port),
            f"the gateway listening on port {gateway_port}",
            ignore=(OSError,),
        )
        writer.close()
        yield Cluster(
            Client(redis, keys), mesh_port, gateway_port, tls_port, gateway_admin, node_admin
        )
    finally:
        stop.set()
        components = {"controller": controller, "node": node, "gateway": gateway}
        _, pending = await asyncio.wait(components.values(), timeout=STOP_TIMEOUT)
        for task in pending:
            task.cancel()
        late = [name for name, task in components.items() if task in pending]
        assert not late, f"did not stop within {STOP_TIMEOUT}s of their stop event: {late}"
        for task in components.values():
            task.result()  # a component that crashed fails the test
        await no_task_left()


async def no_task_left(timeout: float = 5.0) -> None:
    """Wait until this test's task is the loop's only one: every component awaited its own."""
    me = asyncio.current_task()
    await eventually(
        lambda: [t.get_coro() for t in asyncio.all_tasks() if t is not me],
        "no task left running",
        until=lambda left: not left,
        timeout=timeout,
        interval=0.05,
    )
