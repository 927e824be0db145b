"""The sniffing listener: one port serving mTLS and plaintext HTTP, decided per connection by
its first byte; checked with real sockets on loopback, real handshakes with mesh certificates
and Shoal's HTTP/1.1 server (the router's), on the default loop and on uvloop."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import logging
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
import pytest
import uvloop

from shoal.errors import PlatformError
from shoal.identity.certs import client_context, server_context
from shoal.identity.issuance import make_csr, new_root, sign
from shoal.identity.pki import bundle_pem, key_to_pem, new_key
from shoal.mesh.h1server import Exchange, Server
from shoal.mesh.sniff import SniffingListener, serve_sniffing
from tests.support.wait import eventually

pytestmark = pytest.mark.timeout(10)

REQUEST = b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
GATEWAY = "spiffe://cluster.local/gateway"


@dataclass(frozen=True, slots=True, kw_only=True)
class Contexts:
    """The server's context, a mesh client's, and one that trusts the CA but has no cert."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    anonymous: ssl.SSLContext


@pytest.fixture(scope="module")
def tls() -> Contexts:
    """TLS contexts from a fresh mesh CA: a node's server and the gateway as client."""
    now = datetime.datetime.now(datetime.UTC)
    ca = new_root("cluster.local", now)
    bundle = bundle_pem([ca.cert])

    def leaf(identity: str) -> tuple[bytes, bytes]:
        key = new_key()
        cert = sign(
            ca,
            make_csr(key, identity),
            allowed=lambda _: True,
            now=now,
            valid_for=datetime.timedelta(hours=1),
        )
        return cert, key_to_pem(key)

    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.check_hostname = False
    anonymous.load_verify_locations(cadata=bundle.decode("ascii"))
    return Contexts(
        server=server_context(*leaf("spiffe://cluster.local/node/a"), bundle),
        client=client_context(*leaf(GATEWAY), bundle),
        anonymous=anonymous,
    )


async def answer(exchange: Exchange) -> None:
    """ "tls" with the peer certificate's URI SANs in ``x-peer``, or "plain"."""
    ssl_object = exchange.ssl_object
    if ssl_object is None:
        await exchange.respond(200, body=b"plain")
        return
    cert = ssl_object.getpeercert() or {}
    uris = [str(value) for kind, value in cert.get("subjectAltName", ()) if kind == "URI"]
    await exchange.respond(200, [(b"x-peer", " ".join(uris).encode())], b"tls")


