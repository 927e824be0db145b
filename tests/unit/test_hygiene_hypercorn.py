"""The edge's reach into hypercorn: pinned to the version it was written for, installed only
where hypercorn looks its classes up, inert for a plain Config, and the TLS context it builds."""

from __future__ import annotations

import importlib.metadata
import ssl
from pathlib import Path

import hypercorn.asyncio.run
import hypercorn.protocol
from hypercorn.config import Config
from hypercorn.protocol.h2 import H2Protocol
from hypercorn.protocol.h11 import H11Protocol

from shoal.gateway import hypercorn_edge
from shoal.gateway.hypercorn_edge import PINNED_VERSION, EdgeConfig, EdgeTCPServer
from shoal.gateway.server import GatewaySettings, hypercorn_config
from shoal.http.limits import EdgeLimits, KiB
from tests.support.tls import self_signed


def test_hypercorn_version_is_the_pinned_one() -> None:
    """hypercorn_edge overrides private methods of hypercorn 0.18.0: a different installed
    version must be reviewed against it (and PINNED_VERSION moved) before it ships."""
    assert importlib.metadata.version("hypercorn") == PINNED_VERSION == "0.18.0"


def test_overridden_methods_still_exist() -> None:
    """What the edge's TCPServer overrides or reads is where it expects it."""
    assert callable(getattr(EdgeTCPServer.__mro__[1], "run", None))
    assert {"reader", "writer", "config"} <= set(
        EdgeTCPServer.__mro__[1].__init__.__code__.co_varnames
    )


def test_install_swaps_only_the_tcp_server() -> None:
    """After install() hypercorn builds the edge's TCPServer (its protocols stay stock: the edge
    hands its connections over before any is built); installing twice changes nothing."""
    hypercorn_edge.install()
    hypercorn_edge.install()
    assert hypercorn.asyncio.run.TCPServer is EdgeTCPServer  # type: ignore[attr-defined]
    assert hypercorn.protocol.H11Protocol is H11Protocol  # type: ignore[attr-defined]
    assert hypercorn.protocol.H2Protocol is H2Protocol  # type: ignore[attr-defined]


def test_edge_config_maps_the_limits() -> None:
    """The settings hypercorn still applies follow the limits: the handshake deadline and the
    listen backlog."""
    limits = EdgeLimits(tls_handshake_timeout=3, backlog=64)
    cfg = EdgeConfig(limits)
    assert isinstance(cfg, Config)
    assert (cfg.ssl_handshake_timeout, cfg.backlog) == (3, 64)
    assert EdgeLimits().max_uri_bytes == 8 * KiB


def test_tls_context(tmp_path: Path) -> None:
    """The TLS context: 1.2 at least (1.3 if asked), ECDHE + AEAD suites only, server cipher
    order, no compression or renegotiation, ALPN h2 then http/1.1."""
    cert, key = self_signed(tmp_path)
    settings = GatewaySettings(tls_port=8443, certfile=str(cert), keyfile=str(key))
    ctx = hypercorn_config(settings).create_ssl_context()
    assert ctx is not None
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    for flag in (ssl.OP_NO_COMPRESSION, ssl.OP_CIPHER_SERVER_PREFERENCE, ssl.OP_NO_RENEGOTIATION):
        assert ctx.options & flag, flag
    tls12 = [c for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"]
    assert tls12
    for cipher in tls12:
        assert cipher["kea"] == "kx-ecdhe" and cipher["aead"], cipher["name"]
    strict = GatewaySettings(
        tls_port=8443, certfile=str(cert), keyfile=str(key), tls_min_version="1.3"
    )
    ctx13 = hypercorn_config(strict).create_ssl_context()
    assert ctx13 is not None and ctx13.minimum_version == ssl.TLSVersion.TLSv1_3
