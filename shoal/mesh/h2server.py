"""An HTTP/2 server on the sans-IO ``h2`` library and an asyncio Protocol: what the gateway serves
its HTTP/2 clients with (``h2`` by ALPN, h2c by prior knowledge or ``Upgrade``, hardened in
:mod:`shoal.gateway.h2_edge`) and a service's outbound listener its gRPC and other HTTP/2 callers
(an instance's grpcio channel to ``$SHOAL_MESH_URL``).

Each stream is an :class:`~shoal.mesh.h2exchange.H2Exchange` with the methods of the HTTP/1.1
server's :class:`~shoal.mesh.h1server.Exchange` that the handlers and
:func:`~shoal.mesh.relay.relay` use, so a request is forwarded the same way whichever version it
came in:

- The request: ``:authority`` as ``host``, ``:path`` as the raw target; its body as DATA arrives,
  each piece's flow-control credit given back once the handler takes it (so a slow upstream holds
  the client back rather than filling the proxy); ``Expect: 100-continue`` answered with 100 when
  the body is first read.
- The answer: the head is held until its first byte of body or its end, and what is written is
  framed into one buffer written out when the handler flushes or ends (so a small answer is one
  write, its last DATA frame carrying END_STREAM); DATA stays within the client's windows.
  Trailers follow when the upstream sent any (``grpc-status`` travels in them); an answer with
  no body and no trailers is one HEADERS frame ending the stream (gRPC's Trailers-Only); a gRPC
  answer that ends without a status ends with UNKNOWN. Shoal's own refusals of a gRPC call are
  gRPC: HTTP 200 with ``x-shoal-cause``, then ``grpc-status``/``grpc-message`` trailers. An
  answer cut short resets the stream: never a truncated body that looks whole.
- A stream the client resets, or a connection that ends, cancels its handler at once (its
  upstream request and in-flight slot are released now).
- With ``tunnels`` (an HTTP/1.1 :class:`~shoal.mesh.h1server.Server` that watches WebSockets), a
  WebSocket over HTTP/2 (RFC 8441 extended CONNECT, ``:protocol websocket``, which
  SETTINGS_ENABLE_CONNECT_PROTOCOL invites browsers to open on a connection they already have):
  its DATA carries exactly the bytes an HTTP/1.1 connection carries after ``101`` (RFC 6455
  frames), so nothing is re-framed. It is handed to the handler as the HTTP/1.1 handshake
  instances speak: ``GET`` with a fresh ``Sec-WebSocket-Key`` (the HTTP/2 client sends none); the
  instance's ``101`` goes back as ``200`` without its ``Sec-WebSocket-Accept``. The HTTP/1.1
  server closes it like its own (idle timeout, drain with a 1001 close frame).
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions
import h2.settings

from shoal.http.h1 import RequestHead
from shoal.http.h2_encoding import without_huffman
from shoal.http.headers import HOP_BY_HOP
from shoal.mesh.flow import WriteFlow
from shoal.mesh.h1server import FLUSH_AT, Server, run_handler
from shoal.mesh.h2exchange import H2Exchange
from shoal.mesh.tasks import finish

__all__ = ["PREFACE", "ByPreface", "H2Connection", "H2Server"]

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What every HTTP/2 connection opens with (RFC 9113 §3.4): how a listener tells it from 1.1."""

_CONFIGURATION = h2.config.H2Configuration(
    client_side=False,
    header_encoding=None,
    # What a client sends is checked; what is sent is an answer whose fields came from a
    # parser that lower-cases names (HTTP/1.1) or from h2 (HTTP/2), less the hop-by-hop ones
    # (:meth:`H2Exchange.start`): h2 would check and normalise each again (~10% of a request).
    validate_outbound_headers=False,
    normalize_outbound_headers=False,
)
_H2C_LEFT_OUT = HOP_BY_HOP | {b"http2-settings"}


Handler = Callable[[H2Exchange], Awaitable[None]]