@dataclass
class Site:
    """A serving listener and its HTTP server."""

    listener: SniffingListener
    server: Server

    @property
    def port(self) -> int:
        """The bound port."""
        return int(self.listener.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        """Close the port and the connections being sniffed, then the served ones."""
        self.listener.close()
        await self.listener.wait_closed()
        await self.server.close(grace=1.0)


@asynccontextmanager
async def serving(
    tls: Contexts, plaintext: Callable[[], bool] = lambda: False, sniff_timeout: float = 2.0
) -> AsyncIterator[Site]:
    """A sniffing listener on an ephemeral loopback port, stopped after."""
    server = Server(answer)
    listener = await serve_sniffing(
        server,
        "127.0.0.1",
        0,
        ssl_context=tls.server,
        plaintext=plaintext,
        sniff_timeout=sniff_timeout,
    )
    site = Site(listener, server)
    try:
        yield site
    finally:
        await site.stop()


async def get_tls(port: int, context: ssl.SSLContext) -> tuple[str, str]:
    """GET / over TLS with ``context``: the body and the ``x-peer`` header."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"https://127.0.0.1:{port}/", ssl=context) as response,
    ):
        return await response.text(), response.headers.get("x-peer", "")


async def exchange(port: int, data: bytes) -> bytes:
    """Send ``data`` in plaintext; all the server sends before closing (b"" on a reset)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        return await reader.read()
    except ConnectionResetError:
        return b""
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def is_plain(reply: bytes) -> bool:
    """Whether ``reply`` is a complete 200 response saying "plain"."""
    return reply.startswith(b"HTTP/1.1 200 ") and reply.endswith(b"\r\n\r\nplain")


async def test_tls_client_is_served_over_tls(tls: Contexts) -> None:
    """A mesh client's TLS connection reaches the handler as TLS, with its certificate."""
    async with serving(tls) as site:
        assert await get_tls(site.port, tls.client) == ("tls", GATEWAY)


async def test_plaintext_served_when_permitted(tls: Contexts) -> None:
    """A plaintext request is served as plaintext while plaintext() says yes."""
    async with serving(tls, plaintext=lambda: True) as site:
        assert is_plain(await exchange(site.port, REQUEST))
        assert await get_tls(site.port, tls.client) == ("tls", GATEWAY)


async def test_plaintext_refused_when_strict(tls: Contexts) -> None:
    """While plaintext() says no, a plaintext connection is closed without any HTTP answer."""
    async with serving(tls, plaintext=lambda: False) as site:
        assert await exchange(site.port, REQUEST) == b""
        assert await get_tls(site.port, tls.client) == ("tls", GATEWAY)


async def test_plaintext_decided_per_connection(tls: Contexts) -> None:
    """plaintext() is asked once per plaintext connection (never for TLS), so flipping it
    takes effect at the next connection."""
    answers = [True, False, True]
    asked: list[bool] = []

    def plaintext() -> bool:
        asked.append(answers[len(asked)])
        return asked[-1]

    async with serving(tls, plaintext=plaintext) as site:
        assert is_plain(await exchange(site.port, REQUEST))
        assert await get_tls(site.port, tls.client) == ("tls", GATEWAY)
        assert await exchange(site.port, REQUEST) == b""
        assert is_plain(await exchange(site.port, REQUEST))
    assert asked == answers


async def test_silent_client_closed_after_timeout(tls: Contexts) -> None:
    """A client that sends nothing is closed after sniff_timeout, and others are served
    meanwhile."""
    loop = asyncio.get_running_loop()

    async with serving(tls, plaintext=lambda: True, sniff_timeout=0.3) as site:
        started = loop.time()
        reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
        try:

            async def closed_at() -> float:
                assert await reader.read() == b""
                return loop.time()

            silent = asyncio.create_task(closed_at())
            assert is_plain(await exchange(site.port, REQUEST))
            served = loop.time()
            assert await get_tls(site.port, tls.client) == ("tls", GATEWAY)
            closed = await silent
        finally:
            writer.close()
            await writer.wait_closed()
    assert served < closed
    # Not before the timeout: uvloop's timers count whole milliseconds, so allow one.
    assert closed - started >= 0.3 - 0.001


async def test_tls_without_client_cert_fails_quietly(
    tls: Contexts, caplog: pytest.LogCaptureFixture
) -> None:
    """A TLS client without a certificate is refused (under TLS 1.3 on its first read); the
    failure is logged at debug level only and the site keeps serving."""
    caplog.set_level(logging.DEBUG, logger="shoal.mesh.sniff")
    loop = asyncio.get_running_loop()
    reported: list[dict[str, object]] = []
    loop.set_exception_handler(lambda _, context: reported.append(context))
    try:
        async with serving(tls) as site:
            with pytest.raises(aiohttp.ClientError):
                await get_tls(site.port, tls.anonymous)
            await eventually(
                lambda: any("TLS handshake" in r.getMessage() for r in caplog.records),
                "the refused handshake logged",
                timeout=2,
            )
            assert await get_tls(site.port, tls.client) == ("tls", GATEWAY)
    finally:
        loop.set_exception_handler(None)
    assert reported == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


async def test_failing_plaintext_decision_is_loud(
    tls: Contexts, caplog: pytest.LogCaptureFixture
) -> None:
    """If plaintext() raises (a bug), that connection is closed, the error is logged with its
    traceback, and the site keeps serving."""

    def plaintext() -> bool:
        raise RuntimeError("no mode")

    async with serving(tls, plaintext=plaintext) as site:
        assert await exchange(site.port, REQUEST) == b""
        await eventually(
            lambda: any(r.levelno == logging.ERROR for r in caplog.records),
            "the failing decision logged at error level",
            timeout=2,
        )
        assert await get_tls(site.port, tls.client) == ("tls", GATEWAY)
    [record] = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert record.name == "shoal.mesh.sniff"
    assert record.exc_info is not None and isinstance(record.exc_info[1], RuntimeError)


async def test_port_in_use_is_a_platform_error(tls: Contexts) -> None:
    """A port another listener holds raises PlatformError naming it; the other goes on."""
    async with serving(tls) as taken:
        with pytest.raises(PlatformError, match=f"127.0.0.1:{taken.port}"):
            await serve_sniffing(
                Server(answer),
                "127.0.0.1",
                taken.port,
                ssl_context=tls.server,
                plaintext=lambda: True,
            )
        assert await get_tls(taken.port, tls.client) == ("tls", GATEWAY)


async def test_stopping_ends_everything(tls: Contexts) -> None:
    """Stopping closes the port, drops a connection still being sniffed and one already
    served, and leaves no task behind."""
    async with serving(tls, plaintext=lambda: True) as site:
        port = site.port
        reader, writer = await asyncio.open_connection("127.0.0.1", port)  # silent: sniffed
        try:
            async with aiohttp.ClientSession() as session:  # keeps its connection alive
                async with session.get(f"https://127.0.0.1:{port}/", ssl=tls.client) as response:
                    assert await response.text() == "tls"
                await site.stop()
                assert asyncio.all_tasks() - {asyncio.current_task()} == set()
            assert await reader.read() == b""
        finally:
            writer.close()
            await writer.wait_closed()
        assert site.listener.sockets == ()
    with pytest.raises(ConnectionRefusedError):
        await asyncio.open_connection("127.0.0.1", port)


def test_uvloop(tls: Contexts, caplog: pytest.LogCaptureFixture) -> None:
    """On uvloop too: TLS, permitted and refused plaintext, a silent client, a refused
    handshake that is not reported above debug level, a clean stop."""
    permitted = [True, False]
    reported: list[dict[str, object]] = []

    async def scenario() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda _, c: reported.append(c))
        async with serving(tls, plaintext=lambda: permitted.pop(0), sniff_timeout=0.2) as site:
            assert await get_tls(site.port, tls.client) == ("tls", GATEWAY)
            assert is_plain(await exchange(site.port, REQUEST))
            assert await exchange(site.port, REQUEST) == b""
            assert await exchange(site.port, b"") == b""
            with pytest.raises(aiohttp.ClientError):
                await get_tls(site.port, tls.anonymous)
            assert await get_tls(site.port, tls.client) == ("tls", GATEWAY)
        assert asyncio.all_tasks() - {asyncio.current_task()} == set()

    uvloop.run(scenario())
    assert reported == []
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
