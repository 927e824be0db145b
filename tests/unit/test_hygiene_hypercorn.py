"""The edge's reach into hypercorn: pinned to the version it was written for, installed only
where hypercorn looks its classes up, inert for a plain Config, and the TLS context it builds."""

from __future__ import annotations

import importlib.metadata
import ssl
from pathlib import Path

import hypercorn.asyncio.run
import hypercorn.protocol
from hypercorn.asyncio.worker_context import WorkerContext
from hypercorn.config import Config

from shoal.gateway import hypercorn_edge
from shoal.gateway.hypercorn_edge import (
    PINNED_VERSION,
    EdgeConfig,
    EdgeH11Protocol,
    EdgeTCPServer,
)
from shoal.gateway.hypercorn_h2 import EdgeH2Protocol
from shoal.gateway.server import GatewaySettings, hypercorn_config
from shoal.http.limits import EdgeLimits, KiB
from tests.support.tls import self_signed


def test_hypercorn_version_is_the_pinned_one() -> None:
    """hypercorn_edge overrides private methods of hypercorn 0.18.0: a different installed
    version must be reviewed against it (and PINNED_VERSION moved) before it ships."""
    assert importlib.metadata.version("hypercorn") == PINNED_VERSION == "0.18.0"


def test_overridden_methods_still_exist() -> None:
    """Every hypercorn method the edge classes override or call is where they expect it."""
    for cls, names in (
        (EdgeTCPServer, ("run", "_read_data", "_close")),
        (EdgeH11Protocol, ("handle", "_check_protocol", "_send_error_response", "_send_h11_event")),
        (EdgeH2Protocol, ("handle", "_handle_events", "_flush", "_close_stream")),
    ):
        base = cls.__mro__[1]
        for name in names:
            assert callable(getattr(base, name, None)), f"{base.__name__}.{name}"


def test_install_swaps_the_looked_up_names() -> None:
    """After install() hypercorn builds the edge classes; installing twice changes nothing."""
    hypercorn_edge.install()
    hypercorn_edge.install()
    assert hypercorn.asyncio.run.TCPServer is EdgeTCPServer  # type: ignore[attr-defined]
    assert hypercorn.protocol.H11Protocol is EdgeH11Protocol  # type: ignore[attr-defined]
    assert hypercorn.protocol.H2Protocol is EdgeH2Protocol  # type: ignore[attr-defined]


def test_edge_config_maps_the_limits() -> None:
    """The hypercorn settings follow the limits: idle and read timeouts, handshake deadline,
    backlog, h2 streams, and buffers sized so that the app sees any head up to the limits."""
    limits = EdgeLimits(idle_timeout=7, read_timeout=None, tls_handshake_timeout=3, backlog=64)
    cfg = EdgeConfig(limits)
    assert isinstance(cfg, Config)
    assert (cfg.keep_alive_timeout, cfg.read_timeout) == (7, None)
    assert (cfg.ssl_handshake_timeout, cfg.backlog) == (3, 64)
    assert cfg.h2_max_concurrent_streams == 100
    assert cfg.h11_max_incomplete_size > limits.max_header_bytes + limits.max_uri_bytes
    assert cfg.h2_max_header_list_size > limits.max_header_bytes + 32 * limits.max_header_count


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


def _protocols(config: Config) -> tuple[EdgeH11Protocol, EdgeH2Protocol]:
    """Both edge protocols as hypercorn would build them for ``config`` (no connection yet)."""

    async def send(event: object) -> None:
        """Nowhere to send to: the protocols are not driven here."""

    args = (None, config, WorkerContext(None), None, None, False, None, None, send)
    return EdgeH11Protocol(*args), EdgeH2Protocol(*args)


def test_plain_config_gets_stock_behaviour() -> None:
    """With a plain Config the edge protocols carry no limits or flood guard, so they act as
    hypercorn's own; with an EdgeConfig they do, and h2 enforces the advertised header list."""
    h11_plain, h2_plain = _protocols(Config())
    assert h11_plain._limits is None and h2_plain._guard is None
    cfg = EdgeConfig(EdgeLimits())
    h11_edge, h2_edge = _protocols(cfg)
    assert h11_edge._limits is cfg.limits and h2_edge._guard is not None
    assert h2_edge.connection.decoder.max_header_list_size == cfg.h2_max_header_list_size
    assert EdgeLimits().max_uri_bytes == 8 * KiB
