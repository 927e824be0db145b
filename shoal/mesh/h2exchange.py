"""One HTTP/2 request stream as the handlers see it (:class:`H2Exchange`: the methods of the
HTTP/1.1 server's :class:`~shoal.mesh.h1server.Exchange` that the handlers and
:func:`~shoal.mesh.relay.relay` use), and the answer Shoal gives a stream it refuses
(:func:`refuse_stream`). The connection that frames them is :mod:`shoal.mesh.h2server`'s; see
there for what a stream's request and answer become on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import os
from collections.abc import AsyncIterator, Iterable
from typing import TYPE_CHECKING, Any, Protocol

from shoal.http import grpc
from shoal.http.h1 import Fields, Framing, RequestHead
from shoal.http.headers import HOP_BY_HOP, content_length
from shoal.http.refusal import UPSTREAM_TIMEOUT, Refusal
from shoal.mesh.h1server import SERVER

if TYPE_CHECKING:
    from shoal.mesh.h2server import H2Connection

__all__ = ["H2Exchange", "plain_refusal", "pseudo_headers", "refuse_stream"]

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


class H2Exchange:
    """One request stream and the answer the handler writes to it."""

    close_after = False  # what a handler sets to close an HTTP/1.1 connection: no meaning here

    def __init__(
        self, connection: H2Connection, stream_id: int, head: RequestHead, *, upgrade: bool
    ) -> None:
        self.connection = connection
        self.id = stream_id
        self.head = head
        self.upgrade = upgrade  # a WebSocket: its body is the tunnel's bytes
        # A gRPC call whose client takes trailers: Shoal's own answers to it are gRPC too.
        self.rpc = (b"te", b"trailers") in head.fields and grpc.is_grpc(head.fields)
        self.has_body = head.framing is not Framing.NONE
        self.active = connection.loop.time()  # a tunnel's last byte either way
        self.task: asyncio.Task[None] | None = None
        self.started = self.ended = False
        self._pieces: collections.deque[tuple[bytes, int]] = collections.deque()
        self._complete = not self.has_body  # the client ended its side of the stream
        self._waiter: asyncio.Future[None] | None = None
        self._status: int | None = None  # the answer's head, held until its first byte or end
        self._fields: Fields = ()
        self._goodbye = b""  # what the relay said as it was cancelled, sent once it is over
        self._held = b""  # the last piece written, not yet framed (see write)

    @classmethod
    def opened(
        cls,
        connection: H2Connection,
        stream_id: int,
        headers: list[tuple[bytes, bytes]],
        ended: bool,
        *,
        websocket: bool,
    ) -> H2Exchange:
        """The exchange for a stream the client opened with ``headers`` (``ended``: with no
        body); ``websocket``: an extended CONNECT for a WebSocket is served as one."""
        pseudo = pseudo_headers(headers)
        fields = [(b"host", pseudo.get(b":authority", b""))]
        fields += [(n, v) for n, v in headers if not n.startswith(b":") and n != b"host"]
        upgrade = websocket and pseudo.get(b":protocol") == b"websocket"
        if upgrade:
            fields.append((b"sec-websocket-key", base64.b64encode(os.urandom(16))))
        head = RequestHead(
            method=b"GET" if upgrade else pseudo.get(b":method", b"GET"),
            target=pseudo.get(b":path", b"/"),
            version=b"2",
            fields=tuple(fields),
            framing=Framing.NONE if ended else Framing.CHUNKED,
            content_length=content_length(fields),
            keep_alive=True,
        )
        return cls(connection, stream_id, head, upgrade=upgrade)

    # -- the request

    @property
    def peer(self) -> Any:
        """The client's address."""
        return self.connection.extra("peername")

    @property
    def ssl_object(self) -> Any:
        """The TLS session, on a TLS connection."""
        return self.connection.extra("ssl_object")

    @property
    def scheme(self) -> str:
        return "http" if self.ssl_object is None else "https"

    @property
    def memo(self) -> dict[str, Any]:
        """What the handler keeps per connection."""
        return self.connection.memo

    async def body(self) -> AsyncIterator[bytes]:
        """The request body (a tunnel's client side) as it arrives; each piece's flow-control
        credit is given back once it is taken."""
        if self.head.expects_continue and not self._complete and not self.started:
            self.connection.informational(self.id, 100)
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
            self.active = self.connection.loop.time()
            self._pieces.append((piece, credit))
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)

    # -- the answer

    async def start(self, status: int, fields: Iterable[tuple[bytes, bytes]]) -> None:
        """The answer's head (sent with its first byte of body, or alone ending the stream); a
        WebSocket's ``101`` as ``200`` (the tunnel is open)."""
        left_out = _WEBSOCKET_LEFT_OUT if self.upgrade else HOP_BY_HOP
        self._fields = tuple((n, v) for n, v in fields if n not in left_out)
        self._status = 200 if self.upgrade and status == 101 else status
        self.started = True

    def _send_head(self, end: bool = False) -> None:
        if self._status is not None:
            head = [(b":status", b"%d" % self._status), *self._fields]
            self._status = None
            self.connection.send_headers(self.id, head, end)

    async def write(self, data: bytes) -> None:
        """A piece of the body, sent within the client's flow-control windows. The last piece
        that fits them is held back until the next one, a flush or the end (which it then
        carries: no empty DATA frame just to say END_STREAM)."""
        if not data:
            return
        if self.upgrade:
            self.active = self.connection.loop.time()
        self._send_head()
        if self._held:
            held, self._held = self._held, b""
            await self.connection.send_data(self.id, held)
        if len(data) <= self.connection.room(self.id):
            self._held = data  # (checked after the last await: it still fits at a flush)
        else:
            await self.connection.send_data(self.id, data)

    async def end(self, trailers: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """End the answer: with ``trailers`` when there are any (a gRPC answer always has)."""
        sent = [(n, v) for n, v in trailers if n not in HOP_BY_HOP]
        if not sent and grpc.awaits_trailers(self._fields):
            sent = grpc.UNKNOWN_WITHOUT_TRAILERS
        self.ended = True
        held, self._held = self._held, b""
        connection = self.connection
        try:
            if self._status is not None and not sent and not held:
                self._send_head(end=True)  # no body, no trailers: one HEADERS frame
            elif held and not sent and len(held) <= connection.room(self.id):
                self._send_head()
                connection.send_frame(self.id, held, end=True)
            else:
                self._send_head()
                if held:
                    await connection.send_data(self.id, held)
                if sent:
                    connection.send_headers(self.id, sent, True)
                else:
                    connection.end_stream(self.id)
        except ConnectionError:
            return  # the client reset the stream or went away: nothing more to say
        connection.flush()

    def flush(self) -> None:
        """Put what was written so far on the wire (the head too, even before any body)."""
        self._send_head()
        try:
            if self._held and len(self._held) <= self.connection.room(self.id):
                held, self._held = self._held, b""
                self.connection.send_frame(self.id, held)
        except ConnectionError:
            pass  # the stream is gone: the next write says so
        self.connection.flush()

    def send_now(self, data: bytes) -> None:
        """The relay's last word (a tunnel's close frame) as it is cancelled: sent once it is
        over."""
        self._goodbye += data

    async def respond(
        self, status: int, fields: Iterable[tuple[bytes, bytes]] = (), body: bytes = b""
    ) -> None:
        """A whole answer Shoal makes itself."""
        await self.start(status, [*fields, (b"server", SERVER)])
        await self.write(body)
        await self.end()

    async def refuse(self, refusal: Refusal, fields: Iterable[tuple[bytes, bytes]] = ()) -> None:
        """Answer with ``refusal`` (see :func:`refuse_stream`)."""
        await refuse_stream(self, refusal, fields, rpc=self.rpc)

    async def _say_goodbye(self) -> None:
        """Send what the relay said as it was cancelled (a tunnel's close frame), and end."""
        if self._goodbye and not self.ended:
            try:
                async with asyncio.timeout(GOODBYE_TIMEOUT):
                    await self.write(self._goodbye)
                    await self.end()
            except (TimeoutError, ConnectionError):
                pass


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
    head, body = plain_refusal(refusal, fields)
    await stream.start(refusal.status, head)
    await stream.write(body)
    await stream.end()


def plain_refusal(
    refusal: Refusal, fields: Iterable[tuple[bytes, bytes]] = ()
) -> tuple[list[tuple[bytes, bytes]], bytes]:
    """The head (but ``:status``) and body of ``refusal`` in plain text, with ``fields``."""
    body = refusal.body()
    head = [
        *refusal.headers,
        (b"content-type", b"text/plain; charset=utf-8"),
        *fields,
        (b"server", SERVER),
        (b"content-length", b"%d" % len(body)),
    ]
    return head, body
