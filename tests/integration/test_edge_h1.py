"""The hardened edge over HTTP/1.1, byte by byte: raw requests on a socket, real hypercorn, real
Redis, a real upstream. Each test asserts the status, whether the connection closed, and what the
upstream saw (nothing, for a rejected request)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from shoal.gateway.server import GatewaySettings
from shoal.http.limits import EdgeLimits, KiB
from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from shoal.store.registry import Registry
from tests.support.backends import Backend, echo_backend
from tests.support.gateway import Gateway, serving
from tests.support.wait import eventually

ROUTES = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /admin}}]
    route: [{destination: {host: admin}}]
  - route: [{destination: {host: echo}}]
"""

# Small limits so that tests cross them quickly; sizes keep their defaults unless a test says.
FAST: dict[str, Any] = {
    "header_timeout": 0.5,
    "body_idle_timeout": 0.5,
    "body_timeout": 1.5,
    "idle_timeout": 5.0,
}


@dataclass
class Edge:
    """A gateway with limits in front of two echo upstreams: ``echo`` and ``admin``."""

    gateway: Gateway
    echo: Backend
    admin: Backend

    @property
    def port(self) -> int:
        """The gateway's plaintext port."""
        return self.gateway.port

    def seen(self) -> list[dict[str, object]]:
        """Every request either upstream received, complete."""
        return self.echo.seen + self.admin.seen


@contextlib.asynccontextmanager
async def edge_gateway(
    redis: Redis,
    redis_url: str,
    keys: Keys,
    limits: Mapping[str, Any] | None = None,
    **settings: Any,
) -> AsyncIterator[Edge]:
    """A gateway with ``FAST`` limits (``limits`` overriding them) and ``settings``, routing to
    two upstreams."""
    gs = GatewaySettings(
        host="127.0.0.1",
        port=free_port(),
        limits=EdgeLimits(**{**FAST, **(limits or {})}),
        **settings,
    )
    async with (
        serving(redis, redis_url, keys, gs) as gw,
        echo_backend("echo") as echo,
        echo_backend("admin") as admin,
    ):
        await Registry(redis, keys).put_instances(
            [echo.endpoint("echo", "v1"), admin.endpoint("admin", "v1")], ttl=60
        )
        await gw.client.apply(parse_text(ROUTES))
        await gw.settle()
        yield Edge(gw, echo, admin)


@dataclass
class Reply:
    """A response read off the wire."""

    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    def json(self) -> dict[str, object]:
        """The echo upstream's record of the request."""
        data = json.loads(self.body)
        assert isinstance(data, dict)
        return data


class Wire:
    """One raw HTTP/1.1 connection to the gateway."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    @contextlib.asynccontextmanager
    async def to(cls, port: int, source: str | None = None) -> AsyncIterator[Wire]:
        """A connection to ``port`` on loopback (from ``source``, another loopback address,
        when given), closed on exit."""
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, local_addr=(source, 0) if source else None
        )
        try:
            yield cls(reader, writer)
        finally:
            writer.close()

    async def send(self, *pieces: bytes, pause: float = 0.0) -> None:
        """Write ``pieces`` one at a time (each its own segment), ``pause`` seconds apart.

        A peer that has already closed is not an error: its answer is read next.
        """
        with contextlib.suppress(ConnectionError):
            for piece in pieces:
                self.writer.write(piece)
                await self.writer.drain()
                if pause:
                    await asyncio.sleep(pause)  # pacing a slow client, not waiting for a result

    async def reply(self, timeout: float = 5.0) -> Reply:
        """Read one response (Content-Length framed, as every answer here is)."""
        async with asyncio.timeout(timeout):
            head = await self.reader.readuntil(b"\r\n\r\n")
            lines = head.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ")[1])
            headers = {}
            for line in lines[1:]:
                if line:
                    name, _, value = line.partition(":")
                    headers[name.strip().lower()] = value.strip()
            body = await self.reader.readexactly(int(headers.get("content-length", "0")))
        return Reply(status, headers, body)

    async def closed(self, timeout: float = 2.0) -> bool:
        """Whether the gateway closes the connection within ``timeout`` (nothing more is sent).

        ``FAST`` keeps idle connections for 5 s, so a close within 2 s is the gateway's answer.
        """
        try:
            async with asyncio.timeout(timeout):
                return await self.reader.read(1) == b""
        except ConnectionError:
            return True
        except TimeoutError:
            return False


def request(
    target: str = "/",
    method: str = "GET",
    headers: Sequence[tuple[str, str]] = (("Host", "echo"),),
    body: bytes = b"",
    version: str = "1.1",
) -> bytes:
    """A request's bytes, exactly as given (no header is added or checked)."""
    lines = [f"{method} {target} HTTP/{version}", *(f"{n}: {v}" for n, v in headers)]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange(port: int, *pieces: bytes, pause: float = 0.0) -> tuple[Reply, bool]:
    """Send ``pieces`` on a new connection; the reply and whether the connection then closed."""
    async with Wire.to(port) as wire:
        await wire.send(*pieces, pause=pause)
        reply = await wire.reply()
        return reply, await wire.closed()


