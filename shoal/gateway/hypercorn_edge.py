"""hypercorn 0.18.0 at the edge: the one module that reaches into hypercorn's internals.

hypercorn listens (its worker, sockets, TLS handshakes with ALPN, shutdown), and for every
connection builds a ``TCPServer``; at the edge that is an :class:`EdgeTCPServer`, which applies
the connection limits (nothing in hypercorn caps the number of open connections, ``backlog`` is
only the listen queue) and hands the connection over to Shoal's own servers, which serve it at a
fraction of the per-request cost of hypercorn's h11/h2 protocols and ASGI layer:

- ``h2`` by ALPN, or the HTTP/2 prior-knowledge preface → the edge's HTTP/2 server
  (:class:`~.h2_edge.EdgeH2Server`: flood budgets, late DATA, idle and zero-window closes, the
  header list limit it advertises, WebSockets over HTTP/2);
- anything else → the edge's HTTP/1.1 server (:class:`~shoal.mesh.h1server.Server`: header
  deadline → 408, causes on every error answer, ``Upgrade: h2c`` switched to the HTTP/2 server).

A connection that sends nothing within ``header_timeout`` is closed: holding connections open
costs a client nothing, so a new one must start a request soon. :class:`EdgeConfig` is a
hypercorn ``Config`` built from :class:`~shoal.http.limits.EdgeLimits`, with a strict TLS context
(hypercorn's drops the options ``ssl.create_default_context`` sets). :func:`install` puts
:class:`EdgeTCPServer` where hypercorn looks it up at call time
(``hypercorn.asyncio.run.TCPServer``); it behaves exactly like hypercorn's unless the ``Config``
is an :class:`EdgeConfig`, so any other hypercorn server in the process is unaffected.

The override depends on private details of hypercorn 0.18.0 (``TCPServer``'s constructor and
``reader``/``writer``): ``tests/unit/test_hygiene_hypercorn.py`` fails when the installed version
is not :data:`PINNED_VERSION`. Re-read ``hypercorn/asyncio/tcp_server.py`` and ``asyncio/run.py``
against this module before moving the pin.
"""

from __future__ import annotations

import asyncio
import collections
import copy
import importlib.metadata
import logging
import ssl

import hypercorn.asyncio.run
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.config import Config

from shoal.errors import UserError
from shoal.gateway.h2_edge import EdgeH2Server
from shoal.http.limits import EdgeLimits
from shoal.mesh.h1server import Server
from shoal.mesh.h2server import PREFACE

log = logging.getLogger(__name__)

PINNED_VERSION = "0.18.0"

# ECDHE key exchange with AEAD ciphers only (TLS 1.2); TLS 1.3 suites are all AEAD already.
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


class Connections:
    """The edge's open connections, in all and by client address."""

    __slots__ = ("open", "per_client")

    def __init__(self) -> None:
        self.open = 0
        self.per_client: collections.Counter[str] = collections.Counter()


class EdgeConfig(Config):
    """A hypercorn ``Config`` carrying the edge's limits and TLS policy."""

    def __init__(
        self,
        limits: EdgeLimits,
        *,
        tls_min_version: str = "1.2",
        ciphers: str = MODERN_CIPHERS,
    ) -> None:
        if tls_min_version not in TLS_VERSIONS:
            raise UserError(f"tls_min_version must be 1.2 or 1.3 (got {tls_min_version!r})")
        super().__init__()
        self.limits = limits
        self.tls_min_version = TLS_VERSIONS[tls_min_version]
        self.ciphers = ciphers
        # Open connections, in all and by client address: shared by the copies made for
        # further listeners (:meth:`for_listener`), so the limits are the gateway's.
        self.connections = Connections()
        # The servers that take its connections over (see :func:`~.h2_edge.edge_servers`).
        self.h1: Server | None = None
        self.h2: EdgeH2Server | None = None
        self.ssl_handshake_timeout = limits.tls_handshake_timeout
        self.backlog = limits.backlog

    def for_listener(self, h1: Server, h2: EdgeH2Server) -> EdgeConfig:
        """A copy whose connections go to ``h1`` and ``h2`` (another listener's servers),
        counted with this one's."""
        copied = copy.copy(self)
        copied.h1, copied.h2 = h1, h2
        return copied

    def create_ssl_context(self) -> ssl.SSLContext | None:
        """hypercorn's context, with TLS 1.2+ (or 1.3), server cipher order, no renegotiation."""
        context: ssl.SSLContext | None = super().create_ssl_context()
        if context is None:
            return None
        context.minimum_version = self.tls_min_version
        # hypercorn assigns ``options = OP_NO_COMPRESSION``, clearing the defaults; restore them.
        context.options |= (
            ssl.OP_NO_COMPRESSION
            | ssl.OP_CIPHER_SERVER_PREFERENCE
            | ssl.OP_NO_RENEGOTIATION
            | ssl.OP_SINGLE_ECDH_USE
        )
        return context


