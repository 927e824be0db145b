"""An HTTP/1.1 server on asyncio Protocols and the sans-IO codec: what the node router and the
gateway (for HTTP/1.x clients) serve requests with.

Each connection parses requests with :class:`shoal.http.h1.Reader` and runs one handler task
per request, in order (a pipelined request waits for the one before it). A handler gets an
:class:`Exchange`: the request head as received (raw target, field values as sent), its body as
an async iterator, and methods that write the response — the head (framed by a
``Content-Length`` it carries, else chunked, else closed-delimited for HTTP/1.0), body pieces,
and the end with trailers.

- ``Expect: 100-continue`` is answered here, once, when the handler first reads the body; a
  handler that answers without reading it never makes the client send it (the connection then
  closes, since the body's bytes would follow).
- A client that goes away cancels its handler at once: whatever it holds upstream (a
  connection, an in-flight slot) is released by the cancellation.
- Reading pauses while a request body has more than :data:`HIGH_WATER` unread bytes; writing
  waits while the transport's buffer is full. A response's head and pieces are gathered and
  written together (up to :data:`FLUSH_AT` bytes, or when the handler flushes or ends it), so
  a small response costs one write.
- A head the codec refuses gets the codec's status and ``x-shoal-cause`` and the connection is
  closed; so does a connection idle longer than ``idle_timeout`` between requests.

The :class:`Server` owns its connections: :meth:`Server.close` stops new requests, lets those in
flight finish for a grace period, then cancels them.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from http import HTTPStatus
from typing import Any, Protocol, TypeVar, cast

from shoal.http.h1 import (
    BodyWriter,
    Data,
    End,
    Fields,
    Framing,
    HeadLimits,
    ProtocolError,
    Reader,
    RequestHead,
    Upgraded,
    response_head,
)
from shoal.http.headers import h2c_upgrade, websocket_upgrade
from shoal.http.refusal import REQUEST_TIMEOUT, Refusal
from shoal.mesh.flow import HIGH_WATER, LOW_WATER, WriteFlow
from shoal.mesh.tasks import finish

log = logging.getLogger(__name__)

SERVER = b"shoal"  # the Server field of the answers Shoal makes itself
SWITCHING_TO_H2C = (
    b"HTTP/1.1 101 Switching Protocols\r\nconnection: Upgrade\r\nupgrade: h2c\r\n\r\n"
)

Handler = Callable[["Exchange"], Awaitable[None]]
H2cUpgrade = Callable[[asyncio.BaseTransport, bytes, RequestHead], "asyncio.Future[None]"]
"""Takes a connection switched to h2c: its transport, what followed the request that asked,
and that request (answered on stream 1); done once the connection has closed."""

FLUSH_AT = 64 * 1024
"""Response bytes an exchange gathers before it writes them: a small response goes out in one
write however many pieces it was written in. A handler that waits between pieces calls
:meth:`Exchange.flush` first (:func:`shoal.mesh.relay.relay` does)."""


_REASONS = {status.value: status.phrase.encode() for status in HTTPStatus}


def reason(status: int) -> bytes:
    """The standard reason phrase of ``status`` (``b""`` for an unknown one)."""
    return _REASONS.get(status, b"")


class Exchange:
    """One request on a connection and the response the handler writes to it."""

    def __init__(self, connection: _Connection, head: RequestHead) -> None:
        self.connection = connection
        self.head = head
        self._pieces: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._complete = head.framing is Framing.NONE  # the whole request body arrived
        self._waiter: asyncio.Future[None] | None = None
        self._body_read = False
        self._writer: BodyWriter | None = None
        self._out: list[bytes] = []  # written, not yet on the wire (see flush)
        self._out_bytes = 0
        self.started = False  # the response head was written
        self.ended = False
        self.close_after = not head.keep_alive
        self.upgrade = False  # a WebSocket handshake: its "body" is the client's tunnel bytes

    # -- the request

    @property
    def peer(self) -> Any:
        """The client's address."""
        return self.connection.extra("peername")

    @property
    def ssl_object(self) -> ssl.SSLObject | None:
        """The TLS session, on a TLS connection."""
        found: ssl.SSLObject | None = self.connection.extra("ssl_object")
        return found

    @property
    def scheme(self) -> str:
        return "http" if self.connection.extra("ssl_object") is None else "https"

    @property
    def memo(self) -> dict[str, Any]:
        """What the handler keeps per connection (e.g. the verified peer identity)."""
        return self.connection.memo

    @property
    def has_body(self) -> bool:
        """Whether a request body follows the head (a tunnel's bytes, after an upgrade)."""
        return self.head.framing is not Framing.NONE or self.upgrade

    def _tunnel(self, rest: bytes) -> None:
        """The request asked to switch to WebSocket: what the client sends from now on (``rest``
        first) is read as its body, and the connection closes when the exchange ends."""
        self.upgrade = True
        self.close_after = True
        self._complete = False
        self.connection.tunnel = self
        if rest:
            self._received(rest)

    async def body(self) -> AsyncIterator[bytes]:
        """The request body as it arrives (sending ``100 Continue`` first when asked for)."""
        if self._body_read:
            raise RuntimeError("the request body can be read once")
        self._body_read = True
        if self.head.expects_continue and not self._complete and not self.started:
            self.connection.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        loop = self.connection.loop
        while True:
            if self._pieces:
                piece = self._pieces.popleft()
                self._buffered -= len(piece)
                self.connection.consumed(self._buffered)
                yield piece
            elif self._complete:
                return
            else:
                self._waiter = loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    def _received(self, piece: bytes | None) -> None:
        """A piece of the body arrived (None: the body is complete)."""
        if piece is None:
            self._complete = True
        else:
            self._pieces.append(piece)
            self._buffered += len(piece)
            if self._buffered > HIGH_WATER:
                self.connection.pause()
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the response

    async def start(self, status: int, fields: Iterable[tuple[bytes, bytes]]) -> None:
        """Write the response head; its framing follows from ``fields`` and the request."""
        fields = [(n, v) for n, v in fields if n != b"transfer-encoding"]
        names = {n for n, _ in fields}
        bodiless = self.head.method == b"HEAD" or status in (204, 304) or status < 200
        chunked = False
        if not bodiless and b"content-length" not in names:
            if self.head.version == b"1.1":
                chunked = True
                fields.append((b"transfer-encoding", b"chunked"))
            else:
                self.close_after = True  # HTTP/1.0: the body ends with the connection
        if self.has_body and not self._complete and not self._body_read:
            self.close_after = True  # the unread body's bytes would follow on the connection
        if self.close_after and status != 101:  # a 101 says Connection: upgrade
            fields.append((b"connection", b"close"))
        self._writer = BodyWriter(chunked)
        self.started = True
        self._out.append(response_head(status, reason(status), fields))

    async def write(self, data: bytes) -> None:
        """Write a piece of the response body."""
        assert self._writer is not None, "start() first"
        if data and self.head.method != b"HEAD":
            if self.upgrade:
                self.connection.active = self.connection.loop.time()
            self._out.append(self._writer.data(data))
            self._out_bytes += len(data)
            if self._out_bytes >= FLUSH_AT:
                self.flush()
                await self.connection.drain()

    async def end(self, trailers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """End the response (with ``trailers`` when chunked)."""
        assert self._writer is not None, "start() first"
        if self.head.method != b"HEAD":
            self._out.append(self._writer.end(trailers))
        self.ended = True
        self.flush()

    def flush(self) -> None:
        """Put what was written so far on the wire (one write: one TLS record, one syscall)."""
        if self._out:
            self.connection.write(b"".join(self._out))
            self._out.clear()
            self._out_bytes = 0

    def send_now(self, data: bytes) -> None:
        """Put ``data`` (a tunnel's own bytes, unframed) on the wire now, after what was
        written before it: what a relay says as it is cancelled."""
        self._out.append(data)
        self.flush()

    async def respond(
        self, status: int, fields: Iterable[tuple[bytes, bytes]] = (), body: bytes = b""
    ) -> None:
        """A whole response at once: one Shoal makes itself (named ``server: shoal``)."""
        await self.start(
            status, [*fields, (b"server", SERVER), (b"content-length", b"%d" % len(body))]
        )
        await self.write(body)
        await self.end()

    async def refuse(self, refusal: Refusal, fields: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Answer with ``refusal`` (its status, ``x-shoal-cause`` and text), plus ``fields``."""
        head = [*refusal.headers, (b"content-type", b"text/plain; charset=utf-8"), *fields]
        await self.respond(refusal.status, head, refusal.body())


class Answering(Protocol):
    """What :func:`run_handler` needs of an exchange (HTTP/1.1's or an HTTP/2 stream's)."""

    head: RequestHead
    started: bool
    ended: bool

    async def respond(
        self, status: int, fields: Iterable[tuple[bytes, bytes]] = (), body: bytes = b""
    ) -> None: ...


E = TypeVar("E", bound=Answering)


async def run_handler(
    handler: Callable[[E], Awaitable[None]], exchange: E, cut: Callable[[bool], None]
) -> None:
    """Run ``handler`` on ``exchange``: a 500 if it answered nothing (or failed first); ``cut``
    (whether it was cancelled) when its answer was begun and cannot end as a whole one."""
    try:
        await handler(exchange)
        if not exchange.started:
            await exchange.respond(500, [(b"x-shoal-cause", b"internal")], b"no response\n")
        elif not exchange.ended:
            cut(False)
    except asyncio.CancelledError:
        cut(True)
        raise
    except Exception:
        log.exception("handler failed on %s", exchange.head.target[:200])
        if not exchange.started:
            await exchange.respond(500, [(b"x-shoal-cause", b"internal")], b"internal\n")
        else:
            cut(False)


class _Connection(WriteFlow):
    """One client connection: parse, run handlers one at a time, write their responses."""

    def __init__(self, server: Server) -> None:
        self.server = server
        self.reader = Reader("request", server.limits)
        self.transport: asyncio.Transport | None = None
        self.queue: collections.deque[Exchange] = collections.deque()  # received, not yet run
        self.current: Exchange | None = None  # whose body the reader is reading
        self.task: asyncio.Task[None] | None = None
        self._paused = False
        self.idle_since: float | None = None  # between requests: since when
        self.memo: dict[str, Any] = {}  # what a handler keeps per connection (a peer identity)
        self.head_timer: asyncio.TimerHandle | None = None  # a head begun, not yet complete
        self.tunnel: Exchange | None = None  # switched to WebSocket: bytes go to it as they come
        self.active = 0.0  # a tunnel's last byte either way (its idle timeout counts from it)
        # The loop, asked once: on Python 3.11 every get_running_loop() is a getpid() syscall.
        self.loop = asyncio.get_running_loop()
        self.closed = self.loop.create_future()

    def extra(self, name: str) -> Any:
        return self.transport.get_extra_info(name) if self.transport else None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but it is one in all
        # but name: check nothing, cast.
        self.transport = cast(asyncio.Transport, transport)
        admit = self.server.admit
        if admit is not None and not admit(self.transport):
            self.transport.abort()  # not served: closed before a byte is read
            return
        self.server.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self.transport = None
        self._stop_head_timer()
        if not self.closed.done():
            self.closed.set_result(None)
        if self.task is not None:
            self.task.cancel()  # the client went away: release what its request holds
        self.release_writers()

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.active = self.loop.time()
            self.tunnel._received(data)
            return
        try:
            events = self.reader.feed(data)
        except ProtocolError as e:
            self._refuse(e)
            return
        for event in events:
            if isinstance(event, RequestHead):
                exchange = Exchange(self, event)
                self.current = exchange
                self.queue.append(exchange)
            elif isinstance(event, Data) and self.current is not None:
                self.current._received(event.data)
            elif isinstance(event, End) and self.current is not None:
                self.current._received(None)
            elif isinstance(event, Upgraded) and self.current is not None:
                if websocket_upgrade(self.current.head.fields):
                    self.active = self.loop.time()
                    self.current._tunnel(event.rest)
                elif self._switch_to_h2c(self.current, event.rest):
                    return
                else:  # another protocol (CONNECT): served as a plain request, then closed
                    self.current.close_after = True
        self._watch_head()
        self._next()

    def _switch_to_h2c(self, exchange: Exchange, rest: bytes) -> bool:
        """Hand the connection to the server's HTTP/2 side if ``exchange`` asks for h2c and it
        can be: its server takes h2c, nothing else is pending, and it has no body (RFC 7540
        §3.2: a body would have to be read first). Otherwise it is served as HTTP/1.1."""
        switch = self.server.h2c
        if (
            switch is None
            or self.transport is None
            or self.task is not None
            or list(self.queue) != [exchange]
            or exchange.head.framing is not Framing.NONE
            or not h2c_upgrade(exchange.head.fields)
        ):
            return False
        transport, self.transport = self.transport, None
        self.server.connections.discard(self)
        self.queue.clear()
        self.current = None
        self._stop_head_timer()
        transport.write(SWITCHING_TO_H2C)
        switch(transport, rest, exchange.head).add_done_callback(self._h2c_closed)
        return True

    def _h2c_closed(self, _: object) -> None:
        if not self.closed.done():
            self.closed.set_result(None)

    def _watch_head(self) -> None:
        """Bound the time from a head's first byte to its end (``header_timeout``)."""
        timeout = self.server.header_timeout
        if timeout is None:
            return
        if not self.reader.in_head:
            self._stop_head_timer()
        elif self.head_timer is None:
            self.head_timer = self.loop.call_later(timeout, self._head_late)

    def _stop_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_late(self) -> None:
        self.head_timer = None
        if self.reader.in_head:
            self._refuse(ProtocolError(408, REQUEST_TIMEOUT, "request head not received in time"))

    def eof_received(self) -> bool:
        # A client that stops sending has gone away (nginx's proxy_ignore_client_abort off):
        # closing cancels what its request holds upstream.
        return False

    def _next(self) -> None:
        """Start the next request's handler when none is running."""
        if self.task is not None or not self.queue or self.server.closing:
            return
        self.idle_since = None
        exchange = self.queue.popleft()
        self.task = self.loop.create_task(self._run(exchange))

    async def _run(self, exchange: Exchange) -> None:
        def cut(cancelled: bool) -> None:
            exchange.close_after = True  # the client must not take it for a whole answer

        try:
            await run_handler(self.server.handler, exchange, cut)
        finally:
            self.task = None
            self._finished(exchange)

    def _finished(self, exchange: Exchange) -> None:
        if self.transport is None:
            return
        if exchange.close_after or not exchange.ended:
            self.transport.close()
            return
        if self.current is exchange and not exchange._complete:
            self.transport.close()  # the handler left part of the body unread
            return
        self.resume()
        self.idle_since = self.loop.time()
        self._next()

    def _refuse(self, error: ProtocolError) -> None:
        body = f"{error.cause}: {error}\n".encode()
        fields: Fields = (
            (b"x-shoal-cause", error.cause.encode()),
            (b"server", SERVER),
            (b"content-length", b"%d" % len(body)),
            (b"connection", b"close"),
        )
        if self.transport is not None:
            if self.task is None:  # not in the middle of another response
                self.transport.write(response_head(error.status, reason(error.status), fields))
                self.transport.write(body)
            self.transport.close()

    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    async def drain(self) -> None:
        await self.writable()
        if self.transport is None:
            raise ConnectionResetError("the client went away")

    def pause(self) -> None:
        if not self._paused and self.transport is not None:
            self.transport.pause_reading()
            self._paused = True

    def consumed(self, buffered: int) -> None:
        if buffered < LOW_WATER:
            self.resume()

    def resume(self) -> None:
        if self._paused and self.transport is not None:
            self.transport.resume_reading()
            self._paused = False


class Tunnel(Protocol):
    """A WebSocket a server watches on another server's connection (an HTTP/2 stream at the
    edge, :mod:`shoal.gateway.h2_stream`): closed like its own (:meth:`Server.watch`)."""

    active: float  # its last byte either way
    task: asyncio.Task[None] | None  # cancelled to close it: its relay says "going away"


class Server:
    """A protocol factory serving ``handler`` (give it to ``loop.create_server`` or a listener)."""

    def __init__(
        self,
        handler: Handler,
        *,
        limits: HeadLimits = HeadLimits(),
        idle_timeout: float = 60.0,
        tunnel_idle_timeout: float = 300.0,
        header_timeout: float | None = None,
        admit: Callable[[asyncio.Transport], bool] | None = None,
        h2c: H2cUpgrade | None = None,
    ) -> None:
        self.handler = handler
        self.h2c = h2c  # takes connections that ask to switch to h2c (None: served as 1.1)
        self.admit = admit  # whether to serve a new connection at all (None: every one)
        self.limits = limits
        self.idle_timeout = idle_timeout
        self.tunnel_idle_timeout = tunnel_idle_timeout  # a WebSocket with no byte either way
        self.header_timeout = header_timeout  # a head's first byte to its end, else 408
        self.connections: set[_Connection] = set()
        self.tunnels: set[Tunnel] = set()  # WebSockets on other servers' connections
        self.closing = False
        self._sweep: asyncio.TimerHandle | None = None

    def add(self, connection: _Connection) -> None:
        """A new connection: idle until its first request; the sweep watches it."""
        loop = asyncio.get_running_loop()
        connection.idle_since = loop.time()
        self.connections.add(connection)
        self._start_sweep(loop)

    def watch(self, tunnel: Tunnel) -> None:
        """Close ``tunnel`` as this server's own WebSockets: after ``tunnel_idle_timeout``
        without a byte, and when the server closes (until it is :meth:`unwatch`-ed)."""
        self.tunnels.add(tunnel)
        self._start_sweep(asyncio.get_running_loop())

    def unwatch(self, tunnel: Tunnel) -> None:
        self.tunnels.discard(tunnel)

    def _start_sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._sweep is None:
            self._sweep = loop.call_later(self._sweep_every, self._close_idle)

    def _close_idle(self) -> None:
        """Close connections idle longer than ``idle_timeout`` and WebSockets quiet longer than
        ``tunnel_idle_timeout`` (one timer per server, not one per request); runs every
        quarter of the shorter while connections exist."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        limit, tunnel_limit = now - self.idle_timeout, now - self.tunnel_idle_timeout
        for connection in list(self.connections):
            if connection.transport is None:
                continue
            if connection.tunnel is not None:
                if connection.active < tunnel_limit and connection.task is not None:
                    connection.task.cancel()  # its relay says "going away", then it closes
            elif (since := connection.idle_since) is not None and since < limit:
                connection.transport.close()
        for tunnel in self.tunnels:
            if tunnel.active < tunnel_limit and tunnel.task is not None:
                tunnel.task.cancel()
        self._sweep = (
            loop.call_later(self._sweep_every, self._close_idle)
            if self.connections or self.tunnels
            else None
        )

    @property
    def _sweep_every(self) -> float:
        return min(self.idle_timeout, self.tunnel_idle_timeout) / 4

    def __call__(self) -> _Connection:
        return _Connection(self)

    def adopt(self, transport: asyncio.BaseTransport, received: bytes) -> asyncio.Future[None]:
        """Serve a connection another server accepted (``received``: the bytes it already
        read from it); the future is done once it has closed."""
        connection = _Connection(self)
        transport.set_protocol(connection)
        connection.connection_made(transport)
        if received:
            connection.data_received(received)
        return connection.closed

    async def close(self, grace: float) -> None:
        """Take no new request; let those running finish for ``grace`` seconds; close all."""
        self.closing = True
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in list(self.connections):
            if connection.task is None and connection.transport is not None:
                connection.transport.close()
            elif connection.tunnel is not None and connection.task is not None:
                connection.task.cancel()  # a WebSocket never ends by itself: "going away"
        for tunnel in self.tunnels:
            if tunnel.task is not None:
                tunnel.task.cancel()
        tasks = [c.task for c in self.connections] + [t.task for t in self.tunnels]
        await finish([task for task in tasks if task is not None], grace)
        for connection in list(self.connections):
            if connection.transport is not None:
                connection.transport.close()