async def still_serves(wire: Wire) -> bool:
    """Whether ``wire`` still carries a request to the upstream and back."""
    await wire.send(request("/still"))
    try:
        return (await wire.reply()).status == 200
    except (asyncio.IncompleteReadError, ConnectionError):
        return False


async def served(port: int, *pieces: bytes) -> Reply:
    """Send ``pieces`` on a new connection; the reply, once the connection has proved it stays
    open by serving one more request."""
    async with Wire.to(port) as wire:
        await wire.send(*pieces)
        reply = await wire.reply()
        assert await still_serves(wire)
        return reply


# --- request smuggling -----------------------------------------------------------------------


async def test_content_length_with_transfer_encoding(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """CL + TE: chunked → 400 bad_framing, connection closed, the pipelined request is not run."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        smuggled = request("/smuggled")
        attack = request(
            "/",
            "POST",
            [("Host", "echo"), ("Content-Length", "4"), ("Transfer-Encoding", "chunked")],
            b"0\r\n\r\n" + smuggled,
        )
        reply, closed = await exchange(edge.port, attack)
        assert (reply.status, reply.headers["x-shoal-cause"]) == (400, "bad_framing")
        assert reply.headers["connection"] == "close"
        assert closed
        assert edge.seen() == []


async def test_invalid_framing_headers(redis: Redis, redis_url: str, keys: Keys) -> None:
    """Two different Content-Lengths, a non-numeric one, TE in HTTP/1.0 → 400; a transfer coding
    other than exactly chunked → 501 (RFC 9112 §6.1); each closes, none reaches the upstream."""
    chunked = b"3\r\nabc\r\n0\r\n\r\n"
    cases: list[tuple[list[tuple[str, str]], str, bytes, int, str]] = [
        ([("Content-Length", "3"), ("Content-Length", "4")], "1.1", b"abc", 400, "bad_request"),
        ([("Content-Length", "3, 4")], "1.1", b"abc", 400, "bad_request"),
        ([("Content-Length", "3x")], "1.1", b"abc", 400, "bad_request"),
        ([("Content-Length", "-3")], "1.1", b"abc", 400, "bad_request"),
        ([("Transfer-Encoding", "chunked")], "1.0", chunked, 400, "bad_framing"),
        ([("Transfer-Encoding", "gzip, chunked")], "1.1", chunked, 501, "bad_framing"),
        ([("Transfer-Encoding", "chunked")] * 2, "1.1", chunked, 501, "bad_framing"),
        ([("Transfer-Encoding", "identity")], "1.1", b"abc", 501, "bad_framing"),
    ]
    async with edge_gateway(redis, redis_url, keys) as edge:
        for framing, version, body, status, cause in cases:
            raw = request("/", "POST", [("Host", "echo"), *framing], body, version=version)
            after = request("/after") if version == "1.1" else b""  # 1.0 cannot pipeline
            reply, closed = await exchange(edge.port, raw + after)
            assert (reply.status, reply.headers["x-shoal-cause"]) == (status, cause), framing
            assert closed, framing
        assert edge.seen() == []


async def test_duplicate_host(redis: Redis, redis_url: str, keys: Keys) -> None:
    """Two Host headers → 400 bad_request and closed; the upstream sees nothing."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        reply, closed = await exchange(
            edge.port, request(headers=[("Host", "echo"), ("Host", "admin")])
        )
        assert (reply.status, reply.headers["x-shoal-cause"], closed) == (400, "bad_request", True)
        assert edge.seen() == []


# --- limits ----------------------------------------------------------------------------------


def _big_headers(total: int, count: int = 8) -> list[tuple[str, str]]:
    """``count`` header fields adding up to about ``total`` bytes."""
    each = total // count
    return [("Host", "echo"), *((f"x-fill-{i}", "a" * each) for i in range(count))]


