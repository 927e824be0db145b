"""Pooled HTTP/1.1 connections to upstreams, on asyncio Protocols and the sans-IO codec.

What a proxy sends is what it was given: the target as bytes, the header values as received,
the body in the framing it arrived in (a known length stays a ``Content-Length``; a body of
unknown length goes chunked), and what comes back is relayed as it arrives, trailers included
(:mod:`shoal.http.h1` parses and frames). Informational responses (``100 Continue``) are
absorbed: the body is streamed without waiting for them.

One :class:`Upstreams` pool per proxy process keeps idle connections per authority and TLS
context (a renewed certificate is used by new connections only) for :data:`IDLE_TIMEOUT`
seconds. A reused connection that the upstream had closed just before the request went out
is replaced by a fresh one once, when the request can be sent again (no body, or a body held
in memory). Reading from an upstream pauses while the caller has more than
:data:`HIGH_WATER` bytes of its body unread, so a slow client never makes a proxy buffer a
whole response.

Every failure is an :class:`UpstreamError` carrying the ``x-shoal-cause`` and status the proxy
answers with, and whether any byte of the request may have reached the upstream.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field

from shoal.errors import ShoalError
from shoal.http.h1 import (
    BodyWriter,
    Data,
    End,
    Event,
    ProtocolError,
    Reader,
    ResponseHead,
    Upgraded,
    request_head,
)
from shoal.http.headers import Headers

UNSENT = "x-shoal-unsent"
"""Set by a node router on a refusal made before any byte reached an instance."""

IDLE_TIMEOUT = 30.0  # seconds an idle pooled connection is kept
HIGH_WATER = 256 * 1024  # unread response bytes above which reading pauses
LOW_WATER = 64 * 1024  # ... and below which it resumes

_FRAMING = (b"content-length", b"transfer-encoding")


class UpstreamError(ShoalError):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, status: int, cause: str, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.status = status
        self.cause = cause
        self.sent = sent  # whether any byte of the request may have reached the upstream


class _Lost(Exception):
    """The connection ended before a complete response arrived."""


def _split(authority: str) -> tuple[str, int]:
    host, _, port = authority.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(eq=False)
class _Exchange:
    """One request on one connection: the response head, then its body as it arrives."""

    connection: _Connection
    head: asyncio.Future[ResponseHead]
    pieces: collections.deque[bytes] = field(default_factory=collections.deque)
    buffered: int = 0
    trailers: Headers = field(default_factory=list)
    finished: bool = False  # the whole response arrived
    error: BaseException | None = None
    received: bool = False  # any byte of a response arrived
    body_sent: bool = True  # the whole request went out
    waiter: asyncio.Future[None] | None = None
    sender: asyncio.Task[None] | None = None

    def wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def fail(self, error: BaseException) -> None:
        if self.finished or self.error is not None:
            return
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
        self.wake()


class _Connection(asyncio.Protocol):
    """One upstream connection; at most one exchange at a time."""

    def __init__(self, pool: Upstreams, key: tuple[str, ssl.SSLContext | None]) -> None:
        self.pool = pool
        self.key = key
        self.reader = Reader("response")
        self.transport: asyncio.Transport | None = None
        self.exchange: _Exchange | None = None
        self.idle_since = 0.0
        self.open = True
        self.reading_paused = False
        self._drained: asyncio.Future[None] | None = None

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # nothing was asked: a broken upstream
            self.close()
            return
        exchange.received = True
        try:
            events = self.reader.feed(data)
        except ProtocolError as e:
            exchange.fail(UpstreamError(502, "upstream_reset", f"bad response: {e}", sent=True))
            self.close()
            return
        self._on_events(exchange, events)

    def eof_received(self) -> bool:
        exchange = self.exchange
        if exchange is not None:
            try:
                events = self.reader.eof()
            except ProtocolError:
                events = []
            self._on_events(exchange, events)
        return False  # close the transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.open = False
        self.pool._forget(self)
        if self.exchange is not None:
            self.exchange.fail(_Lost(str(exc) if exc else "connection closed"))
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None

    # -- the exchange

    def _on_events(self, exchange: _Exchange, events: Iterable[Event]) -> None:
        for event in events:
            if isinstance(event, Data):
                exchange.pieces.append(event.data)
                exchange.buffered += len(event.data)
                if exchange.buffered > HIGH_WATER and self.transport and not self.reading_paused:
                    self.transport.pause_reading()
                    self.reading_paused = True
            elif isinstance(event, ResponseHead):
                if event.informational:
                    continue  # the body is streamed anyway: a 100 Continue changes nothing
                if not event.keep_alive or event.status == 101:
                    self.open = False  # used up by this exchange
                if not exchange.head.done():
                    exchange.head.set_result(event)
            elif isinstance(event, End):
                if exchange.head.done() and not exchange.head.exception():
                    exchange.trailers = list(event.trailers)
                    exchange.finished = True
                    self._release(exchange)
            elif isinstance(event, Upgraded):  # protocol switches are not relayed (yet)
                self.open = False
        exchange.wake()

    def _release(self, exchange: _Exchange) -> None:
        """The response is complete: the connection goes back to the pool if it can."""
        self.exchange = None
        if self.open and exchange.body_sent and self.transport is not None:
            self.pool._park(self)
        else:
            self.close()

    def consumed(self, exchange: _Exchange, size: int) -> None:
        """The caller took ``size`` bytes: resume reading below the low-water mark."""
        exchange.buffered -= size
        if self.reading_paused and exchange.buffered < LOW_WATER and self.transport:
            self.transport.resume_reading()
            self.reading_paused = False

    async def drain(self) -> None:
        """Wait while the transport's write buffer is full."""
        if self._drained is not None:
            await self._drained

    def close(self) -> None:
        """Drop the connection now (what is in flight on it is lost)."""
        self.open = False
        if self.transport is not None:
            self.transport.abort()


