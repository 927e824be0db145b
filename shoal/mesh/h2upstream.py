"""Pooled HTTP/2 connections (h2c) to instances that speak it: ``protocol: h2c`` or ``grpc``.

A node router reaches such an instance over cleartext HTTP/2 on loopback, one multiplexed
connection per instance (more only when one is at its ``MAX_CONCURRENT_STREAMS``), a stream per
request. What comes back is relayed as it arrives — the head, each DATA frame, the trailers
(gRPC's ``grpc-status`` travels in them) — as the HTTP/1.1 pool's
:class:`~shoal.mesh.upstream.UpstreamResponse` (a stream is its body), so the router relays
either alike. The request
body streams while the response does (gRPC's bidirectional streams), within the stream's flow
control window; a response body is acknowledged (its window reopened) only as the caller takes
it, so a slow client never makes the router buffer a whole stream. A caller that gives up resets
its stream (``RST_STREAM CANCEL``): the instance sees the cancellation.

Hop-by-hop header fields are not HTTP/2's: they are dropped, ``host`` becomes ``:authority``, and
``te: trailers`` is always sent (gRPC servers require it).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import cast

import h2.config
import h2.connection
import h2.errors
import h2.events
import h2.exceptions

from shoal.http.h2_encoding import without_huffman
from shoal.http.headers import HOP_BY_HOP, Headers, end_to_end
from shoal.http.refusal import UPSTREAM_CONNECT_ERROR, UPSTREAM_RESET, UPSTREAM_TIMEOUT
from shoal.mesh.upstream import UpstreamResponse
from shoal.mesh.upstream_connection import UpstreamError, earliest

__all__ = ["H2Upstreams"]

_NOT_HOST = HOP_BY_HOP | {b"host"}  # sent as :authority


@dataclass(eq=False)
class _Stream:
    """One request's stream: the response head, then its body as it arrives (a ``Body``)."""

    connection: H2Connection
    id: int
    head: asyncio.Future[tuple[int, Headers]]
    loop: asyncio.AbstractEventLoop
    pieces: collections.deque[bytes] = field(default_factory=collections.deque)
    buffered: int = 0
    trailers: Headers = field(default_factory=list)
    finished: bool = False
    error: BaseException | None = None
    waiter: asyncio.Future[None] | None = None
    sender: asyncio.Task[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fail(self, why: str) -> None:
        if self.finished or self.error is not None:
            return
        self.error = ConnectionError(why)
        if not self.head.done():
            self.head.set_exception(self.error)
        self.wake()

    def late(self) -> None:
        if not self.head.done():
            self.head.set_exception(TimeoutError())

    def consumed(self, size: int) -> None:
        """The caller took ``size`` bytes: reopen the flow-control window for them."""
        self.buffered -= size
        self.connection.acknowledge(self, size)

    def abandon(self) -> None:
        """The caller gives up: reset the stream (the instance sees the cancellation)."""
        if not self.finished:
            self.connection.reset(self)


class H2Connection(asyncio.Protocol):
    """One HTTP/2 connection to an instance, driven by the ``h2`` state machine."""

    def __init__(self, pool: H2Upstreams, authority: str) -> None:
        self.pool = pool
        self.authority = authority
        self.h2 = without_huffman(
            h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding=None)
            )
        )
        self.transport: asyncio.Transport | None = None
        self.streams: dict[int, _Stream] = {}
        self.closing = False  # GOAWAY received or the connection is gone: no new streams
        self._window = asyncio.Event()  # set whenever the peer opens a flow-control window

    @property
    def available(self) -> bool:
        """Whether a new stream may start on it."""
        limit = self.h2.remote_settings.max_concurrent_streams
        return not self.closing and self.h2.open_outbound_streams < limit

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but are one in all but name.
        self.transport = cast(asyncio.Transport, transport)
        self.h2.initiate_connection()
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.transport = None
        for stream in list(self.streams.values()):
            stream.fail(f"connection to {self.authority} lost")
        self.streams.clear()
        self._window.set()
        self.pool.forget(self)

    def data_received(self, data: bytes) -> None:
        try:
            events = self.h2.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self._flush()
            self.close(f"HTTP/2 protocol error from {self.authority}: {e}")
            return
        for event in events:
            self._on(event)
        self._flush()

    def _on(self, event: h2.events.Event) -> None:
        sid = getattr(event, "stream_id", 0)
        stream = self.streams.get(sid)
        if isinstance(event, h2.events.ResponseReceived) and stream is not None:
            fields = [(bytes(n), bytes(v)) for n, v in event.headers]
            status = next((int(v) for n, v in fields if n == b":status"), 502)
            if not stream.head.done():
                stream.head.set_result((status, [(n, v) for n, v in fields if n[:1] != b":"]))
        elif isinstance(event, h2.events.DataReceived) and stream is not None:
            if event.flow_controlled_length > len(event.data):  # padding: nobody takes it
                self.acknowledge(stream, event.flow_controlled_length - len(event.data))
            if event.data:
                stream.pieces.append(event.data)
                stream.buffered += len(event.data)
                stream.wake()
        elif isinstance(event, h2.events.TrailersReceived) and stream is not None:
            stream.trailers = [(bytes(n), bytes(v)) for n, v in event.headers]
        elif isinstance(event, h2.events.StreamEnded) and stream is not None:
            stream.finished = True
            self.streams.pop(sid, None)
            stream.wake()
        elif isinstance(event, h2.events.StreamReset) and stream is not None:
            self.streams.pop(sid, None)
            stream.fail(f"{self.authority} reset the stream ({event.error_code!r})")
        elif isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window.set()
        elif isinstance(event, h2.events.ConnectionTerminated):
            self.closing = True
            last = event.last_stream_id or 0
            for gone in [s for s in self.streams.values() if s.id > last]:
                self.streams.pop(gone.id, None)
                gone.fail(f"{self.authority} went away (GOAWAY) before the stream started")

    def _flush(self) -> None:
        data = self.h2.data_to_send()
        if data and self.transport is not None:
            self.transport.write(data)

    def start(self, headers: Headers, end: bool) -> _Stream:
        """Open a stream with ``headers`` (pseudo-headers first)."""
        sid = self.h2.get_next_available_stream_id()
        self.h2.send_headers(sid, headers, end_stream=end)
        self._flush()
        loop = asyncio.get_running_loop()
        stream = _Stream(self, sid, loop.create_future(), loop)
        self.streams[sid] = stream
        return stream

    async def send(self, stream: _Stream, data: bytes, *, end: bool) -> None:
        """Send ``data`` on ``stream`` as the flow-control windows allow; end it if ``end``."""
        while data:
            if stream.finished or stream.error is not None or self.transport is None:
                return
            window = self.h2.local_flow_control_window(stream.id)
            room = min(window, self.h2.max_outbound_frame_size)
            if room <= 0:
                self._window.clear()
                await self._window.wait()
                continue
            self.h2.send_data(stream.id, data[:room])
            data = data[room:]
            self._flush()
        if end and stream.error is None and self.transport is not None:
            self.h2.end_stream(stream.id)
            self._flush()

    def acknowledge(self, stream: _Stream, length: int) -> None:
        """``length`` flow-controlled bytes of ``stream`` are out of the way: reopen the
        window for them."""
        if self.transport is None:
            return
        self.h2.acknowledge_received_data(length, stream.id)
        self._flush()

    def reset(self, stream: _Stream) -> None:
        """Cancel ``stream`` (the caller gave up): the instance sees ``RST_STREAM CANCEL``."""
        self.streams.pop(stream.id, None)
        if stream.sender is not None:
            stream.sender.cancel()
        if self.transport is not None and not stream.finished:
            try:
                self.h2.reset_stream(stream.id, h2.errors.ErrorCodes.CANCEL)
            except h2.exceptions.ProtocolError:  # already closed on its side
                return
            self._flush()

    def close(self, why: str = "closed") -> None:
        """Close the connection, failing its streams."""
        self.closing = True
        for stream in list(self.streams.values()):
            stream.fail(why)
        if self.transport is not None:
            self.transport.close()


