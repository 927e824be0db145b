"""WebSocket through Shoal: a stock ``websockets`` server run as a Service, a stock ``websockets``
client through the gateway (ws://, wss://) and east-west through a service's outbound listener:
the handshake is forwarded hop by hop and the frames are tunnelled both ways as they are."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import ssl
import sys
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus

from shoal.http.limits import EdgeLimits
from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import Cluster, ready, running_cluster
from tests.support.h2ws import Refused, h2_websocket
from tests.support.procfs import environ_of
from tests.support.tls import self_signed
from tests.support.wait import eventually

SERVER = """
import asyncio, sys
from websockets.asyncio.server import serve

async def echo(ws):
    async for message in ws:
        await ws.send(message)

async def main():
    async with serve(echo, "127.0.0.1", int(sys.argv[1]), ping_interval=None) as server:
        await server.serve_forever()

asyncio.run(main())
"""

SERVICE = {
    "apiVersion": "shoal/v1",
    "kind": "Service",
    "metadata": {"name": "echo-ws"},
    "spec": {"command": [sys.executable, "-c", SERVER, "$PORT"]},
}

# A route timeout far shorter than the test: it bounds the handshake, not the tunnel's life.
ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-ws}
spec:
  hosts: [echo-ws]
  http:
  - timeout: 1s
    route: [{destination: {host: echo-ws}}]
"""

DENY = """
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-ws}
spec:
  selector: {matchLabels: {app: echo-ws}}
  action: DENY
  rules: [{}]
"""


async def stays_open(ws: ClientConnection, seconds: float) -> None:
    """The connection is not closed within ``seconds`` (its keepalive pings go on meanwhile:
    a lost pong would close it)."""
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(seconds):
            await ws.wait_closed()


async def echoes(uri: str, port: int, **options: object) -> None:
    """Text and binary frames come back as sent, and the close handshake completes; the
    connection outlives the route's timeout while pings go back and forth."""
    async with connect(  # type: ignore[arg-type]
        uri, host="127.0.0.1", port=port, ping_interval=0.5, ping_timeout=2, **options
    ) as ws:
        await ws.send("hello ✓")
        assert await ws.recv() == "hello ✓"
        await ws.send(b"\x00\x01\xff" * 1000)
        assert await ws.recv() == b"\x00\x01\xff" * 1000
        await stays_open(ws, 2.5)  # idle but for pings, past the route's 1 s timeout
        await ws.send("still here")
        assert await ws.recv() == "still here"
    assert ws.close_code == 1000


async def h2_echoes(port: int, **options: Any) -> None:
    """Over HTTP/2 (RFC 8441), frames echo as sent — a message larger than the stream's
    flow-control window too —, a ping gets the instance's pong, and the close handshake
    completes and ends the stream; the tunnel outlives the route's timeout."""
    async with h2_websocket(port, "echo-ws", **options) as ws:
        assert b"sec-websocket-accept" not in dict(ws.headers)  # an HTTP/1.1 field
        await ws.send("hello ✓")
        assert await ws.recv() == ("text", "hello ✓")
        await ws.send(b"\x00\x01\xff" * 40_000)
        assert await ws.recv() == ("bytes", b"\x00\x01\xff" * 40_000)
        with pytest.raises(TimeoutError):
            await ws.recv(timeout=1.5)  # quiet past the route's 1 s timeout: still open
        await ws.ping(b"there?")
        assert await ws.recv() == ("pong", b"there?")
        assert await ws.close() == 1000
        async with asyncio.timeout(5):
            await ws.ended.wait()
        assert ws.reset is None