class H2Connection(WriteFlow):
    """One client connection: its streams, each served by a handler task. What it frames waits
    in ``h2``'s buffer until :meth:`flush` (the end of each read, an answer's end or flush, or
    :data:`~shoal.mesh.h1server.FLUSH_AT` bytes of DATA), so a small answer is one write."""

    def __init__(self, server: H2Server, upgrade: RequestHead | None = None) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.h2 = without_huffman(h2.connection.H2Connection(_CONFIGURATION))
        settings = dict(server.settings)
        if server.tunnels is not None:
            settings[h2.settings.SettingCodes.ENABLE_CONNECT_PROTOCOL] = 1
        if settings:
            self.h2.local_settings = h2.settings.Settings(client=False, initial_values=settings)
        limit = settings.get(h2.settings.SettingCodes.MAX_HEADER_LIST_SIZE)
        if limit is not None:
            # Advertised as an initial value, it is never acknowledged, so h2's HPACK decoder
            # would go on enforcing its own 64 KiB: enforce what is said.
            self.h2.decoder.max_header_list_size = limit
        self.upgrade = upgrade  # an HTTP/1.1 request that asked to switch (Upgrade: h2c)
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Exchange] = {}
        self.memo: dict[str, Any] = {}
        self.closed = self.loop.create_future()  # done once the connection has closed
        self.idle_since: float | None = self.loop.time()  # no stream open: since when
        self.starved_since: float | None = None  # an answer waits on the client's window
        self._windows: dict[int, asyncio.Future[None]] = {}  # streams waiting to send
        self._unflushed = 0  # DATA bytes framed since the last flush

    def extra(self, name: str) -> Any:
        return self.transport.get_extra_info(name) if self.transport else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        if self.upgrade is None:
            self.h2.initiate_connection()
        else:
            settings = next((v for n, v in self.upgrade.fields if n == b"http2-settings"), b"")
            try:
                self.h2.initiate_upgrade_connection(settings)
            except (ValueError, h2.exceptions.ProtocolError) as e:  # (binascii.Error included)
                log.debug("h2c upgrade with bad HTTP2-Settings: %s", e)
                self.transport.close()
                return
            fields = tuple((n, v) for n, v in self.upgrade.fields if n not in _H2C_LEFT_OUT)
            head = dataclasses.replace(self.upgrade, version=b"2", fields=fields)
            self._open(H2Exchange(self, 1, head, upgrade=False))
        self.flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        for exchange in self.streams.values():
            if exchange.task is not None:
                exchange.task.cancel()  # the client went away
        self._wake_all()
        self.release_writers()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._broken(e)
            return
        self._handle(events)
        self.flush()

    def _broken(self, error: h2.exceptions.ProtocolError) -> None:
        """The client broke the protocol: h2 has framed a GOAWAY saying why."""
        log.debug("HTTP/2 client broke the protocol: %s", error)
        self.flush()
        self.close()

    def _handle(self, events: list[h2.events.Event]) -> None:
        for event in events:
            self._on(event)

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers or [], event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            exchange = self.streams.get(event.stream_id)
            if exchange is None:
                self._refuse_late_data(event)
            else:
                exchange._received(event.data or b"", event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            if (exchange := self.streams.get(event.stream_id)) is not None:
                exchange._received(None)
        elif isinstance(event, h2.events.StreamReset):
            exchange = self._forget(event.stream_id)
            if exchange is not None and exchange.task is not None:
                exchange.task.cancel()  # the caller cancelled: so is what it asked for
            self._wake(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                self._wake(event.stream_id)
            else:
                self._wake_all()
        elif isinstance(event, h2.events.RemoteSettingsChanged):
            if h2.settings.SettingCodes.INITIAL_WINDOW_SIZE in event.changed_settings:
                self._wake_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        if self.server.closing:  # (opened before the client read SETTINGS_MAX_CONCURRENT_STREAMS 0)
            self.reset(stream_id, h2.errors.ErrorCodes.REFUSED_STREAM)
            return
        websocket = self.server.tunnels is not None
        self._open(H2Exchange.opened(self, stream_id, headers, ended, websocket=websocket))

    def _open(self, exchange: H2Exchange) -> None:
        self.streams[exchange.id] = exchange
        self.idle_since = None
        exchange.task = self.loop.create_task(self._run(exchange))
        if exchange.upgrade and self.server.tunnels is not None:
            self.server.tunnels.watch(exchange)

    async def _run(self, exchange: H2Exchange) -> None:
        cancelled = False

        def cut(was_cancelled: bool) -> None:
            nonlocal cancelled
            cancelled = was_cancelled

        try:
            await run_handler(self.server.handler, exchange, cut)
        except asyncio.CancelledError:
            cancelled = True  # the client left, or a tunnel closed (idle, drain)
        finally:
            if exchange.upgrade and self.server.tunnels is not None:
                self.server.tunnels.unwatch(exchange)
            await exchange._say_goodbye()
            if not exchange.ended:
                codes = h2.errors.ErrorCodes
                self.reset(exchange.id, codes.CANCEL if cancelled else codes.INTERNAL_ERROR)
            self._forget(exchange.id)

    def _forget(self, stream_id: int) -> H2Exchange | None:
        exchange = self.streams.pop(stream_id, None)
        if not self.streams:
            self.idle_since = self.loop.time()
            if self.server.closing:  # drained
                self.goaway()
                self.close()
        return exchange

    def _refuse_late_data(self, event: h2.events.DataReceived) -> None:
        """DATA for a stream already answered: credit the window, ask the client to stop."""
        self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        if event.stream_ended is None:
            try:
                self.h2.reset_stream(event.stream_id, h2.errors.ErrorCodes.NO_ERROR)
            except h2.exceptions.ProtocolError:
                pass  # already closed on both sides

    # -- sending

    def room(self, stream_id: int) -> int:
        """Bytes one DATA frame on ``stream_id`` may carry now (ConnectionResetError: the
        client went away or reset the stream)."""
        if self.transport is None or stream_id not in self.streams:
            raise ConnectionResetError("the client went away or reset the stream")
        try:
            window = self.h2.local_flow_control_window(stream_id)
        except h2.exceptions.ProtocolError:
            raise ConnectionResetError("the stream is closed") from None
        return min(window, self.h2.max_outbound_frame_size)

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        if self.transport is not None and stream_id in self.streams:
            try:
                self.h2.send_headers(stream_id, headers, end_stream=end)
            except h2.exceptions.ProtocolError:
                pass  # the stream closed meanwhile

    def informational(self, stream_id: int, status: int) -> None:
        """A 1xx answer on ``stream_id``, sent now."""
        self.send_headers(stream_id, [(b":status", b"%d" % status)], False)
        self.flush()

    def end_stream(self, stream_id: int) -> None:
        if self.transport is not None and stream_id in self.streams:
            try:
                self.h2.end_stream(stream_id)
            except h2.exceptions.ProtocolError:
                pass  # the stream closed meanwhile

    def send_frame(self, stream_id: int, data: bytes, end: bool = False) -> None:
        """One DATA frame that fits :meth:`room`."""
        self.h2.send_data(stream_id, data, end_stream=end)
        self._sent_data()
        self.starved_since = None
        self._unflushed += len(data)

    async def send_data(self, stream_id: int, data: bytes) -> None:
        """Send ``data`` as the windows allow, waiting for the client to open them."""
        view = memoryview(data)
        while view:
            room = self.room(stream_id)
            if room <= 0:
                self.flush()
                if self.starved_since is None:
                    self.starved_since = self.loop.time()
                self._windows[stream_id] = self.loop.create_future()
                await self._windows[stream_id]
                continue
            self.send_frame(stream_id, data if room >= len(data) else bytes(view[:room]))
            view = view[room:]
            if self._unflushed >= FLUSH_AT:
                self.flush()
                await self.writable()

    def _sent_data(self) -> None:
        """A DATA frame was framed (a subclass may count them)."""

    def acknowledge(self, stream_id: int, credit: int) -> None:
        """The handler took a piece: the client may send that much more."""
        if credit and self.transport is not None:
            try:
                self.h2.acknowledge_received_data(credit, stream_id)
            except h2.exceptions.ProtocolError:
                return  # the stream closed meanwhile
            self.flush()

    def reset(
        self, stream_id: int, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.INTERNAL_ERROR
    ) -> None:
        if self.transport is None:
            return
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.ProtocolError:
            return  # already closed
        self.flush()

    def goaway(
        self, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.NO_ERROR, why: bytes = b""
    ) -> None:
        """Tell the client that no new stream will be served (the ones it opened may finish)."""
        if self.transport is not None:
            self.h2.close_connection(error_code=code, additional_data=why or None)
            self.flush()

    def drain(self) -> None:
        """Serve no new stream: let the open ones finish, then GOAWAY and close. Until then
        the client is told to open none (SETTINGS_MAX_CONCURRENT_STREAMS 0) and any it opens
        is refused, as hypercorn does: an HTTP/2 client on the ``h2`` library reads nothing
        after a GOAWAY, so one sent now would cut the answers still on their way."""
        if not self.streams:
            self.goaway()
            self.close()
        elif self.transport is not None:
            self.h2.update_settings({h2.settings.SettingCodes.MAX_CONCURRENT_STREAMS: 0})
            self.flush()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def flush(self) -> None:
        data = self.h2.data_to_send()
        self._unflushed = 0
        if data and self.transport is not None:
            self.transport.write(data)

    def _wake(self, stream_id: int) -> None:
        waiter = self._windows.pop(stream_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _wake_all(self) -> None:
        for stream_id in list(self._windows):
            self._wake(stream_id)


class H2Server:
    """Serves ``handler`` on the HTTP/2 connections it adopts (see :meth:`adopt`), with
    ``settings`` (SETTINGS values) and, with ``tunnels``, WebSockets over HTTP/2."""

    connection_class: type[H2Connection] = H2Connection

    def __init__(
        self,
        handler: Handler,
        *,
        tunnels: Server | None = None,
        settings: Mapping[h2.settings.SettingCodes, int] | None = None,
    ) -> None:
        self.handler = handler
        self.tunnels = tunnels
        self.settings = dict(settings or {})
        self.connections: set[H2Connection] = set()
        self.closing = False

    def adopt(
        self, transport: asyncio.BaseTransport, received: bytes, upgrade: RequestHead | None = None
    ) -> asyncio.Future[None]:
        """Serve a connection another protocol accepted (``received``: what it already read,
        the preface first; ``upgrade``: the HTTP/1.1 request that switched it to h2c, answered
        on stream 1); the future is done once it has closed."""
        connection = self.connection_class(self, upgrade)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        if received:
            connection.data_received(received)
        return connection.closed

    async def close(self, grace: float) -> None:
        """Serve no new stream, let those in flight finish for ``grace`` seconds, then close
        every connection (with GOAWAY once its streams are done)."""
        self.closing = True
        for connection in list(self.connections):
            connection.drain()
        await finish(
            [e.task for c in self.connections for e in c.streams.values() if e.task], grace
        )
        for connection in list(self.connections):
            connection.close()


class ByPreface(asyncio.Protocol):
    """A listener's protocol until the first bytes say which HTTP a connection speaks: the
    HTTP/2 preface → ``h2``, anything else → ``h1`` (a :class:`~shoal.mesh.h1server.Server`);
    ``admit`` decides first whether to serve it at all."""

    def __init__(
        self,
        h1: Any,
        h2: H2Server,
        admit: Callable[[asyncio.Transport], bool] | None = None,
    ) -> None:
        self.h1, self.h2, self.admit = h1, h2, admit
        self.transport: asyncio.Transport | None = None
        self.received = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        if self.admit is not None and not self.admit(self.transport):
            self.transport.abort()  # not served: closed before a byte is read
            self.transport = None

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        self.received += data
        if PREFACE.startswith(self.received):
            return  # so far, it could be either: wait for more
        transport, self.transport = self.transport, None
        if self.received.startswith(PREFACE):
            self.h2.adopt(transport, self.received)
        else:
            self.h1.adopt(transport, self.received)
