"""The edge's HTTP/2 streams served without ASGI: each request stream hypercorn's HTTP/2 protocol
opens is an :class:`H2Stream`, an exchange with the methods of the HTTP/1.1 server's
:class:`~shoal.mesh.h1server.Exchange` that the gateway's handler
(:meth:`~shoal.gateway.app.GatewayApp.serve`) and :func:`~shoal.mesh.relay.relay` use, so a request
is checked and forwarded the same way whichever version it came in, with no ASGI scope, message
dicts or app queue in between (hypercorn's HTTP/2 framing, flow control and priorities stay).

- The request: ``:authority`` as ``host``, ``:path`` as the raw target; its body as DATA arrives,
  each piece's flow-control credit given back once the handler takes it (so a slow upstream holds
  the client back instead of filling the gateway); ``Expect: 100-continue`` answered with 100 when
  the body is first read.
- The answer: head, DATA, then trailers when the upstream sent any (HTTP/2 clients take them;
  ``grpc-status`` travels in them). A gRPC answer with its status in its head (trailers-only)
  goes as a head and trailers, and a gRPC answer that ends without a status ends with UNKNOWN.
  An answer cut short resets the stream: never a truncated body that looks whole.
- A stream the client resets, or a connection that ends, cancels its handler at once (its
  upstream request and in-flight slot are released now).
- A WebSocket (RFC 8441 extended CONNECT, ``:protocol websocket``, which hypercorn's
  SETTINGS_ENABLE_CONNECT_PROTOCOL invites browsers to open on an HTTP/2 connection they already
  have): its DATA carries exactly the bytes an HTTP/1.1 connection carries after ``101`` (RFC
  6455 frames, masked by the client), so nothing is re-framed. The request is forwarded as the
  HTTP/1.1 handshake instances speak: ``GET`` with a fresh ``Sec-WebSocket-Key`` (the HTTP/2 client
  sends none; the ``Upgrade`` fields are added on the way out, as for every WebSocket), its body
  the stream's DATA; the instance's ``101`` goes back as ``200`` without its
  ``Sec-WebSocket-Accept`` (a digest of a key the client never sent); anything else (a refusal,
  403 from a policy) as it is. The gateway's HTTP/1.1 server watches the tunnel like its own
  (idle timeout, drain with a 1001 close frame, then the stream ends).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from typing import TYPE_CHECKING, Any

import h2.exceptions
from hypercorn.protocol.events import (
    Body,
    EndBody,
    Event,
    InformationalResponse,
    Request,
    Response,
    StreamClosed,
    Trailers,
)

from shoal.http import grpc
from shoal.http.h1 import Framing, RequestHead
from shoal.http.headers import HOP_BY_HOP
from shoal.http.refusal import Refusal
from shoal.mesh.h1server import Server, run_handler
from shoal.mesh.h2server import refuse_stream

if TYPE_CHECKING:
    from shoal.gateway.hypercorn_h2 import EdgeH2Protocol

__all__ = ["H2Stream", "Handler", "pseudo_headers", "refused_connect"]

GOODBYE_TIMEOUT = 1.0
"""Seconds the closing frame of a tunnel may wait for the client's flow-control window."""

_WEBSOCKET_LEFT_OUT = HOP_BY_HOP | {b"sec-websocket-accept"}


def pseudo_headers(headers: Iterable[tuple[bytes, bytes]]) -> dict[bytes, bytes]:
    """A request's pseudo-header fields (``:method``, ``:path``…: they come first)."""
    pseudo = {}
    for name, value in headers:
        if not name.startswith(b":"):
            break
        pseudo[name] = value
    return pseudo


def refused_connect(pseudo: dict[bytes, bytes]) -> bool:
    """Whether the request is a CONNECT for anything but a WebSocket (a TCP tunnel, another
    ``:protocol``): the gateway opens none."""
    return pseudo.get(b":method") == b"CONNECT" and pseudo.get(b":protocol") != b"websocket"


Handler = Callable[["H2Stream"], Awaitable[None]]