class EdgeTCPServer(TCPServer):
    """hypercorn's connection handler; at the edge, it closes connections beyond
    ``max_connections``, or beyond ``max_connections_per_client`` from one client address (so
    that one client holding connections cannot starve the others), and hands the others over
    to Shoal's servers."""

    async def run(self) -> None:
        """Serve the connection, or close it at once if the gateway (or its client's share of
        it) is full."""
        config = self.config
        if not isinstance(config, EdgeConfig):
            await super().run()
            return
        peer = self.writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else ""
        limits = config.limits
        connections = config.connections
        if (
            connections.open >= limits.max_connections
            or connections.per_client[client] >= limits.max_connections_per_client
        ):
            self.writer.close()
            return
        connections.open += 1
        connections.per_client[client] += 1
        try:
            await self._hand_over(config)
        finally:
            connections.open -= 1
            connections.per_client[client] -= 1
            if not connections.per_client[client]:
                del connections.per_client[client]
            self.writer.close()

    async def _hand_over(self, config: EdgeConfig) -> None:
        """Give the connection to the server for its version (HTTP/2 by ALPN or by the
        preface, else HTTP/1.x) and wait until it has closed."""
        h1, h2 = config.h1, config.h2
        assert h1 is not None and h2 is not None, "the edge's servers are set"
        ssl_object = self.writer.get_extra_info("ssl_object")
        alpn_h2 = ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2"
        data = b""
        if not alpn_h2:
            limits = config.limits
            first = min(limits.header_timeout, limits.idle_timeout, limits.read_timeout or 1e9)
            try:
                async with asyncio.timeout(first):
                    data = await self.reader.read(MAX_RECV)
                    # Enough to tell the HTTP/2 preface from an HTTP/1.x request.
                    while data and len(data) < len(PREFACE) and PREFACE.startswith(data):
                        more = await self.reader.read(MAX_RECV)
                        if not more:
                            break
                        data += more
            except (TimeoutError, ConnectionError, OSError, ssl.SSLError):
                return
            if not data:
                return
        # All the reader holds goes over with the connection, and no await from here to the
        # hand-over: bytes arriving meanwhile would stay behind in the reader.
        data += bytes(self.reader._buffer)  # type: ignore[attr-defined]
        self.reader._buffer.clear()  # type: ignore[attr-defined]
        transport = self.writer.transport
        streams = transport.get_protocol()
        server = h2 if alpn_h2 or data.startswith(PREFACE) else h1
        closed = server.adopt(transport, data)
        try:
            await closed
        finally:
            streams.connection_lost(None)  # the writer's close waits for the stream to see it


def install() -> None:
    """Make hypercorn build :class:`EdgeTCPServer` (inert for a plain ``Config``); idempotent."""
    installed = importlib.metadata.version("hypercorn")
    if installed != PINNED_VERSION:
        log.warning(
            "hypercorn %s is installed, the edge hardening was written for %s",
            installed,
            PINNED_VERSION,
        )
    # hypercorn.asyncio.run looks the name up each time it builds a connection.
    hypercorn.asyncio.run.TCPServer = EdgeTCPServer  # type: ignore[attr-defined]
