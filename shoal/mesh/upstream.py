"""Pooled HTTP/1.1 connections to upstreams (instances and node routers): the proxy's client.

What a proxy sends is what it was given: the target as bytes, the header values as received,
the body in the framing it arrived in (a known length stays a ``Content-Length``; a body of
unknown length goes chunked), and what comes back is relayed as it arrives, trailers included
(:mod:`shoal.http.h1` parses and frames). Informational responses (``100 Continue``) are
absorbed: the body is streamed without waiting for them.

One :class:`Upstreams` pool per proxy process keeps idle connections per authority, TLS
context (a renewed certificate is used by new connections only) and destination settings (a
DestinationRule's ``connectionPool``: ``connectTimeout``, ``tcpKeepalive``, ``idleTimeout``,
``maxRequestsPerConnection``) for :data:`IDLE_TIMEOUT` seconds, or the rule's shorter
``idleTimeout``. A reused connection that the upstream had closed just before the request went out
is replaced by a fresh one once, when the request can be sent again (no body, or a body held
in memory). The connections themselves are :mod:`shoal.mesh.upstream_connection`.

Every failure is an :class:`UpstreamError` carrying the ``x-shoal-cause`` and status the proxy
answers with, and whether any byte of the request may have reached the upstream.
"""

from __future__ import annotations

import asyncio
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from shoal.http.h1 import BodyWriter, request_head
from shoal.http.headers import WEBSOCKET_UPGRADE, Headers
from shoal.http.refusal import (
    CAUSE_HEADER,
    UPSTREAM_CONNECT_ERROR,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
)
from shoal.identity.spiffe import peer_identity
from shoal.mesh.upstream_connection import (
    Body,
    Exchange,
    Lost,
    PoolKey,
    UpstreamConnection,
    UpstreamError,
    earliest,
)
from shoal.resources.model import ConnectionPool, TcpKeepalive

__all__ = ["UNSENT", "UpstreamError", "UpstreamResponse", "Upstreams"]

UNSENT = "x-shoal-unsent"
"""Set by a node router on a refusal made before any byte reached an instance."""

IDLE_TIMEOUT = 30.0  # seconds an idle pooled connection is kept
MAX_CONNECTING = 4
"""Connections to one upstream being made at once; beyond, a request waits for a connection to
come free or a handshake to end. Handshakes (mTLS) cost CPU on the proxy's one event loop: a
burst of requests opening a connection each would queue every request behind all of them, and
the slower answers grow the burst (more requests in flight, more connections), while most of
those requests could have had a connection freed a moment later."""

_FRAMING = (b"content-length", b"transfer-encoding")


def _split(authority: str) -> tuple[str, int]:
    host, _, port = authority.rpartition(":")
    return host.strip("[]"), int(port)


@dataclass(slots=True)
class UpstreamResponse:
    """A response whose body is still to be read with :meth:`piece`."""

    status: int
    headers: Headers
    _exchange: Body
    _deadline: float | None = None

    @property
    def buffered(self) -> int:
        """Bytes of the body received and not yet taken by the caller."""
        return self._exchange.buffered

    @property
    def complete(self) -> bool:
        """Whether the whole body has arrived and been taken (the last piece is out)."""
        return self._exchange.finished and not self._exchange.pieces

    @property
    def trailers(self) -> Headers:
        """The trailer fields of a chunked response (once :meth:`piece` has returned None)."""
        return self._exchange.trailers

    async def piece(self, before_wait: Callable[[], None] | None = None) -> bytes | None:
        """The body's next piece as it arrives, ``None`` at its end; upstream failures mid-body
        raise :class:`UpstreamError`. ``before_wait`` is called when no piece is at hand and
        the body goes on (a relay flushes what it gathered)."""
        exchange = self._exchange
        while True:
            if exchange.pieces:
                piece = exchange.pieces.popleft()
                exchange.consumed(len(piece))
                return piece
            if exchange.finished:
                return None
            if exchange.error is not None:
                raise UpstreamError(
                    502, UPSTREAM_RESET, f"upstream body: {exchange.error}", sent=True
                )
            if before_wait is not None:
                before_wait()
            exchange.waiter = exchange.loop.create_future()
            try:
                async with asyncio.timeout_at(self._deadline):
                    await exchange.waiter
            except TimeoutError:
                self.close()
                raise UpstreamError(
                    502, UPSTREAM_RESET, "upstream body timed out", sent=True
                ) from None
            finally:
                exchange.waiter = None

    def close(self) -> None:
        """Give up on the rest of the body (drop the connection, or reset the stream)."""
        self._exchange.abandon()