class H2Upstreams:
    """The h2c connections of one router to its instances."""

    def __init__(self, *, connect_timeout: float = 3.0) -> None:
        self._connect_timeout = connect_timeout
        self._connections: dict[str, list[H2Connection]] = {}

    def forget(self, connection: H2Connection) -> None:
        """``connection`` closed: drop it."""
        live = self._connections.get(connection.authority)
        if live and connection in live:
            live.remove(connection)

    async def _connection(self, authority: str, deadline: float | None) -> H2Connection:
        for connection in self._connections.get(authority, ()):
            if connection.available:
                return connection
        host, _, port = authority.rpartition(":")
        loop = asyncio.get_running_loop()
        limit = loop.time() + self._connect_timeout
        try:
            async with asyncio.timeout_at(limit if deadline is None else min(limit, deadline)):
                _, connection = await loop.create_connection(
                    lambda: H2Connection(self, authority), host.strip("[]"), int(port)
                )
        except (OSError, TimeoutError) as e:
            raise UpstreamError(
                503, UPSTREAM_CONNECT_ERROR, f"{authority}: {e!r}", sent=False
            ) from None
        self._connections.setdefault(authority, []).append(connection)
        return connection

    async def request(
        self,
        authority: str,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterator[bytes] | bytes | None,
        *,
        head_timeout: float | None = None,
        total_timeout: float | None = None,
    ) -> UpstreamResponse:
        """Send one request to ``authority`` over HTTP/2; return once the response head has
        arrived (``head_timeout`` bounds that wait, ``total_timeout`` the whole exchange)."""
        loop = asyncio.get_running_loop()
        deadline = None if total_timeout is None else loop.time() + total_timeout
        head_deadline = earliest(loop, head_timeout, deadline)
        connection = await self._connection(authority, head_deadline)
        host = next((v for n, v in headers if n == b"host"), authority.encode())
        fields = [
            (b":method", method.encode()),
            (b":scheme", b"http"),
            (b":authority", host),
            (b":path", target.encode("latin-1")),
            *end_to_end(headers, _NOT_HOST),
            (b"te", b"trailers"),
        ]
        try:
            stream = connection.start(fields, end=not body)
        except h2.exceptions.ProtocolError as e:  # the connection went away meanwhile
            why = f"{authority}: {e!r}"
            raise UpstreamError(503, UPSTREAM_CONNECT_ERROR, why, sent=False) from None
        if body:
            pieces = _once(body) if isinstance(body, bytes) else body
            stream.sender = loop.create_task(_stream_body(connection, stream, pieces))
        timer = None if head_deadline is None else loop.call_at(head_deadline, stream.late)
        try:
            status, response_fields = await stream.head
        except TimeoutError:
            connection.reset(stream)
            why = f"{authority} timed out"
            raise UpstreamError(504, UPSTREAM_TIMEOUT, why, sent=True) from None
        except ConnectionError as e:
            connection.reset(stream)
            raise UpstreamError(502, UPSTREAM_RESET, str(e), sent=True) from None
        except BaseException:
            connection.reset(stream)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        return UpstreamResponse(status, response_fields, stream, deadline)

    async def close(self) -> None:
        """Close every connection."""
        for connections in list(self._connections.values()):
            for connection in list(connections):
                connection.close()
        self._connections.clear()


async def _once(body: bytes) -> AsyncIterator[bytes]:
    yield body


async def _stream_body(
    connection: H2Connection, stream: _Stream, body: AsyncIterator[bytes]
) -> None:
    """Send the caller's body as it comes, then end the stream; a failure resets it."""
    try:
        async for piece in body:
            await connection.send(stream, piece, end=False)
        await connection.send(stream, b"", end=True)
    except asyncio.CancelledError:
        raise
    except BaseException as e:  # the caller's body failed (e.g. the client left)
        stream.fail(f"request body: {e!r}")
        connection.reset(stream)
