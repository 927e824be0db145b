"""A DestinationRule's connection settings (``connectionPool.tcp``) on the proxies' real
connections: ``tcpKeepalive`` turns TCP keepalive on with its values for the connections to
that destination only, and ``connectTimeout`` bounds making one."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import ssl
from pathlib import Path

import aiohttp
import pytest

from shoal.mesh.upstream import Upstreams
from shoal.mesh.upstream_connection import UpstreamError
from shoal.resources.manifest import parse_text
from shoal.resources.model import ConnectionPool, TcpKeepalive
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import SERVICES, ready, running_cluster

KEEPALIVE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: hello}
spec:
  host: hello
  trafficPolicy:
    connectionPool:
      tcp:
        tcpKeepalive: {time: 7s, interval: 3s, probes: 4}
"""


def keepalive_of_connections_to(port: int) -> list[tuple[int, int, int, int]]:
    """(SO_KEEPALIVE, TCP_KEEPIDLE, TCP_KEEPINTVL, TCP_KEEPCNT) of each TCP socket of this
    process connected to 127.0.0.1:``port`` (the gateway runs in the test's process)."""
    found = []
    for name in os.listdir("/proc/self/fd"):
        try:
            sock = socket.socket(fileno=os.dup(int(name)))
        except OSError:
            continue  # not a socket
        with sock:
            if sock.family != socket.AF_INET or sock.type != socket.SOCK_STREAM:
                continue
            try:
                peer = sock.getpeername()
            except OSError:
                continue  # a listener
            if peer[1] != port:
                continue
            found.append(
                (
                    sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
                    sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
                )
            )
    return found


@pytest.mark.timeout(90)
async def test_tcp_keepalive_is_set_on_the_connections_to_its_destination(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Before the rule the gateway's connections to the node router have no keepalive; after
    it, the connection that carries hello's requests has the rule's time, interval and probes
    (world's requests keep using connections without)."""
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await cluster.client.apply(parse_text(SERVICES))
        await cluster.instances(lambda f: bool(ready(f, "hello")) and bool(ready(f, "world")))

        async def call(host: str) -> None:
            async with aiohttp.ClientSession() as session:
                async with session.get(cluster.gateway_url, headers={"Host": host}) as answer:
                    assert answer.status == 200

        await call("hello")
        before = keepalive_of_connections_to(cluster.mesh_port)
        assert before and all(options[0] == 0 for options in before), before

        applied = await cluster.client.apply(parse_text(KEEPALIVE))
        assert not await cluster.client.wait_applied(applied.revision, 15)
        await call("hello")
        await call("world")
        after = keepalive_of_connections_to(cluster.mesh_port)
        assert (1, 7, 3, 4) in after, after
        assert any(options[0] == 0 for options in after), after  # world's, untouched


async def test_connect_timeout_bounds_making_a_connection() -> None:
    """An upstream that accepts TCP but never answers the TLS handshake: the request's
    ``connect_timeout`` (the rule's) gives up, not the pool's own 60 s."""
    accepted: list[asyncio.StreamWriter] = []

    async def silent(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        accepted.append(writer)

    server = await asyncio.start_server(silent, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Upstreams(connect_timeout=60)
    tls = ssl.create_default_context()
    try:
        async with asyncio.timeout(10):
            with pytest.raises(UpstreamError) as caught:
                await pool.request(
                    f"127.0.0.1:{port}",
                    "GET",
                    "/",
                    [],
                    None,
                    tls=tls,
                    settings=ConnectionPool(
                        connect_timeout=0.2, tcp_keepalive=TcpKeepalive(time=60)
                    ),
                )
    finally:
        await pool.close()
        for writer in accepted:
            writer.close()
        server.close()
        await server.wait_closed()
    assert caught.value.cause == "upstream_connect_error" and not caught.value.sent


async def connections_for(settings: ConnectionPool | None) -> int:
    """How many connections three sequential requests through a pool with ``settings`` open
    to a keep-alive HTTP/1.1 server."""
    opened: list[asyncio.StreamWriter] = []

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        opened.append(writer)
        with contextlib.suppress(asyncio.IncompleteReadError):
            while await reader.readuntil(b"\r\n\r\n"):
                writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    pool = Upstreams()
    try:
        for _ in range(3):
            response = await pool.request(
                f"127.0.0.1:{port}", "GET", "/", [], None, settings=settings
            )
            assert response.status == 200
            while await response.piece() is not None:
                pass
    finally:
        await pool.close()
        for writer in opened:
            writer.close()
        server.close()
    return len(opened)


async def test_max_requests_per_connection_and_idle_timeout() -> None:
    """Connections are reused (one for three requests) unless the rule says
    ``maxRequestsPerConnection: 1`` (one each) or they sat idle past its ``idleTimeout``
    (0 here, so that no test waits for time to pass)."""
    assert await connections_for(None) == 1
    assert await connections_for(ConnectionPool(max_requests_per_connection=2)) == 2
    assert await connections_for(ConnectionPool(max_requests_per_connection=1)) == 3
    # An idle timeout of 0: a connection is idle past it the moment it is parked.
    assert await connections_for(ConnectionPool(idle_timeout=0.0)) == 3
    assert await connections_for(ConnectionPool(idle_timeout=30)) == 1
