"""The edge's HTTP/2: Shoal's HTTP/2 server (:mod:`shoal.mesh.h2server`) hardened for clients
on the internet. hypercorn accepts each connection and hands it over (see
:mod:`.hypercorn_edge`): ``h2`` by ALPN and h2c by prior knowledge come here directly, an HTTP/1.1
``Upgrade: h2c`` request through the edge's HTTP/1.1 server, which switches it.

On top of the server's streams, flow control and WebSockets (RFC 8441), an edge connection:

- advertises and enforces the edge's limits: SETTINGS_MAX_CONCURRENT_STREAMS, a header list
  size (beyond it: GOAWAY), SETTINGS_ENABLE_CONNECT_PROTOCOL for WebSockets;
- counts the frames that cost work but make no request with a
  :class:`~.flood.FloodGuard` (PING, SETTINGS, PRIORITY, RST_STREAM — also streams the client
  makes the server reset —, empty DATA, WINDOW_UPDATE) → GOAWAY ENHANCE_YOUR_CALM; that, or a
  protocol error, closes the connection after a lingering close (:data:`LINGER`) so the GOAWAY
  saying why arrives;
- answers a ``:path`` outside visible ASCII with 400 and a CONNECT for anything but a WebSocket
  with 501, on its stream, reaching no handler;
- closes with GOAWAY a connection that has had no stream open for ``idle_timeout`` (for
  ``header_timeout`` before its first stream), and one whose answers have waited
  ``idle_timeout`` on a flow-control window the client keeps shut;
- while the gateway drains, lets open streams finish and refuses new ones, then says GOAWAY.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time

import h2.errors
import h2.events
import h2.settings

from shoal.gateway.flood import FloodGuard, Frame
from shoal.http.h1 import RequestHead
from shoal.http.limits import EdgeLimits, KiB
from shoal.http.refusal import BAD_PATH, NOT_IMPLEMENTED, Refusal
from shoal.mesh.h1server import Handler, Server
from shoal.mesh.h2exchange import plain_refusal, pseudo_headers
from shoal.mesh.h2server import H2Connection, H2Server

__all__ = ["LINGER", "EdgeH2Server", "edge_servers"]

log = logging.getLogger(__name__)

LINGER = 2.0
"""Seconds a connection closed for a flood or a protocol error goes on reading (and dropping)
what the client sends, unless it closes first: closing a socket with unread input makes the
kernel send RST, which can destroy the GOAWAY saying why before the client reads it (nginx's
lingering close)."""

_PING_EVENTS = (h2.events.PingReceived, h2.events.PingAckReceived)
_SETTINGS_EVENTS = (h2.events.RemoteSettingsChanged, h2.events.SettingsAcknowledged)
_OTHER_EVENTS = (h2.events.PriorityUpdated, h2.events.UnknownFrameReceived)
_VISIBLE = re.compile(rb"[!-~]*")  # visible ASCII: what a request target may hold
BAD_PATH_REFUSAL = Refusal(400, BAD_PATH, "the request target must be visible ASCII")
CONNECT_REFUSAL = Refusal(501, NOT_IMPLEMENTED, "CONNECT opens only a WebSocket here")


def _frame(event: h2.events.Event, with_headers: object) -> Frame | None:
    """What the flood guard counts ``event`` as (``with_headers``: the priority event that
    came with a request's HEADERS, not a frame of its own)."""
    if isinstance(event, h2.events.DataReceived):
        empty = not event.data and event.stream_ended is None
        return Frame.EMPTY_DATA if empty else Frame.DATA
    if isinstance(event, h2.events.RequestReceived):
        return Frame.HEADERS
    if isinstance(event, _PING_EVENTS):
        return Frame.PING
    if isinstance(event, _SETTINGS_EVENTS):
        return Frame.SETTINGS
    if isinstance(event, h2.events.WindowUpdated):
        return Frame.WINDOW_UPDATE
    if isinstance(event, h2.events.StreamReset):
        # Sent by the client, or by h2 because of what the client sent (DATA on a stream it
        # had ended: MadeYouReset, CVE-2025-8671): either way a stream that no longer counts
        # against the client's concurrency.
        return Frame.RESET
    if isinstance(event, _OTHER_EVENTS) and event is not with_headers:
        return Frame.PRIORITY
    return None


def refused(pseudo: dict[bytes, bytes]) -> Refusal | None:
    """Why the edge answers a new stream itself: a target outside visible ASCII, a CONNECT for
    anything but a WebSocket (a TCP tunnel, another ``:protocol``)."""
    if not _VISIBLE.fullmatch(pseudo.get(b":path", b"")):
        return BAD_PATH_REFUSAL
    if pseudo.get(b":method") == b"CONNECT" and pseudo.get(b":protocol") != b"websocket":
        return CONNECT_REFUSAL
    return None


class EdgeH2Connection(H2Connection):
    """One client's HTTP/2 connection at the edge."""

    server: EdgeH2Server

    def __init__(self, server: H2Server, upgrade: RequestHead | None = None) -> None:
        super().__init__(server, upgrade)
        assert isinstance(server, EdgeH2Server)
        self.guard = FloodGuard(server.limits, time.monotonic())
        self.requested = upgrade is not None  # a stream has been opened
        self.lingering: asyncio.TimerHandle | None = None  # closing after a flood or an error

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.server.watch()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.lingering is not None:
            self.lingering.cancel()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.lingering is None:
            super().data_received(data)
        # else dropped: the connection is closing

    def _broken(self, error: h2.exceptions.ProtocolError) -> None:
        log.debug("HTTP/2 client %s broke the protocol: %s", self.extra("peername"), error)
        self.flush()  # the GOAWAY h2 framed saying why
        self._linger()

    def _handle(self, events: list[h2.events.Event]) -> None:
        now = time.monotonic()
        with_headers = None
        for event in events:
            if isinstance(event, h2.events.RequestReceived):
                with_headers = event.priority_updated
            frame = _frame(event, with_headers)
            if frame is not None and (reason := self.guard.on_frame(frame, now)) is not None:
                self._calm_down(reason)
                return
            self._on(event)
            if self.lingering is not None:
                return

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        self.requested = True
        pseudo = pseudo_headers(headers)
        refusal = refused(pseudo)
        if refusal is not None:
            self._refuse_stream(stream_id, refusal)  # its DATA, if any, is refused as late data
        else:
            super()._request(stream_id, headers, ended)

    def _refuse_stream(self, stream_id: int, refusal: Refusal) -> None:
        """Answer a stream no handler sees with ``refusal``."""
        head, body = plain_refusal(refusal)
        try:
            self.h2.send_headers(stream_id, [(b":status", b"%d" % refusal.status), *head])
            self.h2.send_data(stream_id, body, end_stream=True)
        except h2.exceptions.ProtocolError:
            pass  # the stream closed meanwhile

    def _sent_data(self) -> None:
        self.guard.data_sent()

    def _calm_down(self, reason: str) -> None:
        log.warning("closing HTTP/2 connection from %s: %s", self.extra("peername"), reason)
        self.goaway(h2.errors.ErrorCodes.ENHANCE_YOUR_CALM, reason.encode())
        self._linger()

    def _linger(self) -> None:
        """Close after :data:`LINGER` unless the client closes first; drop what it sends."""
        if self.lingering is None and self.transport is not None:
            for exchange in self.streams.values():
                if exchange.task is not None:
                    exchange.task.cancel()
            self.lingering = self.loop.call_later(LINGER, self.close)

    def expired(self, now: float) -> bytes | None:
        """Why the connection must close now (GOAWAY, then closed), if it must."""
        limits = self.server.limits
        if self.starved_since is not None and now - self.starved_since > limits.idle_timeout:
            return b"flow-control window shut"
        if self.idle_since is None or self.streams:
            return None
        limit = limits.idle_timeout
        if not self.requested:
            limit = min(limit, limits.header_timeout)
        if limits.read_timeout is not None:
            limit = min(limit, limits.read_timeout)
        return b"idle" if now - self.idle_since > limit else None


class EdgeH2Server(H2Server):
    """The edge's HTTP/2 connections: :class:`EdgeH2Connection`, with ``limits``."""

    connection_class = EdgeH2Connection
    connections: set[EdgeH2Connection]  # type: ignore[assignment]

    def __init__(self, handler: Handler, limits: EdgeLimits, *, tunnels: Server) -> None:
        codes = h2.settings.SettingCodes
        super().__init__(
            handler,  # type: ignore[arg-type]  # (the gateway's handler serves both exchanges)
            tunnels=tunnels,
            settings={
                codes.MAX_CONCURRENT_STREAMS: limits.h2_max_concurrent_streams,
                # HPACK counts 32 bytes per field on top of name and value; the handler checks
                # the real limits, a list beyond this is a connection error (GOAWAY).
                codes.MAX_HEADER_LIST_SIZE: limits.max_header_bytes
                + 32 * limits.max_header_count
                + limits.max_uri_bytes
                + KiB,
            },
        )
        self.limits = limits
        self._sweep: asyncio.TimerHandle | None = None

    def watch(self) -> None:
        """Check the connections' timeouts a few times per the shortest, while there are any."""
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._every, self._close_expired)

    @property
    def _every(self) -> float:
        limits = self.limits
        return min(limits.idle_timeout, limits.header_timeout, limits.read_timeout or 60.0) / 4

    def _close_expired(self) -> None:
        self._sweep = None
        now = asyncio.get_running_loop().time()
        for connection in list(self.connections):
            if connection.lingering is not None:
                continue
            why = connection.expired(now)
            if why is not None:
                log.info(
                    "closing HTTP/2 connection from %s: %s",
                    connection.extra("peername"),
                    why.decode(),
                )
                connection.goaway(why=b"" if why == b"idle" else why)
                connection.close()
        if self.connections:
            self.watch()

    async def close(self, grace: float) -> None:
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        await super().close(grace)


def edge_servers(handler: Handler, limits: EdgeLimits) -> tuple[Server, EdgeH2Server]:
    """The edge's HTTP/1.1 server and HTTP/2 server for ``handler``: each takes the connections
    that speak its version, the first switches ``Upgrade: h2c`` requests to the second, and
    watches the WebSockets opened over the second."""
    h1 = Server(
        handler,
        limits=limits.head_limits(),
        idle_timeout=limits.idle_timeout,
        tunnel_idle_timeout=limits.websocket_idle_timeout,
        header_timeout=limits.header_timeout,
    )
    h2_server = EdgeH2Server(handler, limits, tunnels=h1)
    h1.h2c = h2_server.adopt
    return h1, h2_server