def keep_alive(sock: socket.socket, keepalive: TcpKeepalive) -> None:
    """Turn TCP keepalive on for ``sock`` with the values ``keepalive`` sets (the system's for
    the others)."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        (socket.TCP_KEEPIDLE, keepalive.time),
        (socket.TCP_KEEPINTVL, keepalive.interval),
        (socket.TCP_KEEPCNT, keepalive.probes),
    ):
        if value is not None:
            sock.setsockopt(socket.IPPROTO_TCP, option, int(value))


class Upstreams:
    """One keep-alive pool for all upstream connections of a proxy process."""

    def __init__(self, *, connect_timeout: float = 3.0) -> None:
        self._connect_timeout = connect_timeout
        self._idle: dict[PoolKey, list[UpstreamConnection]] = {}
        self._all: set[UpstreamConnection] = set()
        self._connecting: dict[PoolKey, int] = {}
        # Requests waiting for a connection (a future: a connection freed for it, or None: a
        # handshake ended, so it may make one).
        self._waiting: dict[PoolKey, deque[asyncio.Future[UpstreamConnection | None]]] = {}

    def park(self, connection: UpstreamConnection) -> None:
        """Keep ``connection`` for reuse: hand it to a request waiting for one, if any."""
        if self._wake(connection.key, connection):
            return
        connection.idle_since = connection.loop.time()
        self._idle.setdefault(connection.key, []).append(connection)

    def _wake(self, key: PoolKey, connection: UpstreamConnection | None) -> bool:
        """Give ``connection`` (None: leave to connect) to the longest-waiting request for
        ``key``; False if none waits."""
        waiting = self._waiting.get(key)
        while waiting:
            waiter = waiting.popleft()
            if not waiter.done():
                waiter.set_result(connection)
                return True
        return False

    def forget(self, connection: UpstreamConnection) -> None:
        """``connection`` closed: drop it."""
        self._all.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    async def _connect(
        self, loop: asyncio.AbstractEventLoop, key: PoolKey, deadline: float | None
    ) -> tuple[UpstreamConnection, bool]:
        """An idle connection for ``key`` (reused: True), else a new one, connected within
        the connect timeout and before ``deadline`` (the attempt's: a connection that cannot
        be made in time is a connect failure, nothing was sent)."""
        authority, tls, peer, settings, server_name = key
        connect_timeout, idle_timeout, keepalive = self._connect_timeout, IDLE_TIMEOUT, None
        if settings is not None:
            connect_timeout = settings.connect_timeout or connect_timeout
            if settings.idle_timeout is not None:
                idle_timeout = min(settings.idle_timeout, idle_timeout)
            keepalive = settings.tcp_keepalive
        limit = loop.time() + connect_timeout
        limit = limit if deadline is None else min(limit, deadline)
        while True:
            idle = self._idle.get(key)
            while idle:
                connection = idle.pop()
                if connection.open and loop.time() - connection.idle_since < idle_timeout:
                    return connection, True
                connection.close()
            if self._connecting.get(key, 0) < MAX_CONNECTING:
                break
            freed = await self._wait(loop, key, limit)
            if freed is not None and freed.open:
                return freed, True
        host, port = _split(authority)
        self._connecting[key] = self._connecting.get(key, 0) + 1
        try:
            async with asyncio.timeout_at(limit):
                _, protocol = await loop.create_connection(
                    lambda: UpstreamConnection(self, key),
                    host,
                    port,
                    ssl=tls,
                    server_hostname=server_name if tls is not None else None,
                )
        except (OSError, TimeoutError, ssl.SSLError) as e:
            raise UpstreamError(
                503, UPSTREAM_CONNECT_ERROR, f"{authority}: {e!r}", sent=False
            ) from None
        finally:
            self._connecting[key] -= 1
            self._wake(key, None)
        if keepalive is not None and protocol.transport is not None:
            keep_alive(protocol.transport.get_extra_info("socket"), keepalive)
        if peer is not None:
            ssl_object = (
                protocol.transport.get_extra_info("ssl_object") if protocol.transport else None
            )
            found = peer_identity(ssl_object.getpeercert()) if ssl_object is not None else None
            if str(found) != peer:  # a certificate of the mesh, but not the one meant
                protocol.close()
                raise UpstreamError(
                    503,
                    UPSTREAM_CONNECT_ERROR,
                    f"{authority} presented {found or 'no SPIFFE ID'}, not {peer}",
                    sent=False,
                )
        self._all.add(protocol)
        return protocol, False

    async def _wait(
        self, loop: asyncio.AbstractEventLoop, key: PoolKey, limit: float
    ) -> UpstreamConnection | None:
        """Wait, until ``limit``, for a connection to ``key`` to come free (it is returned) or
        for one of its handshakes to end (None: the caller may make one)."""
        waiter: asyncio.Future[UpstreamConnection | None] = loop.create_future()
        self._waiting.setdefault(key, deque()).append(waiter)
        try:
            async with asyncio.timeout_at(limit):
                return await waiter
        except TimeoutError:
            raise UpstreamError(
                503, UPSTREAM_CONNECT_ERROR, f"{key[0]}: no connection in time", sent=False
            ) from None
        except BaseException:
            freed = waiter.result() if waiter.done() and not waiter.cancelled() else None
            if freed is not None:
                self.park(freed)  # freed for us as we were cancelled: pass it on
            raise

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
        peer: str | None = None,
        tunnel: bool = False,
        settings: ConnectionPool | None = None,
        server_name: str | None = None,
    ) -> UpstreamResponse:
        """Send one request to ``authority`` (``host:port``), over ``tls`` when given, to an
        upstream presenting the SPIFFE ID ``peer`` when given, on a connection made and kept
        as the destination's ``settings`` say (its ``connectTimeout``, ``tcpKeepalive``,
        ``idleTimeout`` and ``maxRequestsPerConnection``), with ``server_name`` as its TLS
        server name (SNI and the name verified; None: the authority's host); return once the
        response head has arrived.

        ``head_timeout`` bounds the wait for the response head; ``total_timeout`` the whole
        exchange, body included.
        """
        loop = asyncio.get_running_loop()
        # A WebSocket handshake (``tunnel``): this hop asks for the switch again (hop-by-hop
        # fields); the route's timeout bounds the wait for the 101, not the tunnel's life; its
        # "body" goes as it comes, unframed.
        deadline = None if total_timeout is None or tunnel else loop.time() + total_timeout
        fields = [(n, v) for n, v in headers if n not in _FRAMING]
        if tunnel:
            fields += WEBSOCKET_UPGRADE
        if not any(n == b"host" for n, _ in fields):
            fields.insert(0, (b"host", authority.encode()))
        chunked = False
        if isinstance(body, bytes):
            fields.append((b"content-length", b"%d" % len(body)))
        elif body is not None and not tunnel:
            length = next((v for n, v in headers if n == b"content-length"), None)
            chunked = length is None
            fields.append(
                (b"content-length", length) if length else (b"transfer-encoding", b"chunked")
            )
        head = request_head(method.encode(), target.encode("latin-1"), fields)
        replayable = not isinstance(body, AsyncIterator)
        head_deadline = earliest(loop, head_timeout, deadline)  # this attempt's
        for attempt in (1, 2):
            key = authority, tls, peer, settings, server_name
            connection, reused = await self._connect(loop, key, head_deadline)
            exchange = self._start(connection, method, head, body, chunked)
            # A timer on the future, not asyncio.timeout_at: no task cancellation per request.
            timer = None if head_deadline is None else loop.call_at(head_deadline, exchange.late)
            try:
                response_head = await exchange.head
            except TimeoutError:
                exchange.abandon()
                raise UpstreamError(
                    504, UPSTREAM_TIMEOUT, f"{authority} timed out", sent=True
                ) from None
            except Lost as e:
                exchange.abandon()
                if reused and not exchange.received and replayable and attempt == 1:
                    continue  # the upstream closed an idle connection as the request left
                raise UpstreamError(502, UPSTREAM_RESET, f"{authority}: {e}", sent=True) from None
            except BaseException:  # also the caller's body failing (e.g. refused at the edge)
                exchange.abandon()
                raise
            finally:
                if timer is not None:
                    timer.cancel()
            response = UpstreamResponse(
                status=response_head.status,
                headers=list(response_head.fields),
                _exchange=exchange,
                _deadline=deadline,
            )
            if tls is not None and response_head.get(UNSENT.encode()) is not None:
                # A node router refused before any byte reached an instance: safe to retry.
                cause = (
                    response_head.get(CAUSE_HEADER) or UPSTREAM_CONNECT_ERROR.encode()
                ).decode()
                response.close()
                raise UpstreamError(response.status, cause, f"{authority}: {cause}", sent=False)
            return response
        raise AssertionError("unreachable: the second attempt returns or raises")

    def _start(
        self,
        connection: UpstreamConnection,
        method: str,
        head: bytes,
        body: AsyncIterator[bytes] | bytes | None,
        chunked: bool,
    ) -> Exchange:
        """Put the request on ``connection``: the head (and a body in memory) at once, a
        streamed body by a task the exchange owns."""
        loop = connection.loop
        exchange = Exchange(connection=connection, head=loop.create_future())
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
        self, exchange: Exchange, body: AsyncIterator[bytes], chunked: bool
    ) -> None:
        """Stream ``body``; a failure of the caller's body ends the exchange with it."""
        connection, writer = exchange.connection, BodyWriter(chunked)
        try:
            async for piece in body:
                if connection.transport is None or not (connection.open or connection.tunnel):
                    return
                connection.transport.write(writer.data(piece))
                await connection.writable()
            if connection.transport is not None:
                connection.transport.write(writer.end())
            exchange.body_sent = True
        except asyncio.CancelledError:
            raise
        except BaseException as e:
            exchange.fail(e)
            connection.close()

    async def close(self) -> None:
        """Close every connection."""
        for connection in list(self._all):
            connection.close()
        self._all.clear()
        self._idle.clear()