async def test_echo_over_ws_wss_and_east_west(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Through the gateway over ws:// and wss://, over HTTP/2 (h2c and TLS), and from a
    service's outbound listener (what an instance reaches through ``$SHOAL_MESH_URL``), frames
    echo and the tunnel outlives the route's timeout; an AuthorizationPolicy denying the
    service refuses the handshake (403), on HTTP/2 too."""
    cert = self_signed(tmp_path)
    async with running_cluster(redis, redis_url, keys, tmp_path, tls=cert) as cluster:
        await cluster.client.apply(parse_text(json.dumps(SERVICE) + "\n---\n" + ROUTE))
        found = await cluster.instances(lambda f: bool(ready(f, "echo-ws")), timeout=30)
        await echoes("ws://echo-ws/", cluster.gateway_port)
        client_tls = ssl.create_default_context(cafile=str(cert[0]))
        assert cluster.tls_port is not None
        await echoes(
            "wss://echo-ws/", cluster.tls_port, ssl=client_tls, server_hostname="localhost"
        )
        await h2_echoes(cluster.gateway_port)
        h2_tls = ssl.create_default_context(cafile=str(cert[0]))
        await h2_echoes(cluster.tls_port, context=h2_tls, server_hostname="localhost")
        pid = ready(found, "echo-ws")[0].pid
        assert pid is not None
        mesh = environ_of(pid)["SHOAL_MESH_URL"]
        await echoes("ws://echo-ws/", int(mesh.rsplit(":", 1)[1]))

        await cluster.client.apply(parse_text(DENY))
        await eventually_denied(cluster)
        with pytest.raises(Refused) as refused:
            async with h2_websocket(cluster.gateway_port, "echo-ws"):
                pass
        assert refused.value.status == 403
        assert (b"x-shoal-cause", b"denied") in refused.value.headers


async def eventually_denied(cluster: Cluster) -> None:
    """The handshake is refused (403 from the instance's router) once the policy applies."""

    async def status() -> int:
        try:
            async with connect("ws://echo-ws/", host="127.0.0.1", port=cluster.gateway_port):
                return 101
        except InvalidStatus as e:
            return e.response.status_code

    await eventually(status, "the handshake refused", until=(403).__eq__, timeout=15)


async def test_a_quiet_websocket_closes_and_one_whose_instance_goes_hears_going_away(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A WebSocket with no frame either way for ``websocket_idle_timeout`` is closed, one whose
    instance dies without a word, and one still open when the gateway shuts down: each gets a
    close frame 1001 (going away) from Shoal instead of a cut."""
    limits = EdgeLimits(websocket_idle_timeout=1.0)
    async with contextlib.AsyncExitStack() as outlives:  # what stays open past the shutdown
        async with running_cluster(redis, redis_url, keys, tmp_path, limits=limits) as cluster:
            await cluster.client.apply(parse_text(json.dumps(SERVICE)))
            found = await cluster.instances(lambda f: bool(ready(f, "echo-ws")), timeout=30)
            port = cluster.gateway_port
            async with connect(
                "ws://echo-ws/", host="127.0.0.1", port=port, ping_interval=None
            ) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                async with asyncio.timeout(10):
                    await ws.wait_closed()
                assert ws.close_code == 1001, ws.close_code

            async with connect("ws://echo-ws/", host="127.0.0.1", port=port) as ws:
                await ws.send("hi")
                assert await ws.recv() == "hi"
                pid = ready(found, "echo-ws")[0].pid
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                async with asyncio.timeout(10):
                    await ws.wait_closed()
                assert ws.close_code == 1001, ws.close_code

            await cluster.instances(
                lambda f: any(e.pid != pid for e in ready(f, "echo-ws")), timeout=30
            )
            async with h2_websocket(port, "echo-ws") as h2ws:  # quiet over HTTP/2 too
                await h2ws.send("hi")
                assert await h2ws.recv() == ("text", "hi")
                assert await h2ws.recv(timeout=10) == ("close", 1001)
                async with asyncio.timeout(5):
                    await h2ws.ended.wait()

            ws = await connect("ws://echo-ws/", host="127.0.0.1", port=port, ping_interval=None)
            await ws.send("hi")
            assert await ws.recv() == "hi"
            h2ws = await outlives.enter_async_context(h2_websocket(port, "echo-ws"))
            await h2ws.send("hi")
            assert await h2ws.recv() == ("text", "hi")
        async with asyncio.timeout(10):
            await ws.wait_closed()
        assert ws.close_code == 1001, ws.close_code
        assert await h2ws.recv(timeout=10) == ("close", 1001)


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_websocket_is_held_a_minute_with_pings(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Idle but for the client's pings (every 20 s, as browsers and websockets do by default),
    a WebSocket through the gateway and the router stays open past every HTTP timeout of the
    path (the edge's 60 s idle and read timeouts among them): 65 s, then it still echoes."""
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await cluster.client.apply(parse_text(json.dumps(SERVICE)))
        await cluster.instances(lambda f: bool(ready(f, "echo-ws")), timeout=30)
        port = cluster.gateway_port
        async with connect("ws://echo-ws/", host="127.0.0.1", port=port, ping_interval=20) as ws:
            await ws.send("before")
            assert await ws.recv() == "before"
            await stays_open(ws, 65)  # the point of the test: a minute of quiet
            await ws.send("after a minute")
            assert await ws.recv() == "after a minute"
        assert ws.close_code == 1000
