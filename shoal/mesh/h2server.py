"""A cleartext HTTP/2 server (h2c, prior knowledge) on the sans-IO ``h2`` library: what a
service's outbound listener serves gRPC and other HTTP/2 clients with (an instance's grpcio
channel to ``$SHOAL_MESH_URL``).

Each stream is an :class:`H2Exchange` with the methods of the HTTP/1.1 server's
:class:`~shoal.mesh.h1server.Exchange` that the router's forwarding and
:func:`~shoal.mesh.relay.relay` use, so a request is forwarded the same way whichever version
it came in: its head (``:authority`` as ``host``, ``:path`` as the raw target), its body as it
arrives (each piece's flow-control credit given back once taken, so a slow upstream holds the
client back rather than filling the router), and an answer written as the head, DATA frames
within the client's windows, and trailers — ``grpc-status`` travels in them. An answer with no
body and no trailers is one HEADERS frame ending the stream (what gRPC calls Trailers-Only).
Shoal's own refusals of a gRPC call are gRPC, as the gateway's: HTTP 200 with ``x-shoal-cause``,
then ``grpc-status``/``grpc-message`` trailers. A client that resets its stream cancels its
handler; one that goes away cancels them all.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import Any, Protocol, cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from shoal.http import grpc
from shoal.http.h1 import Fields, Framing, RequestHead
from shoal.http.h2_encoding import without_huffman
from shoal.http.headers import HOP_BY_HOP
from shoal.http.refusal import UPSTREAM_TIMEOUT, Refusal
from shoal.mesh.flow import WriteFlow
from shoal.mesh.h1server import SERVER, run_handler
from shoal.mesh.tasks import finish

__all__ = ["PREFACE", "ByPreface", "H2Exchange", "H2Server", "refuse_stream"]

log = logging.getLogger(__name__)

PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
"""What every HTTP/2 connection opens with (RFC 9113 §3.4): how a listener tells it from 1.1."""


class H2Exchange:
    """One request stream and the answer the handler writes to it."""

    upgrade = False  # WebSocket over HTTP/2 (RFC 8441) is not served here

    def __init__(self, connection: _H2Connection, stream_id: int, head: RequestHead) -> None:
        self.connection = connection
        self.id = stream_id
        self.head = head
        self.has_body = True  # until the stream is known to have ended with its head
        self._pieces: collections.deque[tuple[bytes, int]] = collections.deque()
        self._complete = False
        self._waiter: asyncio.Future[None] | None = None
        self._status: int | None = None  # the answer's head, held until its first byte or end
        self._fields: Fields = ()
        self.started = False
        self.ended = False
        self.task: asyncio.Task[None] | None = None

    # -- the request

    @property
    def peer(self) -> Any:
        """The client's address."""
        return self.connection.extra("peername")

    @property
    def ssl_object(self) -> None:
        """Cleartext only."""
        return None

    @property
    def memo(self) -> dict[str, Any]:
        """What the handler keeps per connection."""
        return self.connection.memo

    async def body(self) -> AsyncIterator[bytes]:
        """The request body as it arrives; each piece's flow-control credit is given back once
        it is taken."""
        while True:
            if self._pieces:
                piece, credit = self._pieces.popleft()
                self.connection.acknowledge(self.id, credit)
                yield piece
            elif self._complete:
                return
            else:
                self._waiter = self.connection.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    def _received(self, piece: bytes | None, credit: int = 0) -> None:
        """A piece of the body arrived (None: the body is complete)."""
        if piece is None:
            self._complete = True
        else:
            self._pieces.append((piece, credit))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the answer

    async def start(self, status: int, fields: Iterable[tuple[bytes, bytes]]) -> None:
        """The answer's head (sent with its first byte of body, or alone ending the stream)."""
        self._status = status
        self._fields = tuple((n, v) for n, v in fields if n not in HOP_BY_HOP)
        self.started = True

    def _send_head(self, end: bool = False) -> None:
        if self._status is not None:
            head = [(b":status", b"%d" % self._status), *self._fields]
            self._status = None
            self.connection.send_headers(self.id, head, end)

    async def write(self, data: bytes) -> None:
        """A piece of the body, sent within the client's flow-control windows."""
        if data:
            self._send_head()
            await self.connection.send_data(self.id, data)

    async def end(self, trailers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """End the answer: with ``trailers`` when there are any."""
        trailers = [(n, v) for n, v in trailers if n not in HOP_BY_HOP]
        if self._status is not None and not trailers:
            self._send_head(end=True)  # no body, no trailers: one HEADERS frame
        else:
            self._send_head()
            if trailers:
                self.connection.send_headers(self.id, trailers, True)
            else:
                self.connection.end_stream(self.id)
        self.ended = True

    def flush(self) -> None:
        """Frames go out as they are made."""

    def send_now(self, data: bytes) -> None:
        """Only a tunnel (an HTTP/1.1 WebSocket) writes raw bytes: never called here."""

    async def respond(
        self, status: int, fields: Iterable[tuple[bytes, bytes]] = (), body: bytes = b""
    ) -> None:
        """A whole answer Shoal makes itself."""
        await self.start(status, [*fields, (b"server", SERVER)])
        await self.write(body)
        await self.end()

    async def refuse(self, refusal: Refusal, fields: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Answer with ``refusal`` (see :func:`refuse_stream`)."""
        await refuse_stream(self, refusal, fields, rpc=grpc.is_grpc(self.head.fields))


class _Answering(Protocol):
    async def start(self, status: int, fields: Iterable[tuple[bytes, bytes]]) -> None: ...
    async def write(self, data: bytes) -> None: ...
    async def end(self, trailers: Iterable[tuple[bytes, bytes]] = ()) -> None: ...


async def refuse_stream(
    stream: _Answering, refusal: Refusal, fields: Iterable[tuple[bytes, bytes]], *, rpc: bool
) -> None:
    """Answer ``refusal`` on an HTTP/2 stream; to a gRPC call (``rpc``) in gRPC, as Envoy does:
    HTTP 200 with ``x-shoal-cause`` (initial metadata), then ``grpc-status`` (mapped from the
    HTTP status) and ``grpc-message`` as trailers."""
    if rpc:
        message = refusal.body().decode().rstrip("\n")
        timed_out = refusal.cause == UPSTREAM_TIMEOUT
        status = grpc.refusal_trailers(refusal.status, message, timed_out=timed_out)
        head = [(b"content-type", b"application/grpc"), *refusal.headers, *fields]
        await stream.start(200, [*head, (b"server", SERVER)])
        await stream.end(status)
        return
    body = refusal.body()
    head = [
        *refusal.headers,
        (b"content-type", b"text/plain; charset=utf-8"),
        *fields,
        (b"server", SERVER),
        (b"content-length", b"%d" % len(body)),
    ]
    await stream.start(refusal.status, head)
    await stream.write(body)
    await stream.end()


Handler = Callable[[H2Exchange], Awaitable[None]]


class _H2Connection(WriteFlow):
    """One client connection: its streams, each served by a handler task."""

    def __init__(self, server: H2Server) -> None:
        self.server = server
        self.loop = asyncio.get_running_loop()
        self.h2 = without_huffman(
            h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=False, header_encoding=None)
            )
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, H2Exchange] = {}
        self.memo: dict[str, Any] = {}
        self._windows: dict[int, asyncio.Future[None]] = {}  # streams waiting to send

    def extra(self, name: str) -> Any:
        return self.transport.get_extra_info(name) if self.transport else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.server.connections.add(self)
        self.h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        for exchange in self.streams.values():
            if exchange.task is not None:
                exchange.task.cancel()  # the client went away
        self._wake_all()
        self.release_writers()

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            log.debug("h2c client broke the protocol: %s", e)
            self._flush()
            self.close()
            return
        for event in events:
            self._on(event)
        self._flush()

    def _on(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.RequestReceived):
            self._request(event.stream_id, event.headers or [], event.stream_ended is not None)
        elif isinstance(event, h2.events.DataReceived):
            exchange = self.streams.get(event.stream_id)
            if exchange is None:
                self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            else:
                exchange._received(event.data or b"", event.flow_controlled_length)
        elif isinstance(event, h2.events.StreamEnded):
            if (exchange := self.streams.get(event.stream_id)) is not None:
                exchange._received(None)
        elif isinstance(event, h2.events.StreamReset):
            exchange = self.streams.pop(event.stream_id, None)
            if exchange is not None and exchange.task is not None:
                exchange.task.cancel()  # the caller cancelled: so is what it asked for
            self._wake(event.stream_id)
        elif isinstance(event, h2.events.WindowUpdated):
            if event.stream_id:
                self._wake(event.stream_id)
            else:
                self._wake_all()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.close()

    def _request(self, stream_id: int, headers: list[tuple[bytes, bytes]], ended: bool) -> None:
        pseudo = {n: v for n, v in headers if n.startswith(b":")}
        fields = [(b"host", pseudo.get(b":authority", b""))]
        fields += [(n, v) for n, v in headers if not n.startswith(b":")]
        length = next((v for n, v in fields if n == b"content-length"), None)
        head = RequestHead(
            method=pseudo.get(b":method", b"GET"),
            target=pseudo.get(b":path", b"/"),
            version=b"2",
            fields=tuple(fields),
            framing=Framing.NONE if ended else Framing.CHUNKED,
            content_length=int(length) if length is not None and length.isdigit() else None,
            keep_alive=True,
        )
        exchange = H2Exchange(self, stream_id, head)
        if ended:
            exchange.has_body = False
            exchange._received(None)
        self.streams[stream_id] = exchange
        exchange.task = self.loop.create_task(self._run(exchange))

    async def _run(self, exchange: H2Exchange) -> None:
        def cut(cancelled: bool) -> None:
            codes = h2.errors.ErrorCodes
            self.reset(exchange.id, codes.CANCEL if cancelled else codes.INTERNAL_ERROR)

        try:
            await run_handler(self.server.handler, exchange, cut)
        finally:
            self.streams.pop(exchange.id, None)

    # -- sending

    def send_headers(self, stream_id: int, headers: list[tuple[bytes, bytes]], end: bool) -> None:
        if self.transport is None or stream_id not in self.streams:
            return
        self.h2.send_headers(stream_id, headers, end_stream=end)
        self._flush()

    def end_stream(self, stream_id: int) -> None:
        if self.transport is not None and stream_id in self.streams:
            self.h2.end_stream(stream_id)
            self._flush()

    async def send_data(self, stream_id: int, data: bytes) -> None:
        """Send ``data`` as the windows allow, waiting for the client to open them."""
        view = memoryview(data)
        while view:
            if self.transport is None or stream_id not in self.streams:
                raise ConnectionResetError("the client went away or reset the stream")
            window = min(
                self.h2.local_flow_control_window(stream_id), self.h2.max_outbound_frame_size
            )
            if window <= 0:
                self._windows[stream_id] = self.loop.create_future()
                await self._windows[stream_id]
                continue
            self.h2.send_data(stream_id, bytes(view[:window]))
            view = view[window:]
            self._flush()
            await self.writable()

    def acknowledge(self, stream_id: int, credit: int) -> None:
        """The handler took a piece: the client may send that much more."""
        if credit and self.transport is not None:
            try:
                self.h2.acknowledge_received_data(credit, stream_id)
            except h2.exceptions.StreamClosedError:
                return
            self._flush()

    def reset(
        self, stream_id: int, code: h2.errors.ErrorCodes = h2.errors.ErrorCodes.INTERNAL_ERROR
    ) -> None:
        if self.transport is None:
            return
        try:
            self.h2.reset_stream(stream_id, code)
        except h2.exceptions.StreamClosedError:
            return
        self._flush()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _flush(self) -> None:
        data = self.h2.data_to_send()
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
    """Serves ``handler`` on the h2c connections it adopts (see :meth:`adopt`)."""

    def __init__(self, handler: Handler) -> None:
        self.handler = handler
        self.connections: set[_H2Connection] = set()

    def adopt(self, transport: asyncio.BaseTransport, received: bytes) -> None:
        """Serve a connection another protocol accepted (``received``: what it already read,
        the preface first)."""
        connection = _H2Connection(self)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        if received:
            connection.data_received(received)

    async def close(self, grace: float) -> None:
        """Let streams in flight finish for ``grace`` seconds, then close every connection."""
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