@dataclass(slots=True)
class UpstreamResponse:
    """A response whose body is still to be read from :meth:`chunks`."""

    status: int
    headers: Headers
    _exchange: _Exchange
    _deadline: float | None = None

    @property
    def buffered(self) -> int:
        """Bytes of the body received and not yet taken by the caller."""
        return self._exchange.buffered

    @property
    def trailers(self) -> Headers:
        """The trailer fields of a chunked response (once :meth:`chunks` has ended)."""
        return self._exchange.trailers

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; upstream failures mid-body raise :class:`UpstreamError`."""
        exchange = self._exchange
        loop = asyncio.get_running_loop()
        while True:
            if exchange.pieces:
                piece = exchange.pieces.popleft()
                exchange.connection.consumed(exchange, len(piece))
                yield piece
                continue
            if exchange.finished:
                return
            if exchange.error is not None:
                raise UpstreamError(
                    502, "upstream_reset", f"upstream body: {exchange.error}", sent=True
                )
            exchange.waiter = loop.create_future()
            try:
                # Only the wait is under the deadline: never a yield (the caller's own awaits).
                async with asyncio.timeout_at(self._deadline):
                    await exchange.waiter
            except TimeoutError:
                self.close()
                raise UpstreamError(
                    502, "upstream_reset", "upstream body timed out", sent=True
                ) from None
            finally:
                exchange.waiter = None

    def close(self) -> None:
        """Drop the connection (the body was not read to the end)."""
        exchange = self._exchange
        if not exchange.finished:
            exchange.connection.close()
        if exchange.sender is not None:
            exchange.sender.cancel()


class Upstreams:
    """One keep-alive pool for all upstream connections of a proxy process."""

    def __init__(self, *, connect_timeout: float = 3.0) -> None:
        self._connect_timeout = connect_timeout
        self._idle: dict[tuple[str, ssl.SSLContext | None], list[_Connection]] = {}
        self._all: set[_Connection] = set()

    def _park(self, connection: _Connection) -> None:
        connection.idle_since = asyncio.get_running_loop().time()
        self._idle.setdefault(connection.key, []).append(connection)

    def _forget(self, connection: _Connection) -> None:
        self._all.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    async def _connect(self, key: tuple[str, ssl.SSLContext | None]) -> tuple[_Connection, bool]:
        """An idle connection for ``key`` (reused: True), else a new one."""
        loop = asyncio.get_running_loop()
        idle = self._idle.get(key)
        while idle:
            connection = idle.pop()
            if connection.open and loop.time() - connection.idle_since < IDLE_TIMEOUT:
                return connection, True
            connection.close()
        authority, tls = key
        host, port = _split(authority)
        try:
            async with asyncio.timeout(self._connect_timeout):
                _, protocol = await loop.create_connection(
                    lambda: _Connection(self, key), host, port, ssl=tls
                )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise UpstreamError(
                503, "upstream_connect_error", f"{authority}: {e!r}", sent=False
            ) from None
        self._all.add(protocol)
        return protocol, False

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
        tls: ssl.SSLContext | None = None,
    ) -> UpstreamResponse:
        """Send one request to ``authority`` (``host:port``), over ``tls`` when given; return
        once the response head has arrived.

        ``head_timeout`` bounds the wait for the response head; ``total_timeout`` the whole
        exchange, body included.
        """
        loop = asyncio.get_running_loop()
        deadline = None if total_timeout is None else loop.time() + total_timeout
        fields = [(n, v) for n, v in headers if n not in _FRAMING]
        if not any(n == b"host" for n, _ in fields):
            fields.insert(0, (b"host", authority.encode()))
        chunked = False
        if isinstance(body, bytes):
            fields.append((b"content-length", b"%d" % len(body)))
        elif body is not None:
            length = next((v for n, v in headers if n == b"content-length"), None)
            chunked = length is None
            fields.append(
                (b"content-length", length) if length else (b"transfer-encoding", b"chunked")
            )
        head = request_head(method.encode(), target.encode("latin-1"), fields)
        replayable = not isinstance(body, AsyncIterator)
        for attempt in (1, 2):
            connection, reused = await self._connect((authority, tls))
            exchange = self._start(connection, method, head, body, chunked)
            try:
                async with asyncio.timeout_at(_earliest(loop, head_timeout, deadline)):
                    response_head = await exchange.head
            except TimeoutError:
                self._abandon(exchange)
                raise UpstreamError(
                    504, "upstream_timeout", f"{authority} timed out", sent=True
                ) from None
            except _Lost as e:
                self._abandon(exchange)
                if reused and not exchange.received and replayable and attempt == 1:
                    continue  # the upstream closed an idle connection as the request left
                raise UpstreamError(502, "upstream_reset", f"{authority}: {e}", sent=True) from None
            except BaseException:  # also the caller's body failing (e.g. refused at the edge)
                self._abandon(exchange)
                raise
            response = UpstreamResponse(
                status=response_head.status,
                headers=list(response_head.fields),
                _exchange=exchange,
                _deadline=deadline,
            )
            if tls is not None and response_head.get(UNSENT.encode()) is not None:
                # A node router refused before any byte reached an instance: safe to retry.
                cause = (response_head.get(b"x-shoal-cause") or b"upstream_connect_error").decode()
                response.close()
                raise UpstreamError(response.status, cause, f"{authority}: {cause}", sent=False)
            return response
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _start(
        self,
        connection: _Connection,
        method: str,
        head: bytes,
        body: AsyncIterator[bytes] | bytes | None,
        chunked: bool,
    ) -> _Exchange:
        """Put the request on ``connection``: the head (and a body in memory) at once, a
        streamed body by a task the exchange owns."""
        loop = asyncio.get_running_loop()
        exchange = _Exchange(connection=connection, head=loop.create_future())
        connection.exchange = exchange
        if method == "HEAD":
            connection.reader.expect_head()
        assert connection.transport is not None
        if isinstance(body, bytes) or body is None:
            connection.transport.write(head + (body or b""))
        else:
            exchange.body_sent = False
            connection.transport.write(head)
            exchange.sender = loop.create_task(self._send_body(exchange, body, chunked))
        return exchange

    async def _send_body(
        self, exchange: _Exchange, body: AsyncIterator[bytes], chunked: bool
    ) -> None:
        """Stream ``body``; a failure of the caller's body ends the exchange with it."""
        connection, writer = exchange.connection, BodyWriter(chunked)
        try:
            async for piece in body:
                if not connection.open or connection.transport is None:
                    return
                connection.transport.write(writer.data(piece))
                await connection.drain()
            if connection.transport is not None:
                connection.transport.write(writer.end())
            exchange.body_sent = True
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            exchange.fail(e)
            connection.close()

    def _abandon(self, exchange: _Exchange) -> None:
        exchange.connection.close()
        if exchange.sender is not None:
            exchange.sender.cancel()

    async def close(self) -> None:
        """Close every connection."""
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()


def _earliest(
    loop: asyncio.AbstractEventLoop, timeout: float | None, deadline: float | None
) -> float | None:
    """The earlier of ``now + timeout`` and ``deadline`` (None: no limit)."""
    if timeout is None:
        return deadline
    return loop.time() + timeout if deadline is None else min(deadline, loop.time() + timeout)
