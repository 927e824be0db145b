"""The gateway end to end in-process: real hypercorn, real Redis, real upstream servers."""

from __future__ import annotations

import asyncio
import collections
import json
import shutil
import subprocess
from pathlib import Path

import aiohttp
import pytest

from shoal.gateway.server import GatewaySettings
from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from shoal.store.registry import Registry
from tests.support.backends import echo_backend
from tests.support.gateway import Gateway, get, serving
from tests.support.tls import self_signed

ROUTES = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
  - {name: v3, labels: {version: v3}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo, echo.example.com]
  http:
  - match: [{uri: {prefix: /v2}}]
    route: [{destination: {host: echo, subset: v2}}]
  - match: [{headers: {x-canary: {exact: "yes"}}}]
    route: [{destination: {host: echo, subset: v2}}]
  - match: [{uri: {exact: /nobody}}]
    route: [{destination: {host: echo, subset: v3}}]
  - match: [{uri: {prefix: /old}}]
    rewrite: {uri: /new, authority: rewritten.example}
    route: [{destination: {host: echo, subset: v1}}]
  - match: [{uri: {prefix: /slow}}]
    timeout: 0.3s
    route: [{destination: {host: echo, subset: v1}}]
  - route:
    - {destination: {host: echo, subset: v1}, weight: 100}
"""


async def test_routes_by_host_and_match(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """Requests are routed by host, URI prefix and header to the right subset's instance."""
    async with echo_backend("one") as one, echo_backend("two") as two:
        await Registry(redis, keys).put_instances(
            [one.endpoint("echo", "v1"), two.endpoint("echo", "v2")], ttl=60
        )
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        assert (await get(gateway, "/"))[1]["x-backend"] == "one"
        assert (await get(gateway, "/v2/x"))[1]["x-backend"] == "two"
        assert (await get(gateway, "/", **{"x-canary": "yes"}))[1]["x-backend"] == "two"
        assert (await get(gateway, "/", host="echo.example.com:8080"))[1]["x-backend"] == "one"


