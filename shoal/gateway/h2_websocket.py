"""WebSocket over HTTP/2 at the edge (RFC 8441): an extended CONNECT stream (``:protocol
websocket``, which hypercorn's SETTINGS_ENABLE_CONNECT_PROTOCOL invites browsers to open on an
HTTP/2 connection they already have) is forwarded as the HTTP/1.1 handshake instances speak, then
tunnelled as on HTTP/1.1.

The DATA of such a stream carries exactly the bytes an HTTP/1.1 connection carries after ``101``:
RFC 6455 frames, masked by the client. So nothing is re-framed (hypercorn's own WebSocket stream
would decode every message into ASGI events and encode it again): the stream is served by the
gateway's HTTP/1.1 handler (:meth:`~shoal.gateway.app.GatewayApp.serve_h1`) as a
:class:`WebSocketStream`, an exchange whose request is ``GET`` with a fresh
``Sec-WebSocket-Key`` (the HTTP/2 client sends none; the ``Upgrade`` fields are added on the way
out, as for every WebSocket) and whose body is the stream's DATA, each piece's flow-control credit
given back only once it is taken, so a slow instance holds the client back. The instance's
``101`` goes back as ``200``, its ``Sec-WebSocket-Accept`` (a digest of a key the client never
sent) left out; any other answer (a refusal, 403 from a policy) goes back as it is. The gateway's
HTTP/1.1 server watches the tunnel like its own (idle timeout, drain with 1001 "going away").
"""

from __future__ import annotations

import asyncio
import base64
import collections
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import h2.exceptions
from hypercorn.protocol.events import Body, EndBody, Event, Request, Response, StreamClosed

from shoal.http.h1 import Framing, RequestHead
from shoal.http.headers import HOP_BY_HOP
from shoal.http.refusal import Refusal
from shoal.mesh.h1server import SERVER, Server, run_handler

if TYPE_CHECKING:
    from shoal.gateway.hypercorn_h2 import EdgeH2Protocol

__all__ = ["WebSocketStream", "extended_connect"]

GOODBYE_TIMEOUT = 1.0
"""Seconds the closing frame of a tunnel may wait for the client's flow-control window."""

_LEFT_OUT = HOP_BY_HOP | {b"sec-websocket-accept"}


def extended_connect(headers: Iterable[tuple[bytes, bytes]]) -> bytes | None:
    """The ``:protocol`` of an HTTP/2 CONNECT request (None for another request); ``b""`` for
    a CONNECT without one (a TCP tunnel, which the gateway does not open)."""
    pseudo = {n: v for n, v in headers if n.startswith(b":")}
    if pseudo.get(b":method") != b"CONNECT":
        return None
    return pseudo.get(b":protocol", b"")


Handler = Callable[["WebSocketStream"], Awaitable[None]]


