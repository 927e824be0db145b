"""Redis access beyond the embedded default: ACL users and TLS (``rediss://``) URLs.

The whole platform talks to Redis through :func:`shoal.store.connection.connect` (plain
clients) and :class:`shoal.store.watch.Watcher` (a blocking client), so both are exercised,
and then a whole in-process cluster runs on the ACL user.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote, urlsplit

import aiohttp
import pytest

from shoal.errors import StoreError, StoreUnavailable
from shoal.resources.manifest import parse_text
from shoal.store.config import Change, ConfigStore
from shoal.store.connection import Redis, connect, translated
from shoal.store.keys import Keys
from shoal.store.watch import View, Watcher
from tests.support.cluster import SERVICES, ready, running_cluster
from tests.support.tls import self_signed


@contextlib.asynccontextmanager
async def acl_user(redis: Redis, redis_url: str, keys: Keys) -> AsyncIterator[str]:
    """A Redis user that may touch only ``keys``' prefix; yields its URL."""
    name, password = f"shoal-{secrets.token_hex(4)}", secrets.token_hex(16)
    await redis.acl_setuser(
        name,
        enabled=True,
        passwords=[f"+{password}"],
        keys=[f"{keys.prefix}*"],
        commands=["+@all", "-@dangerous", "+info"],
    )
    parts = urlsplit(redis_url)
    try:
        yield f"redis://{name}:{quote(password)}@{parts.hostname}:{parts.port}/0"
    finally:
        await redis.acl_deluser(name)


async def round_trip(url: str, keys: Keys) -> None:
    """Write config through a plain client; see it through a watcher's blocking client."""
    client = connect(url)
    seen: asyncio.Queue[View] = asyncio.Queue()
    watcher = asyncio.ensure_future(Watcher(url, keys, ["Service"]).run(seen.put_nowait))
    try:
        await ConfigStore(client, keys).write([Change("Service", "x", {"spec": {"a": 1}})])
        async with asyncio.timeout(5):
            while "x" not in (await seen.get()).documents("Service"):
                pass
    finally:
        watcher.cancel()
        await asyncio.gather(watcher, return_exceptions=True)
        await client.aclose()


async def test_acl_user_url(redis: Redis, redis_url: str, keys: Keys) -> None:
    """``redis://user:password@`` works for plain and blocking clients; the user is confined
    to its prefix, and a wrong password is a clear StoreUnavailable."""
    async with acl_user(redis, redis_url, keys) as url:
        await round_trip(url, keys)
        confined = connect(url)
        try:
            with pytest.raises(StoreError, match="no permissions"):
                async with translated("reading another prefix"):
                    await confined.get("elsewhere:key")
        finally:
            await confined.aclose()
        wrong = connect(url.replace("@", "x@", 1))
        try:
            with pytest.raises(StoreUnavailable, match="credentials"):
                async with translated("pinging"):
                    await wrong.ping()
        finally:
            await wrong.aclose()


@pytest.mark.timeout(60)
async def test_cluster_runs_on_an_acl_user(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Controller, node and gateway need nothing outside their prefix and no dangerous
    command: the example serves through them with a confined user."""
    async with acl_user(redis, redis_url, keys) as url:
        user = connect(url)
        try:
            async with running_cluster(user, url, keys, tmp_path) as cluster:
                await cluster.client.apply(parse_text(SERVICES.split("---")[0]))
                await cluster.instances(lambda f: len(ready(f, "hello")) == 2)
                async with aiohttp.ClientSession() as s:
                    async with s.get(cluster.gateway_url, headers={"Host": "hello"}) as r:
                        assert (r.status, await r.text()) == (200, "Hello, World!\n")
        finally:
            await user.aclose()


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


@contextlib.asynccontextmanager
async def tls_front(redis_url: str, directory: Path) -> AsyncIterator[tuple[int, Path]]:
    """A TLS terminator in front of the test Redis (as a managed Redis or stunnel would be);
    yields its port and the CA file that verifies it."""
    import ssl

    cert, key = self_signed(directory, "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    target = urlsplit(redis_url)
    tasks: set[asyncio.Task[None]] = set()

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target.hostname, target.port)
        both = [
            asyncio.ensure_future(_pipe(reader, up_writer)),
            asyncio.ensure_future(_pipe(up_reader, writer)),
        ]
        tasks.update(both)
        await asyncio.gather(*both)

    server = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1], cert
    finally:
        server.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_rediss_url(redis_url: str, keys: Keys, tmp_path: Path) -> None:
    """``rediss://`` with the server's CA works for plain and blocking clients; without a CA
    that trusts the server the connection is refused."""
    async with tls_front(redis_url, tmp_path) as (port, ca):
        password = urlsplit(redis_url).password or ""
        url = f"rediss://:{quote(password)}@127.0.0.1:{port}/0"
        await round_trip(f"{url}?ssl_ca_certs={ca}", keys)
        untrusting = connect(url)
        try:
            with pytest.raises(StoreUnavailable):
                async with translated("pinging"):
                    await untrusting.ping()
        finally:
            await untrusting.aclose()