class H2Stream:
    """One request stream: hypercorn's stream (:meth:`handle`, :attr:`idle`) and the exchange
    the gateway's handler serves."""

    idle = False  # open streams keep their connection
    close_after = False  # what the handler sets to close an HTTP/1.1 connection: no meaning here

    def __init__(
        self,
        protocol: EdgeH2Protocol,
        request: Request,
        pseudo: dict[bytes, bytes],
        ended: bool,
        handler: Handler,
        tunnels: Server,
    ) -> None:
        self.protocol = protocol
        self.id = request.stream_id
        self.handler = handler
        self.tunnels = tunnels  # the HTTP/1.1 server that watches a WebSocket as its own
        headers = request.headers
        fields = [(b"host", pseudo.get(b":authority", b""))]
        fields += [(n, v) for n, v in headers if not n.startswith(b":") and n != b"host"]
        self.upgrade = pseudo.get(b":protocol") == b"websocket"  # its body is the tunnel's bytes
        if self.upgrade:
            fields.append((b"sec-websocket-key", base64.b64encode(os.urandom(16))))
        self.head = RequestHead(
            method=b"GET" if self.upgrade else pseudo.get(b":method", b"GET"),
            target=pseudo.get(b":path", b"/"),
            version=b"2",
            fields=tuple(fields),
            framing=Framing.NONE if ended else Framing.CHUNKED,
            content_length=None,
            keep_alive=True,
        )
        # A gRPC call whose client takes trailers: Shoal's own answers to it are gRPC too.
        self.rpc = (b"te", b"trailers") in fields and grpc.is_grpc(fields)
        self.loop = asyncio.get_running_loop()
        self.active = self.loop.time()  # a tunnel's last byte either way
        self.task: asyncio.Task[None] | None = None
        self.started = self.ended = False
        self._pieces: collections.deque[tuple[bytes, int]] = collections.deque()
        self._complete = ended  # the client ended its side of the stream
        self._waiter: asyncio.Future[None] | None = None
        self._head: list[tuple[bytes, bytes]] = []  # the answer's head
        self._moved: list[tuple[bytes, bytes]] = []  # a trailers-only status, sent as trailers
        self._goodbye = b""  # what the relay said as it was cancelled, sent once it is over
        self._open = True  # hypercorn still has the stream

    # -- hypercorn's side

    async def handle(self, event: Event) -> None:
        if isinstance(event, Request):
            self.task = self.loop.create_task(self._run())
            if self.upgrade:
                self.tunnels.watch(self)
        elif isinstance(event, Body):  # DATA that came in the batch that opened the stream
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
            pass  # the client left, or a tunnel closed (idle, drain): the relay said goodbye
        finally:
            if self.upgrade:
                self.tunnels.unwatch(self)
            await self._close()

    async def _close(self) -> None:
        """End the stream: after a tunnel's goodbye if the relay said one, else reset it if its
        answer did not end; then hypercorn forgets it."""
        if not self._open:
            return
        if self._goodbye:
            try:
                async with asyncio.timeout(GOODBYE_TIMEOUT):
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
        """The request body (a tunnel's client side) as it arrives."""
        if self.head.expects_continue and not self._complete and not self.started:
            await self.protocol.stream_send(
                InformationalResponse(stream_id=self.id, headers=[], status_code=100)
            )
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
        """The answer's head: a WebSocket's ``101`` as ``200`` (the tunnel is open); a
        trailers-only gRPC status is kept for the trailers (hypercorn ends a stream with a frame
        of its own, so it cannot end one on a head)."""
        left_out = _WEBSOCKET_LEFT_OUT if self.upgrade else HOP_BY_HOP
        head = [(n, v) for n, v in fields if n not in left_out]
        if self.upgrade and status == 101:
            status = 200
        elif (split := grpc.trailers_only(head)) is not None:
            head, self._moved = split
        self._head = head
        self.started = True
        await self.protocol.stream_send(
            Response(stream_id=self.id, headers=head, status_code=status)
        )

    async def write(self, data: bytes) -> None:
        if data:
            self.active = self.loop.time()
            await self.protocol.stream_send(Body(stream_id=self.id, data=data))

    async def end(self, trailers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """End the answer, with ``trailers`` when there are any (a gRPC answer always has)."""
        sent = self._moved or [(n, v) for n, v in trailers if n not in HOP_BY_HOP]
        if not sent and grpc.awaits_trailers(self._head):
            sent = grpc.UNKNOWN_WITHOUT_TRAILERS
        self.ended = True
        if sent:
            await self.protocol.stream_send(Trailers(stream_id=self.id, headers=sent))
        else:
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
        await self.start(status, fields)
        await self.write(body)
        await self.end()

    async def refuse(self, refusal: Refusal, fields: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Answer with ``refusal``; to a gRPC call, in gRPC."""
        await refuse_stream(self, refusal, fields, rpc=self.rpc)