class WebSocketStream:
    """One extended CONNECT stream: hypercorn's stream (:meth:`handle`, :attr:`idle`) and the
    exchange the gateway's handler serves (the methods of
    :class:`~shoal.mesh.h1server.Exchange` it and :func:`~shoal.mesh.relay.relay` use)."""

    idle = False  # a WebSocket keeps its connection open
    upgrade = True  # the request asks for a WebSocket: its body is the tunnel's bytes
    close_after = False  # what the handler sets to close an HTTP/1.1 connection: no meaning here

    def __init__(
        self,
        protocol: EdgeH2Protocol,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        handler: Handler,
        server: Server,
    ) -> None:
        self.protocol = protocol
        self.handler = handler
        self.server = server  # the HTTP/1.1 server that watches the tunnel as its own
        self.id = stream_id
        pseudo = {n: v for n, v in headers if n.startswith(b":")}
        fields = [(b"host", pseudo.get(b":authority", b""))]
        fields += [(n, v) for n, v in headers if not n.startswith(b":") and n != b"host"]
        fields.append((b"sec-websocket-key", base64.b64encode(os.urandom(16))))
        self.head = RequestHead(
            method=b"GET",
            target=pseudo.get(b":path", b"/"),
            version=b"2",
            fields=tuple(fields),
            framing=Framing.NONE,
            content_length=None,
            keep_alive=True,
        )
        self.loop = asyncio.get_running_loop()
        self.active = self.loop.time()
        self.task: asyncio.Task[None] | None = None
        self.started = self.ended = False
        self._pieces: collections.deque[tuple[bytes, int]] = collections.deque()
        self._complete = False  # the client ended its side of the stream
        self._waiter: asyncio.Future[None] | None = None
        self._goodbye = b""  # what the relay said as it was cancelled, sent once it is over
        self._open = True  # hypercorn still has the stream

    # -- hypercorn's side

    async def handle(self, event: Event) -> None:
        if isinstance(event, Request):
            self.task = self.loop.create_task(self._run())
            self.server.watch(self)
        elif isinstance(event, Body):  # DATA that came with the request's HEADERS
            self.received(event.data, 0)  # (hypercorn gives its credit back itself)
        elif isinstance(event, EndBody):
            self._complete = True
            self._wake()
        elif isinstance(event, StreamClosed):  # reset by the client, or the connection ended
            self._open = False
            if self.task is not None and self.task is not asyncio.current_task():
                self.task.cancel()

    def received(self, data: bytes, credit: int) -> None:
        """DATA arrived: ``credit`` is given back to the client once the handler takes it."""
        self.active = self.loop.time()
        self._pieces.append((data, credit))
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    async def _run(self) -> None:
        def cut(cancelled: bool) -> None:
            pass  # an answer that cannot end whole: the stream is reset below

        try:
            await run_handler(self.handler, self, cut)
        except asyncio.CancelledError:
            pass  # closed: idle, drained, or the client gone; the relay said goodbye
        finally:
            self.server.unwatch(self)
            await self._close()

    async def _close(self) -> None:
        """End the stream: after the relay's goodbye if it said one, else reset it if its
        answer did not end; then hypercorn forgets it."""
        if not self._open:
            return
        try:
            async with asyncio.timeout(GOODBYE_TIMEOUT):
                if self._goodbye:
                    await self.protocol.stream_send(Body(stream_id=self.id, data=self._goodbye))
                    await self.end()
        except TimeoutError:
            pass
        if not self.ended:
            await self.protocol.reset(self.id)
        await self.protocol.stream_send(StreamClosed(stream_id=self.id))

    # -- the exchange: the request

    @property
    def peer(self) -> Any:
        return self.protocol.client

    @property
    def scheme(self) -> str:
        return "https" if self.protocol.ssl else "http"

    async def body(self) -> AsyncIterator[bytes]:
        """The client's side of the tunnel, as it arrives."""
        while True:
            if self._pieces:
                piece, credit = self._pieces.popleft()
                if credit and self._open:
                    try:
                        self.protocol.connection.acknowledge_received_data(credit, self.id)
                    except h2.exceptions.ProtocolError:
                        pass  # the stream closed meanwhile
                    await self.protocol.flush()
                yield piece
            elif self._complete:
                return
            else:
                self._waiter = self.loop.create_future()
                try:
                    await self._waiter
                finally:
                    self._waiter = None

    # -- the exchange: the answer

    async def start(self, status: int, fields: Iterable[tuple[bytes, bytes]]) -> None:
        """The answer's head: the instance's ``101`` as ``200`` (the tunnel is open)."""
        head = [(n, v) for n, v in fields if n not in _LEFT_OUT]
        self.started = True
        await self.protocol.stream_send(
            Response(stream_id=self.id, headers=head, status_code=200 if status == 101 else status)
        )

    async def write(self, data: bytes) -> None:
        if data:
            self.active = self.loop.time()
            await self.protocol.stream_send(Body(stream_id=self.id, data=data))

    async def end(self, trailers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        self.ended = True
        await self.protocol.stream_send(EndBody(stream_id=self.id))

    def flush(self) -> None:
        """Each piece goes to hypercorn's sender as it is written."""

    def send_now(self, data: bytes) -> None:
        """The relay's last word (a close frame) as it is cancelled: sent once it is over."""
        self._goodbye += data

    async def respond(
        self, status: int, fields: Iterable[tuple[bytes, bytes]] = (), body: bytes = b""
    ) -> None:
        """A whole answer the gateway makes itself."""
        length = (b"content-length", b"%d" % len(body))
        await self.start(status, [*fields, (b"server", SERVER), length])
        await self.write(body)
        await self.end()

    async def refuse(self, refusal: Refusal, fields: Iterable[tuple[bytes, bytes]] = ()) -> None:
        head = [*refusal.headers, (b"content-type", b"text/plain; charset=utf-8"), *fields]
        await self.respond(refusal.status, head, refusal.body())
