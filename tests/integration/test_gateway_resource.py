"""Istio's ``Gateway`` on a running gateway: each server's port opened when the Gateway is
applied (and closed when it is deleted), requests routed by the VirtualServices bound to it,
``httpsRedirect``, TLS with a certificate per SNI host and HTTP/2 by ALPN, MUTUAL TLS, and a
certificate replaced on disk served to new connections while an open one goes on."""

from __future__ import annotations

import asyncio
import shutil
import ssl
from pathlib import Path

import aiohttp
import pytest

from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from tests.support.cluster import SERVICES, Cluster, ready, running_cluster
from tests.support.gateway_tls import curl_tls, served_certificate, served_der, tls_gateway
from tests.support.tls import client_ca, self_signed
from tests.support.wait import eventually

pytestmark = pytest.mark.timeout(120)


async def apply(cluster: Cluster, text: str) -> None:
    """Apply ``text`` and wait until every proxy has it."""
    applied = await cluster.client.apply(parse_text(text))
    assert not await cluster.client.wait_applied(applied.revision, 15)


async def get(port: int, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
    """GET over plaintext HTTP/1.1 on ``port`` with ``Host: host``."""
    async with aiohttp.ClientSession() as session:
        url = f"http://127.0.0.1:{port}{path}"
        async with session.get(url, headers={"Host": host}, allow_redirects=False) as answer:
            headers = {name.lower(): value for name, value in answer.headers.items()}
            return answer.status, headers, await answer.text()


async def test_http_servers_route_by_their_bound_virtual_services(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A Gateway's HTTP port opens on apply; a request for one of its hosts goes by the
    VirtualServices bound to it (not by the mesh's); another host is 404 ``no_route``; an
    ``httpsRedirect`` server answers 301 to https; deleting the Gateway closes the ports."""
    web, redirect = free_port(), free_port()
    gateway = f"""
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {{name: edge}}
spec:
  selector: {{istio: ingressgateway}}
  servers:
  - port: {{number: {web}, name: http, protocol: HTTP}}
    hosts: [www.example.com]
  - port: {{number: {redirect}, name: http-redirect, protocol: HTTP}}
    hosts: ["*"]
    tls: {{httpsRedirect: true}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: hello-edge}}
spec:
  hosts: [www.example.com]
  gateways: [edge]
  http:
  - route: [{{destination: {{host: world}}}}]
"""
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await cluster.client.apply(parse_text(SERVICES))
        await cluster.instances(lambda f: bool(ready(f, "hello")) and bool(ready(f, "world")))
        await apply(cluster, gateway)
        status, _, body = await eventually(
            lambda: get(web, "www.example.com"), f"port {web} open", ignore=(OSError,)
        )
        assert (status, body) == (200, "World, Hello!\n")  # the bound route, to world
        status, headers, _ = await get(web, "other.example.com")
        assert (status, headers["x-shoal-cause"]) == (404, "no_route")
        status, headers, _ = await get(web, "hello")  # a mesh name: not this Gateway's host
        assert status == 404
        # The VirtualService bound to the Gateway does not apply in the mesh (nor on the
        # gateway's own port, which routes as the mesh does).
        status, _, _ = await get(cluster.gateway_port, "www.example.com")
        assert status == 404
        status, headers, _ = await get(redirect, "shop.example.com", "/cart?id=7")
        assert (status, headers["location"]) == (301, "https://shop.example.com/cart?id=7")

        await cluster.client.delete("Gateway", "edge")
        await eventually(lambda: refused(web), f"port {web} closed", until=bool)
        await eventually(lambda: refused(redirect), f"port {redirect} closed", until=bool)


async def refused(port: int) -> bool:
    """Whether nothing listens on ``port`` any more."""
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return True
    writer.close()
    return False


async def test_tls_servers_sni_alpn_mutual_and_reload(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Two hosts with their own certificates on one port: each client sees its host's (SNI)
    and speaks HTTP/2 (ALPN); MUTUAL refuses a client without a certificate and serves one of
    the CA; a certificate replaced on disk is served to new connections within 5 s while a
    connection opened before goes on working."""
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir(), (tmp_path / "new").mkdir()
    a, b = self_signed(tmp_path / "a", "a.example"), self_signed(tmp_path / "b", "b.example")
    ca, client, client_key = client_ca(tmp_path)
    port, mtls = free_port(), free_port()
    async with running_cluster(redis, redis_url, keys, tmp_path / "state") as cluster:
        await cluster.client.apply(parse_text(SERVICES))
        await cluster.instances(lambda f: bool(ready(f, "hello")) and bool(ready(f, "world")))
        await apply(cluster, tls_gateway(port, a, b, mtls, ca, free_port()))
        await eventually(lambda: refused(port), f"port {port} open", until=lambda r: not r)

        hello = await asyncio.to_thread(curl_tls, port, "a.example", a[0])
        world = await asyncio.to_thread(curl_tls, port, "b.example", b[0])
        assert hello.stdout == "Hello, World!\n 200 2", hello
        assert world.stdout == "World, Hello!\n 200 2", world
        assert await asyncio.to_thread(served_certificate, port, "b.example") == "CN=b.example"

        await eventually(lambda: refused(mtls), f"port {mtls} open", until=lambda r: not r)
        without = await asyncio.to_thread(curl_tls, mtls, "a.example", a[0])
        assert without.returncode != 0, without
        admitted = await asyncio.to_thread(
            curl_tls, mtls, "a.example", a[0], "--cert", str(client), "--key", str(client_key)
        )
        assert admitted.stdout == "Hello, World!\n 200 2", admitted

        # A connection opened now, kept open (HTTP/1.1 keep-alive) across the replacement.
        context = ssl.create_default_context(cafile=str(a[0]))
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname="a.example"
        )
        request = b"GET / HTTP/1.1\r\nHost: a.example\r\n\r\n"
        writer.write(request)
        assert b"Hello, World!" in await reader.readuntil(b"Hello, World!\n")
        renewed = self_signed(tmp_path / "new", "a.example")
        shutil.copy(renewed[1], a[1])
        shutil.copy(renewed[0], a[0])
        new_der = ssl.PEM_cert_to_DER_cert(renewed[0].read_text())
        await eventually(
            lambda: asyncio.to_thread(served_der, port, "a.example"),
            "the new certificate served to a new connection",
            until=lambda der: der == new_der,
            timeout=5,
        )
        writer.write(request)
        assert b"Hello, World!" in await reader.readuntil(b"Hello, World!\n")
        writer.close()
