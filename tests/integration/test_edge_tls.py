"""The edge's TLS port: protocol versions, cipher suites, ALPN and the handshake deadline,
checked with real handshakes against real hypercorn."""

from __future__ import annotations

import asyncio
import ssl
import warnings
from pathlib import Path
from typing import Any

import pytest

from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from tests.integration.test_edge_h1 import Wire, edge_gateway, request
from tests.integration.test_edge_h2 import H2Wire, get
from tests.support.tls import self_signed

# OpenSSL 3 refuses old protocols and ciphers on the client side too, unless told otherwise:
# the client must be willing, so that a failed handshake proves the *server* refused.
ANYTHING = "ALL:@SECLEVEL=0"


def client(
    cert: Path,
    *,
    version: ssl.TLSVersion | None = None,
    ciphers: str | None = None,
    alpn: list[str] | None = None,
) -> ssl.SSLContext:
    """A client context trusting ``cert``, pinned to ``version`` and ``ciphers`` if given."""
    ctx = ssl.create_default_context(cafile=str(cert))
    if version is not None:
        with warnings.catch_warnings():  # TLS 1.0/1.1 are deprecated: that is the point
            warnings.simplefilter("ignore", DeprecationWarning)
            ctx.minimum_version = ctx.maximum_version = version
    if ciphers is not None or version is not None:
        ctx.set_ciphers(ciphers or ANYTHING)
    if alpn is not None:
        ctx.set_alpn_protocols(alpn)
    return ctx


async def handshake(port: int, ctx: ssl.SSLContext) -> ssl.SSLObject | None:
    """Handshake with the gateway; its SSL object, or None if the handshake failed."""
    try:
        async with asyncio.timeout(5):
            _, writer = await asyncio.open_connection(
                "127.0.0.1", port, ssl=ctx, server_hostname="localhost"
            )
    except (ssl.SSLError, ConnectionError):
        return None
    obj = writer.get_extra_info("ssl_object")
    writer.close()
    assert isinstance(obj, ssl.SSLObject)
    return obj


@pytest.fixture
def cert(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed ECDSA P-256 certificate and key for localhost."""
    return self_signed(tmp_path)


def serving_tls(port: int, cert: tuple[Path, Path]) -> dict[str, Any]:
    """Gateway settings that serve TLS on ``port`` with ``cert``."""
    return {"tls_port": port, "certfile": str(cert[0]), "keyfile": str(cert[1])}


async def test_protocol_versions(
    redis: Redis, redis_url: str, keys: Keys, cert: tuple[Path, Path]
) -> None:
    """TLS 1.0 and 1.1 are refused; 1.2 and 1.3 are served."""
    port = free_port()
    tls = serving_tls(port, cert)
    async with edge_gateway(redis, redis_url, keys, **tls):
        for version in (ssl.TLSVersion.TLSv1, ssl.TLSVersion.TLSv1_1):
            assert await handshake(port, client(cert[0], version=version)) is None, version
        for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
            ctx = client(cert[0], version=version, ciphers="DEFAULT")
            obj = await handshake(port, ctx)
            assert obj is not None
            assert (
                obj.version()
                == {
                    ssl.TLSVersion.TLSv1_2: "TLSv1.2",
                    ssl.TLSVersion.TLSv1_3: "TLSv1.3",
                }[version]
            )


async def test_tls12_ciphers_are_ecdhe_aead(
    redis: Redis, redis_url: str, keys: Keys, cert: tuple[Path, Path]
) -> None:
    """Under TLS 1.2 only ECDHE key exchange with AES-GCM or ChaCha20-Poly1305 is accepted:
    CBC, static-RSA, NULL-encryption and anonymous suites offered alone fail the handshake."""
    port = free_port()
    tls = serving_tls(port, cert)
    v12 = ssl.TLSVersion.TLSv1_2
    async with edge_gateway(redis, redis_url, keys, **tls):
        for weak in (
            "ECDHE-ECDSA-AES128-SHA",
            "ECDHE-ECDSA-AES128-SHA256",
            "ECDHE-ECDSA-AES256-SHA384",
            "AES128-GCM-SHA256",
            "ECDHE-ECDSA-NULL-SHA:@SECLEVEL=0",
            "aNULL:@SECLEVEL=0",
        ):
            ctx = client(cert[0], version=v12, ciphers=weak)
            assert await handshake(port, ctx) is None, weak
        for strong in (
            "ECDHE-ECDSA-AES128-GCM-SHA256",
            "ECDHE-ECDSA-AES256-GCM-SHA384",
            "ECDHE-ECDSA-CHACHA20-POLY1305",
        ):
            obj = await handshake(port, client(cert[0], version=v12, ciphers=strong))
            assert obj is not None, strong
            cipher = obj.cipher()
            assert cipher is not None and cipher[0] == strong


async def test_alpn_h2_and_http11(
    redis: Redis, redis_url: str, keys: Keys, cert: tuple[Path, Path]
) -> None:
    """ALPN picks h2 when offered (and an h2 request is served over it), http/1.1 otherwise."""
    port = free_port()
    tls = serving_tls(port, cert)
    async with edge_gateway(redis, redis_url, keys, **tls) as edge:
        h2_ctx = client(cert[0], alpn=["h2", "http/1.1"])
        obj = await handshake(port, h2_ctx)
        assert obj is not None and obj.selected_alpn_protocol() == "h2"
        h2_ctx.check_hostname = False
        async with H2Wire.to(port, tls=h2_ctx) as wire:
            answer = await wire.answer(await wire.request(get(b"/tls")))
            assert answer.status == 200
        h1_ctx = client(cert[0], alpn=["http/1.1"])
        obj = await handshake(port, h1_ctx)
        assert obj is not None and obj.selected_alpn_protocol() == "http/1.1"
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=h1_ctx, server_hostname="localhost"
        )
        h1 = Wire(reader, writer)
        try:
            await h1.send(request("/tls"))
            reply = await h1.reply()
            assert reply.status == 200
            seen = reply.json()["headers"]
            assert isinstance(seen, dict) and seen["x-forwarded-proto"] == "https"
        finally:
            writer.close()
        assert len(edge.seen()) == 2


async def test_handshake_deadline(
    redis: Redis, redis_url: str, keys: Keys, cert: tuple[Path, Path]
) -> None:
    """A client that connects to the TLS port and never says hello is dropped after
    tls_handshake_timeout."""
    port = free_port()
    tls = serving_tls(port, cert)
    limits = {"tls_handshake_timeout": 0.5}
    async with edge_gateway(redis, redis_url, keys, limits=limits, **tls):
        loop = asyncio.get_running_loop()
        async with Wire.to(port) as silent:
            started = loop.time()
            assert await silent.closed(timeout=5.0)
            assert 0.4 <= loop.time() - started < 3.0