async def test_forwards_path_query_and_headers(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """The upstream sees the raw path and query, x-forwarded-*, a request id, no hop-by-hop."""
    async with echo_backend("one") as one:
        await Registry(redis, keys).put_instances([one.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        status, _, body = await get(
            gateway,
            "/a%20b?x=1&y=2",
            **{"Connection": "keep-alive, x-secret", "x-secret": "s", "x-keep": "k"},
        )
        seen = json.loads(body)
        assert status == 200
        assert seen["path"] == "/a%20b?x=1&y=2"
        assert seen["headers"]["x-keep"] == "k"
        assert "x-secret" not in seen["headers"]
        assert seen["headers"]["x-forwarded-for"] == "127.0.0.1"
        assert seen["headers"]["x-forwarded-proto"] == "http"
        assert len(seen["headers"]["x-request-id"]) == 32
        assert seen["headers"]["host"] == "echo"


async def test_streams_request_body(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """A 1 MiB POST body reaches the upstream whole."""
    async with echo_backend("one") as one:
        await Registry(redis, keys).put_instances([one.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        async with aiohttp.ClientSession() as s:
            async with s.post(
                gateway.url + "/up", data=b"x" * (1 << 20), headers={"Host": "echo"}
            ) as r:
                assert json.loads(await r.read())["body_len"] == 1 << 20


async def test_errors_carry_a_cause(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """Unknown host → 404 no_route; subset without instances → 503 no_healthy_upstream;
    a slow upstream → 504 upstream_timeout; a dead instance → 503 upstream_connect_error."""
    reg = Registry(redis, keys)
    async with echo_backend(
        "slow", delay=lambda r: 2.0 if r.path.startswith("/slow") else 0
    ) as slow:
        await reg.put_instances([slow.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        status, headers, _ = await get(gateway, "/", host="nope")
        assert (status, headers["x-shoal-cause"]) == (404, "no_route")
        status, headers, _ = await get(gateway, "/nobody")
        assert (status, headers["x-shoal-cause"]) == (503, "no_healthy_upstream")
        status, headers, _ = await get(gateway, "/slow")
        assert (status, headers["x-shoal-cause"]) == (504, "upstream_timeout")
    dead = slow.endpoint("echo", "v1")
    await reg.put_instances([dead], ttl=60)
    status, headers, _ = await get(gateway, "/")
    assert (status, headers["x-shoal-cause"]) == (503, "upstream_connect_error")


async def test_weights_split_without_failures(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """Changing weights under load splits traffic by the new ratio and fails no request."""
    async with echo_backend("one") as one, echo_backend("two") as two:
        await Registry(redis, keys).put_instances(
            [one.endpoint("echo", "v1"), two.endpoint("echo", "v2")], ttl=60
        )
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        seen: collections.Counter[object] = collections.Counter()
        async with aiohttp.ClientSession() as s:

            async def one_request() -> None:
                async with s.get(gateway.url + "/", headers={"Host": "echo"}) as r:
                    await r.read()
                    seen[(r.status, r.headers.get("x-backend"))] += 1

            changer = asyncio.create_task(gateway.client.weights("echo", ["v1=80", "v2=20"]))
            for _ in range(10):  # traffic flows while the change lands
                await asyncio.gather(*(one_request() for _ in range(20)))
            await changer
            await gateway.settle()
            seen.clear()
            for _ in range(50):
                await asyncio.gather(*(one_request() for _ in range(20)))
        assert sum(n for (status, _), n in seen.items() if status != 200) == 0
        share = seen[(200, "one")] / 1000
        assert 0.75 <= share <= 0.85


async def curl_version(url: str, *flags: str) -> str:
    """curl's ``<http version> <status>`` for a GET of ``url`` with Host echo."""
    proc = await asyncio.create_subprocess_exec(
        *("curl", "-s", "-o", "/dev/null", "-w", "%{http_version} %{http_code}", *flags),
        *("-H", "Host: echo", url),
        stdout=subprocess.PIPE,
    )
    out, _ = await proc.communicate()
    return out.decode()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_http2_prior_knowledge_and_upgrade(
    gateway: Gateway, redis: Redis, keys: Keys
) -> None:
    """h2c, with prior knowledge or by ``Upgrade: h2c`` (curl --http2), works on the same port
    as HTTP/1.1."""
    async with echo_backend("one") as one:
        await Registry(redis, keys).put_instances([one.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        cases = (("--http2-prior-knowledge", "2"), ("--http2", "2"), ("--http1.1", "1.1"))
        for flag, version in cases:
            assert await curl_version(gateway.url + "/", flag) == f"{version} 200", flag


async def test_rewrite_uri_and_authority(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """rewrite.uri replaces the matched prefix (query kept); rewrite.authority the Host."""
    async with echo_backend("one") as one:
        await Registry(redis, keys).put_instances([one.endpoint("echo", "v1")], ttl=60)
        await gateway.client.apply(parse_text(ROUTES))
        await gateway.settle()
        seen = json.loads((await get(gateway, "/old/x?q=1"))[2])
        assert seen["path"] == "/new/x?q=1"
        assert seen["headers"]["host"] == "rewritten.example"


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_tls_alpn_h2_and_http11(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """With a certificate the gateway serves TLS on a second port, h2 and HTTP/1.1 by ALPN."""
    cert, key = self_signed(tmp_path)
    tls_port = free_port()
    settings = GatewaySettings(
        host="127.0.0.1", port=free_port(), tls_port=tls_port, certfile=str(cert), keyfile=str(key)
    )
    async with serving(redis, redis_url, keys, settings) as gw, echo_backend("one") as one:
        await Registry(redis, keys).put_instances([one.endpoint("echo", "v1")], ttl=60)
        await gw.client.apply(parse_text(ROUTES))
        await gw.settle()
        for flag, version in (("--http2", "2"), ("--http1.1", "1.1")):
            url = f"https://127.0.0.1:{tls_port}/"
            assert await curl_version(url, "--cacert", str(cert), flag) == f"{version} 200"
