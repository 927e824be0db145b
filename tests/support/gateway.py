"""An in-process gateway on real hypercorn and real Redis, for integration tests."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
import pytest

from shoal.gateway.server import GatewaySettings, run_gateway
from shoal.platform.control.client import Client
from shoal.store.acks import live_acks
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from tests.support.wait import eventually


@dataclass
class Gateway:
    """A running in-process gateway."""

    port: int
    client: Client
    stop: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)  # set: it drains

    @property
    def url(self) -> str:
        """Its plaintext base URL."""
        return f"http://127.0.0.1:{self.port}"

    async def settle(self, timeout: float = 5.0) -> None:
        """Wait until the gateway has applied the store's current config revision."""
        revision = await self.client.config.revision()
        await eventually(
            lambda: live_acks(self.client.redis, self.client.keys),
            f"the gateway to apply config revision {revision}",
            until=lambda acks: acks.get("gateway", -1) >= revision,
            timeout=timeout,
        )


@contextlib.asynccontextmanager
async def serving(
    redis: Redis, redis_url: str, keys: Keys, settings: GatewaySettings
) -> AsyncIterator[Gateway]:
    """A gateway served by hypercorn with ``settings``, following the test's key prefix. No CA
    runs: it listens at once, without a mesh certificate (its upstreams are outside the mesh)."""
    settings = dataclasses.replace(settings, identity_wait=0)
    stop = asyncio.Event()  # set when the test leaves, or by the test to drain it
    task = asyncio.create_task(
        run_gateway(redis, redis_url, keys, settings=settings, stop=stop, trust_domain="shoal.test")
    )
    _, w = await eventually(
        lambda: asyncio.open_connection("127.0.0.1", settings.port),
        f"the gateway listening on port {settings.port}",
        ignore=(OSError,),
    )
    w.close()
    try:
        yield Gateway(port=settings.port, client=Client(redis, keys), stop=stop)
    finally:
        stop.set()
        async with asyncio.timeout(10):
            await task


@pytest.fixture
async def gateway(redis: Redis, redis_url: str, keys: Keys) -> AsyncIterator[Gateway]:
    """A plaintext gateway on a free port."""
    settings = GatewaySettings(host="127.0.0.1", port=free_port())
    async with serving(redis, redis_url, keys, settings) as gw:
        yield gw


async def get(
    gw: Gateway, path: str, host: str = "echo", **headers: str
) -> tuple[int, dict[str, str], bytes]:
    """One request through the gateway."""
    async with aiohttp.ClientSession() as s:
        async with s.get(gw.url + path, headers={"Host": host, **headers}) as r:
            return r.status, dict(r.headers), await r.read()
