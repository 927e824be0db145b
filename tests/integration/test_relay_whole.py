"""A small answer of known length is relayed whole: its head does not leave before its body,
so a network cut between them costs the next hop no answer (which it may retry) rather than a
head whose body never comes."""

from __future__ import annotations

import asyncio

import pytest

from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from shoal.store.registry import Registry
from tests.support.gateway import Gateway

ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: slow}
spec:
  hosts: [slow]
  http: [{route: [{destination: {host: slow}}]}]
"""


async def test_a_small_answer_leaves_whole(gateway: Gateway, redis: Redis, keys: Keys) -> None:
    """The instance sends its head, then (later) its 5-byte body: the client sees nothing
    until the body is there, then the whole answer."""
    body_now = asyncio.Event()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\n")
        await writer.drain()
        await body_now.wait()
        writer.write(b"hello")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    instance = Endpoint(
        id="slow-1",
        service="slow",
        revision="v1",
        node="test",
        address="127.0.0.1",
        port=port,
        labels=(("app", "slow"), ("version", "v1")),
        state="ready",
    )
    async with server:
        await Registry(redis, keys).put_instances([instance], ttl=60)
        await gateway.client.apply(parse_text(ROUTE))
        await gateway.settle()
        reader, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: slow\r\nConnection: close\r\n\r\n")
        with pytest.raises(TimeoutError):  # the head alone never comes out
            async with asyncio.timeout(0.5):
                await reader.read(1)
        body_now.set()
        async with asyncio.timeout(5):
            answer_bytes = await reader.read()
        writer.close()
    assert answer_bytes.startswith(b"HTTP/1.1 200 OK\r\n")
    assert answer_bytes.endswith(b"\r\n\r\nhello")
