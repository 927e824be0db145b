"""One pooled HTTP/1.1 connection to an upstream, as an asyncio Protocol, and the exchange on it.

:class:`UpstreamConnection` parses what the upstream sends with :class:`shoal.http.h1.Reader`
and hands the events of the current :class:`Exchange` to it: the final response head (a ``1xx``
is absorbed), body pieces, the end with trailers. A complete response gives the connection back
to its pool when it can be reused (the whole request went out, the upstream keeps it alive);
otherwise the connection closes. Reading pauses while the caller has more than
:data:`HIGH_WATER` unread bytes, so a slow client never makes a proxy buffer a whole response.
"""

from __future__ import annotations

import asyncio
import collections
import ssl
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol, cast

from shoal.errors import ShoalError
from shoal.http.h1 import Data, End, Event, ProtocolError, Reader, ResponseHead, Upgraded
from shoal.http.headers import Headers
from shoal.http.refusal import UPSTREAM_RESET
from shoal.mesh.flow import HIGH_WATER, LOW_WATER, WriteFlow
from shoal.resources.model import ConnectionPool

# The authority, the TLS context it is reached with, the SPIFFE ID it must present, the
# destination's connection settings (a DestinationRule's ``connectionPool``; None: the pool's
# defaults) and the TLS server name (None: the authority's host). Destinations with other
# settings get connections of their own.
PoolKey = tuple[str, ssl.SSLContext | None, str | None, ConnectionPool | None, str | None]


class UpstreamError(ShoalError):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, status: int, cause: str, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.status = status
        self.cause = cause
        self.sent = sent  # whether any byte of the request may have reached the upstream


class Lost(Exception):
    """The connection ended before a complete response arrived."""


class Body(Protocol):
    """A response body as it arrives, on an HTTP/1.1 connection (:class:`Exchange`) or an
    HTTP/2 stream: what :class:`~shoal.mesh.upstream.UpstreamResponse` reads."""

    pieces: collections.deque[bytes]
    buffered: int
    trailers: Headers
    finished: bool
    error: BaseException | None
    waiter: asyncio.Future[None] | None

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop its connection runs on."""
        ...

    def consumed(self, size: int) -> None:
        """The caller took ``size`` bytes: the connection may read (or be sent) more."""
        ...

    def abandon(self) -> None:
        """The caller gives up on the rest (the body was not read to the end)."""
        ...


class Pool(Protocol):
    """Where a connection goes when it is idle, and leaves when it closes."""

    def park(self, connection: UpstreamConnection) -> None: ...

    def forget(self, connection: UpstreamConnection) -> None: ...


@dataclass(eq=False)
class Exchange:
    """One request on one connection: the response head, then its body as it arrives."""

    connection: UpstreamConnection
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

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The loop its connection runs on."""
        return self.connection.loop

    def consumed(self, size: int) -> None:
        """The caller took ``size`` bytes of the body."""
        self.connection.consumed(self, size)

    def abandon(self) -> None:
        """Drop the connection unless the response is complete; stop sending the body."""
        if not self.finished:
            self.connection.close()
        if self.sender is not None:
            self.sender.cancel()

    def late(self) -> None:
        """The response head did not arrive in time: its waiter gets a ``TimeoutError``."""
        if not self.head.done():
            self.head.set_exception(TimeoutError())

    def fail(self, error: BaseException) -> None:
        if self.finished or self.error is not None:
            return
        self.error = error
        if not self.head.done():
            self.head.set_exception(error)
        self.wake()


class UpstreamConnection(WriteFlow):
    """One upstream connection; at most one exchange at a time."""

    def __init__(self, pool: Pool, key: PoolKey) -> None:
        self.pool = pool
        self.key = key
        # The loop, asked once: on Python 3.11 every get_running_loop() is a getpid() syscall.
        self.loop = asyncio.get_running_loop()
        self.reader = Reader("response")
        self.transport: asyncio.Transport | None = None
        self.exchange: Exchange | None = None
        self.idle_since = 0.0
        self.served = 0  # requests answered on it
        self.open = True
        self.reading_paused = False
        self.tunnel = False  # switched to WebSocket (a 101): what follows is the tunnel's

    # -- asyncio.Protocol

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's TLS transport is not an asyncio.Transport subclass, but it is one in all
        # but name: check nothing, cast.
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        exchange = self.exchange
        if exchange is None:  # nothing was asked: a broken upstream
            self.close()
            return
        exchange.received = True
        if self.tunnel:
            self._on_events(exchange, (Data(data),))
            return
        try:
            events = self.reader.feed(data)
        except ProtocolError as e:
            exchange.fail(UpstreamError(502, UPSTREAM_RESET, f"bad response: {e}", sent=True))
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
        self.pool.forget(self)
        self.release_writers()
        exchange = self.exchange
        if exchange is None:
            return
        if exchange.sender is not None:
            exchange.sender.cancel()  # nowhere to send the rest of the request
        if self.tunnel and exc is None:
            exchange.finished = True  # the upstream ended the tunnel
            exchange.wake()
        else:
            exchange.fail(Lost(str(exc) if exc else "connection closed"))

    # -- the exchange

    def _on_events(self, exchange: Exchange, events: Iterable[Event]) -> None:
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
                self.tunnel = event.status == 101  # what follows is a WebSocket's frames
                if not exchange.head.done():
                    exchange.head.set_result(event)
            elif isinstance(event, End):
                if self.tunnel:
                    continue  # the 101's own end: the tunnel has just begun
                if exchange.head.done() and not exchange.head.exception():
                    exchange.trailers = list(event.trailers)
                    exchange.finished = True
                    self.release(exchange)
            elif isinstance(event, Upgraded):
                self.open = False
                if self.tunnel and event.rest:
                    self._on_events(exchange, (Data(event.rest),))
        exchange.wake()

    def release(self, exchange: Exchange) -> None:
        """The response is complete: the connection goes back to the pool if it can."""
        self.exchange = None
        self.served += 1
        settings = self.key[3]
        most = settings.max_requests_per_connection if settings is not None else None
        if (
            self.open
            and exchange.body_sent
            and self.transport is not None
            and (most is None or self.served < most)
        ):
            self.pool.park(self)
            return
        if exchange.sender is not None:
            exchange.sender.cancel()  # answered before the whole request went out
        self.close()

    def consumed(self, exchange: Exchange, size: int) -> None:
        """The caller took ``size`` bytes: resume reading below the low-water mark."""
        exchange.buffered -= size
        if self.reading_paused and exchange.buffered < LOW_WATER and self.transport:
            self.transport.resume_reading()
            self.reading_paused = False

    def close(self) -> None:
        """Drop the connection now (what is in flight on it is lost)."""
        self.open = False
        if self.transport is not None:
            self.transport.abort()


def earliest(
    loop: asyncio.AbstractEventLoop, timeout: float | None, deadline: float | None
) -> float | None:
    """The earlier of ``now + timeout`` and ``deadline`` (None: no limit)."""
    if timeout is None:
        return deadline
    return loop.time() + timeout if deadline is None else min(deadline, loop.time() + timeout)