async def test_header_bytes_limit_however_they_arrive(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """A head over 60 KiB → 431 and closed, in one read or in 1 KiB pieces, whether h11 (still
    incomplete past its buffer) or the app (complete) catches it; a head under it is served."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        fits = request(headers=_big_headers(58 * KiB))
        assert (await served(edge.port, fits)).status == 200
        edge.echo.seen.clear()
        over = request(headers=_big_headers(62 * KiB))
        far_over = request(headers=_big_headers(90 * KiB))
        pieces = [over[i : i + KiB] for i in range(0, len(over), KiB)]
        for attempt in (
            [over],
            pieces,
            [far_over],
            [far_over[i : i + KiB] for i in range(0, 71 * KiB, KiB)],  # never completes
        ):
            reply, closed = await exchange(edge.port, *attempt)
            assert (reply.status, reply.headers["x-shoal-cause"]) == (431, "headers_too_large")
            assert closed
        assert edge.seen() == []


async def test_header_count_limit(redis: Redis, redis_url: str, keys: Keys) -> None:
    """101 header fields → 431 and closed (one read or many); 100 are served."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        hundred = request(headers=[("Host", "echo"), *((f"x-h{i}", "v") for i in range(99))])
        assert (await served(edge.port, hundred)).status == 200
        edge.echo.seen.clear()
        many = request(headers=[("Host", "echo"), *((f"x-h{i}", "v") for i in range(100))])
        for pieces in ([many], [many[i : i + 64] for i in range(0, len(many), 64)]):
            reply, closed = await exchange(edge.port, *pieces)
            assert (reply.status, reply.headers["x-shoal-cause"], closed) == (
                431,
                "headers_too_large",
                True,
            )
        assert edge.seen() == []


async def test_uri_length_limit(redis: Redis, redis_url: str, keys: Keys) -> None:
    """A path + query over max_uri_bytes → 414 uri_too_long and closed; one at it is served.

    (4 KiB here: the aiohttp upstream itself refuses request lines near 8 KiB.)"""
    limit = 4 * KiB
    async with edge_gateway(redis, redis_url, keys, limits={"max_uri_bytes": limit}) as edge:
        at_limit = "/" + "a" * (limit - 1)
        assert (await served(edge.port, request(at_limit))).status == 200
        edge.echo.seen.clear()
        for target in (at_limit + "a", "/?q=" + "b" * limit, "/" + "c" * (16 * KiB)):
            reply, closed = await exchange(edge.port, request(target))
            assert (reply.status, reply.headers["x-shoal-cause"], closed) == (
                414,
                "uri_too_long",
                True,
            )
        assert edge.seen() == []


async def test_content_length_over_body_limit(redis: Redis, redis_url: str, keys: Keys) -> None:
    """Content-Length over max_body_bytes → 413 at once (no body byte sent), closed, nothing
    upstream; a body at the limit goes through."""
    limit = 64 * KiB
    async with edge_gateway(redis, redis_url, keys, limits={"max_body_bytes": limit}) as edge:
        ok = request("/", "POST", [("Host", "echo"), ("Content-Length", str(limit))], b"x" * limit)
        assert (await served(edge.port, ok)).json()["body_len"] == limit
        edge.echo.seen.clear()
        head_only = request("/", "POST", [("Host", "echo"), ("Content-Length", str(limit + 1))])
        reply, closed = await exchange(edge.port, head_only)
        assert (reply.status, reply.headers["x-shoal-cause"], closed) == (
            413,
            "body_too_large",
            True,
        )
        assert edge.seen() == []


async def test_chunked_body_over_limit(redis: Redis, redis_url: str, keys: Keys) -> None:
    """A chunked body that crosses max_body_bytes → 413 and closed; the upstream, which had
    started receiving it, never sees a complete request."""
    limit = 64 * KiB
    async with edge_gateway(redis, redis_url, keys, limits={"max_body_bytes": limit}) as edge:
        head = request("/", "POST", [("Host", "echo"), ("Transfer-Encoding", "chunked")])
        chunk = b"%x\r\n%s\r\n" % (8 * KiB, b"y" * 8 * KiB)
        reply, closed = await exchange(edge.port, head, *[chunk] * 9, b"0\r\n\r\n")
        assert (reply.status, reply.headers["x-shoal-cause"], closed) == (
            413,
            "body_too_large",
            True,
        )
        assert edge.seen() == []


# --- slow clients ----------------------------------------------------------------------------


async def test_slow_request_head(redis: Redis, redis_url: str, keys: Keys) -> None:
    """A head that stops halfway, or trickles in a byte at a time, gets 408 request_timeout after
    header_timeout and the connection closes; the upstream sees nothing."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        loop = asyncio.get_running_loop()
        for pieces, pause in (
            ([b"GET / HTTP/1.1\r\nHost: echo\r\n"], 0.0),
            ([bytes([b]) for b in request(headers=_big_headers(1 * KiB))], 0.05),
        ):
            async with Wire.to(edge.port) as wire:
                started = loop.time()
                sender = asyncio.create_task(wire.send(*pieces, pause=pause))
                reply = await wire.reply()
                elapsed = loop.time() - started
                sender.cancel()
                assert (reply.status, reply.headers["x-shoal-cause"]) == (408, "request_timeout")
                assert 0.4 <= elapsed < 2.0
                assert await wire.closed()
        assert edge.seen() == []


async def test_slow_request_body(redis: Redis, redis_url: str, keys: Keys) -> None:
    """A body that stalls (past body_idle_timeout) or trickles (past body_timeout) → 408 and
    closed; the upstream never sees a complete request."""
    async with edge_gateway(redis, redis_url, keys) as edge:
        stalled = request("/", "POST", [("Host", "echo"), ("Content-Length", "100")], b"abc")
        reply, closed = await exchange(edge.port, stalled)
        assert (reply.status, reply.headers["x-shoal-cause"], closed) == (
            408,
            "request_timeout",
            True,
        )
        head = request("/", "POST", [("Host", "echo"), ("Transfer-Encoding", "chunked")])
        async with Wire.to(edge.port) as wire:
            sender = asyncio.create_task(wire.send(head, *[b"1\r\nz\r\n"] * 40, pause=0.2))
            reply = await wire.reply()
            sender.cancel()
            assert (reply.status, reply.headers["x-shoal-cause"]) == (408, "request_timeout")
            assert await wire.closed()
        assert edge.seen() == []


async def silent_until_closed(port: int) -> float:
    """Seconds until the gateway closes a connection that sends nothing (at most 5)."""
    loop = asyncio.get_running_loop()
    async with Wire.to(port) as silent:
        started = loop.time()
        assert await silent.closed(timeout=5.0)
        return loop.time() - started


async def test_idle_connections_close(redis: Redis, redis_url: str, keys: Keys) -> None:
    """A connection that never sends, or goes quiet after a response, is closed after
    idle_timeout without a response; one in use is not."""
    limits = {"idle_timeout": 1.0, "header_timeout": 5.0}
    async with edge_gateway(redis, redis_url, keys, limits=limits) as edge:
        assert 0.9 <= await silent_until_closed(edge.port) < 3.0
        async with Wire.to(edge.port) as used:
            assert await still_serves(used)
            assert await used.closed(timeout=5.0)


async def test_a_new_connection_must_start_a_request_within_header_timeout(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """Holding a connection open costs a client nothing: one that sends nothing is closed
    after header_timeout, well before idle_timeout."""
    limits = {"header_timeout": 1.0, "idle_timeout": 60.0}
    async with edge_gateway(redis, redis_url, keys, limits=limits) as edge:
        assert 0.9 <= await silent_until_closed(edge.port) < 3.0


async def test_one_client_holding_connections_cannot_starve_another(
    redis: Redis, redis_url: str, keys: Keys
) -> None:
    """With the default limits, a client (127.0.0.2) opening 2,000 connections gets the
    first 1,000 (max_connections_per_client), the rest are closed at once; another client
    (127.0.0.3) is served all the while."""
    async with edge_gateway(redis, redis_url, keys, limits={"header_timeout": 30.0}) as edge:
        hog: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
        # Source ports below the ephemeral range (32768+): 2,000 ephemeral ones would make
        # free_port() collisions likely for the tests running alongside.
        ports = iter(range(20_000, 32_000))
        try:
            while len(hog) < 2000:
                with contextlib.suppress(OSError):  # a port still in TIME_WAIT: the next one
                    hog.append(
                        await asyncio.open_connection(
                            "127.0.0.1", edge.port, local_addr=("127.0.0.2", next(ports))
                        )
                    )
            async with Wire.to(edge.port, source="127.0.0.3") as other:
                assert await still_serves(other)
            await eventually(
                lambda: sum(reader.at_eof() for reader, _ in hog),
                "the gateway closing the connections beyond the client's share",
                until=lambda closed: closed == 1000,
                timeout=10,
            )
        finally:
            for _, writer in hog:
                writer.close()


async def test_connection_cap(redis: Redis, redis_url: str, keys: Keys) -> None:
    """With max_connections=2 a third connection is closed at once; when one of the two goes,
    a new connection is served again."""
    async with edge_gateway(redis, redis_url, keys, limits={"max_connections": 2}) as edge:
        async with Wire.to(edge.port) as second:
            async with Wire.to(edge.port) as first:
                assert await still_serves(first)
                assert await still_serves(second)
                async with Wire.to(edge.port) as third:
                    await third.send(request())
                    assert await third.closed()

            async def fourth_served() -> bool:
                async with Wire.to(edge.port) as fourth:
                    return await still_serves(fourth)

            await eventually(  # the gateway notices the close asynchronously
                fourth_served, "a new connection served once one of the two closed", timeout=5
            )
            assert await still_serves(second)
