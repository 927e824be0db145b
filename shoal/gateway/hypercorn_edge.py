"""hypercorn 0.18.0 hardened for the edge: the one module that reaches into hypercorn's internals.

Why: some gaps stock hypercorn 0.18.0 leaves open cannot be closed from an ASGI app, because
they happen before a request exists or below it:

- a request head trickled in a byte at a time gets no 408: only ``keep_alive_timeout`` (the idle
  timer, counted from the end of the previous response) ends it, silently, and it cannot be
  shorter than the idle timeout; ``read_timeout`` bounds one read only;
- nothing caps the number of open connections (``backlog`` is only the listen queue), and a
  connection the client has closed stays open until its idle timer fires;
- HTTP/2 PING, SETTINGS, PRIORITY, RST_STREAM ("rapid reset") and empty-DATA floods are
  answered without limit;
- DATA arriving for a stream whose response is already complete (a request refused before its
  body was read) raises ``KeyError`` in ``H2Protocol`` and kills the whole connection;
- the HTTP/2 header list limit hypercorn advertises is not the one h2 enforces (64 KiB);
- hypercorn's own error answers (bad framing, oversized head) carry no ``x-shoal-cause``, and
  its TLS context drops the options ``ssl.create_default_context`` sets.

What: :class:`EdgeConfig` (a hypercorn ``Config`` built from :class:`EdgeLimits`, with a strict
TLS context) and three subclasses — :class:`EdgeTCPServer` (connection cap, prompt close, and
the hand-over of HTTP/1.x connections to Shoal's own HTTP/1.1 server, ``EdgeConfig.h1``, which
serves them at a fraction of h11's and ASGI's cost), :class:`EdgeH11Protocol` (header deadline
→ 408, causes on error answers: for the requests hypercorn still reads over HTTP/1.1, an
``Upgrade: h2c``) and, in :mod:`.hypercorn_h2`, ``EdgeH2Protocol`` (flood budgets, late
DATA, idle and zero-window closes, one-write responses, and each request stream served by the
edge's handler, ``EdgeConfig.h2``, instead of hypercorn's ASGI layer, see :mod:`.h2_stream`).
:func:`install` puts the subclasses
where hypercorn looks its classes up at call time (``hypercorn.asyncio.run.TCPServer``,
``hypercorn.protocol.H11Protocol`` and ``H2Protocol``). They behave exactly like hypercorn's
unless the ``Config`` is an :class:`EdgeConfig`, so any other hypercorn server in the process
is unaffected.

The overrides depend on private details of hypercorn 0.18.0 (method names, ``self.stream``,
``self.streams``, ``self.connection``, ``self.idle_task``): ``tests/unit/test_hygiene_hypercorn.py``
fails when the installed version is not :data:`PINNED_VERSION`. Re-read
``hypercorn/asyncio/tcp_server.py``, ``protocol/h11.py`` and ``protocol/h2.py`` against this module
before moving the pin.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import copy
import importlib.metadata
import logging
import ssl
from typing import TYPE_CHECKING, Any

import h11
import hypercorn.asyncio.run
import hypercorn.protocol
from hypercorn.asyncio.tcp_server import MAX_RECV, TCPServer
from hypercorn.config import Config
from hypercorn.events import Closed, Event, RawData, Updated
from hypercorn.protocol.h11 import H11Protocol

from shoal.errors import UserError
from shoal.http.limits import EdgeLimits, KiB
from shoal.http.refusal import (
    BAD_FRAMING,
    BAD_REQUEST,
    CAUSE_HEADER,
    HEADERS_TOO_LARGE,
    REQUEST_TIMEOUT,
)
from shoal.mesh.h1server import Server

if TYPE_CHECKING:
    from shoal.gateway.h2_stream import Handler as H2Handler

log = logging.getLogger(__name__)

PINNED_VERSION = "0.18.0"

# ECDHE key exchange with AEAD ciphers only (TLS 1.2); TLS 1.3 suites are all AEAD already.
MODERN_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!eNULL"
TLS_VERSIONS = {"1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}

_CAUSE_BY_STATUS = {400: BAD_REQUEST, 431: HEADERS_TOO_LARGE, 501: BAD_FRAMING}
_TIMEOUT_BODY = f"{REQUEST_TIMEOUT}: request head not received in time\n".encode()
REQUEST_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\n"
    b"content-type: text/plain; charset=utf-8\r\n"
    b"content-length: %d\r\n"
    b"x-shoal-cause: %s\r\n"
    b"connection: close\r\n\r\n%s" % (len(_TIMEOUT_BODY), REQUEST_TIMEOUT.encode(), _TIMEOUT_BODY)
)


class Connections:
    """The edge's open connections, in all and by client address."""

    __slots__ = ("open", "per_client")

    def __init__(self) -> None:
        self.open = 0
        self.per_client: collections.Counter[str] = collections.Counter()


class EdgeConfig(Config):
    """A hypercorn ``Config`` carrying the edge's limits and TLS policy."""

    def __init__(
        self,
        limits: EdgeLimits,
        *,
        tls_min_version: str = "1.2",
        ciphers: str = MODERN_CIPHERS,
    ) -> None:
        if tls_min_version not in TLS_VERSIONS:
            raise UserError(f"tls_min_version must be 1.2 or 1.3 (got {tls_min_version!r})")
        super().__init__()
        self.limits = limits
        self.tls_min_version = TLS_VERSIONS[tls_min_version]
        self.ciphers = ciphers
        # Open connections, in all and by client address: shared by the copies made for
        # further listeners (:meth:`for_listener`), so the limits are the gateway's.
        self.connections = Connections()
        self.h1: Server | None = None  # serves HTTP/1.x connections instead of hypercorn
        # Serves HTTP/2 request streams instead of hypercorn's ASGI layer (with h1, which
        # watches their WebSockets).
        self.h2: H2Handler | None = None
        self.keep_alive_timeout = limits.idle_timeout
        # hypercorn types it ``int | None``; it is passed to ``asyncio.wait_for``, any number works.
        self.read_timeout = limits.read_timeout  # type: ignore[assignment]
        self.ssl_handshake_timeout = limits.tls_handshake_timeout
        self.backlog = limits.backlog
        # A head still incomplete after this many bytes is refused by h11 with 431; a complete
        # one of any size is checked by the app (hygiene.inspect_head) against the real limits.
        self.h11_max_incomplete_size = limits.max_header_bytes + limits.max_uri_bytes + KiB
        self.h2_max_concurrent_streams = limits.h2_max_concurrent_streams
        # HPACK counts 32 bytes per field on top of name and value; the app checks the real
        # limits, a list beyond this is a connection error (GOAWAY) in h2.
        self.h2_max_header_list_size = (
            limits.max_header_bytes + 32 * limits.max_header_count + limits.max_uri_bytes + KiB
        )

    def for_listener(self, h1: Server, h2: H2Handler) -> EdgeConfig:
        """A copy serving its connections with ``h1`` and ``h2`` (another listener's
        handlers), counting them with this one's."""
        copied = copy.copy(self)
        copied.h1, copied.h2 = h1, h2
        return copied

    def create_ssl_context(self) -> ssl.SSLContext | None:
        """hypercorn's context, with TLS 1.2+ (or 1.3), server cipher order, no renegotiation."""
        context: ssl.SSLContext | None = super().create_ssl_context()
        if context is None:
            return None
        context.minimum_version = self.tls_min_version
        # hypercorn assigns ``options = OP_NO_COMPRESSION``, clearing the defaults; restore them.
        context.options |= (
            ssl.OP_NO_COMPRESSION
            | ssl.OP_CIPHER_SERVER_PREFERENCE
            | ssl.OP_NO_RENEGOTIATION
            | ssl.OP_SINGLE_ECDH_USE
        )
        return context


class EdgeTCPServer(TCPServer):
    """hypercorn's connection handler, closing connections beyond ``max_connections``, or
    beyond ``max_connections_per_client`` from one client address (so that one client
    holding connections cannot starve the others)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._requested = False  # whether a request (an HTTP/2 stream) has begun
        self._preface = False  # the connection began with the HTTP/2 preface (prior knowledge)

    async def run(self) -> None:
        """Serve the connection, or close it at once if the gateway (or its client's share of
        it) is full."""
        config = self.config
        if not isinstance(config, EdgeConfig):
            await super().run()
            return
        peer = self.writer.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) else ""
        limits = config.limits
        connections = config.connections
        if (
            connections.open >= limits.max_connections
            or connections.per_client[client] >= limits.max_connections_per_client
        ):
            self.writer.close()
            return
        connections.open += 1
        connections.per_client[client] += 1
        try:
            await super().run()
        finally:
            connections.open -= 1
            connections.per_client[client] -= 1
            if not connections.per_client[client]:
                del connections.per_client[client]

    async def _read_data(self) -> None:
        """hypercorn's read loop, except that ``read_timeout`` does not end a connection while
        a response is still streaming (a client may stay silent for as long as an event stream
        lasts); then, the client gone, the idle timer stops so ``run`` finishes at once
        (hypercorn would keep the socket open, and counted, until the timer fired). An HTTP/1.x
        connection is handed over to Shoal's own server first (:meth:`_hand_over`)."""
        if not isinstance(self.config, EdgeConfig):
            await super()._read_data()
            return
        timeout = self.config.read_timeout
        if self.config.h1 is not None and not await self._hand_over(self.config.h1):
            return
        while not self.reader.at_eof():
            try:
                async with asyncio.timeout(timeout):
                    data = await self.reader.read(MAX_RECV)
            except TimeoutError:
                if self._streaming():
                    continue
                break
            except (ConnectionError, OSError, ssl.SSLError):
                break
            await self.protocol.handle(RawData(data))
        await self.protocol.handle(Closed())
        await self.idle_task.stop()

    async def _hand_over(self, h1: Server) -> bool:
        """Give an HTTP/1.x connection to Shoal's own server (far cheaper per request than
        hypercorn's h11 and ASGI layers) and serve it there until it closes; keep HTTP/2
        (ALPN h2, the prior-knowledge preface, an ``Upgrade: h2c`` request) for hypercorn.
        Returns whether hypercorn serves the connection (its first bytes, if read, handled).
        A connection that sends nothing within ``header_timeout`` is closed: holding
        connections open costs a client nothing, so a new one must start a request soon."""
        ssl_object = self.writer.get_extra_info("ssl_object")
        if ssl_object is not None and ssl_object.selected_alpn_protocol() == "h2":
            return True
        assert isinstance(self.config, EdgeConfig)  # only edge connections are handed over
        limits = self.config.limits
        first = min(limits.header_timeout, limits.read_timeout or limits.header_timeout)
        try:
            async with asyncio.timeout(first):
                data = await self.reader.read(MAX_RECV)
            # All the reader holds goes over with the connection.
            while self.reader._buffer:  # type: ignore[attr-defined]
                data += await self.reader.read(MAX_RECV)
        except (TimeoutError, ConnectionError, OSError, ssl.SSLError):
            await self.idle_task.stop()  # so that run() closes it now
            return False
        if not data or _wants_h2(data):
            self._preface = data.startswith(H2_PREFACE)
            if data:
                await self.protocol.handle(RawData(data))
            return True
        # No await from the last read to the hand-over: bytes arriving meanwhile would stay
        # behind in the reader.
        transport = self.writer.transport
        streams = transport.get_protocol()
        closed = h1.adopt(transport, data)
        try:
            await self.idle_task.stop()  # the new owner has its own idle timeout
            await closed
        finally:
            streams.connection_lost(None)  # run()'s close waits for the stream to see the end
        return False

    async def protocol_send(self, event: Event) -> None:
        if isinstance(event, Updated) and not event.idle:
            if self._preface and not self._streaming():
                # h11 read the h2c preface as a request: the connection is no less idle (its
                # idle timer must go on, or a connection opening no stream stays forever).
                return
            self._requested = True  # from now on an idle connection gets idle_timeout
        await super().protocol_send(event)

    async def _idle_timeout(self) -> None:
        """As hypercorn, except that until its first request a connection gets
        ``header_timeout`` if that is shorter than ``idle_timeout`` (an HTTP/2 connection that
        never opens a stream is closed as soon as an HTTP/1.x one that never sends a request)."""
        config = self.config
        if not isinstance(config, EdgeConfig) or self._requested:
            await super()._idle_timeout()
            return
        limits = config.limits
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(limits.header_timeout, limits.idle_timeout)):
                await self.context.terminated.wait()
        await asyncio.shield(self._initiate_server_close())

    def _streaming(self) -> bool:
        """Whether a request on this connection is still being answered."""
        inner = self.protocol.protocol
        if isinstance(inner, H11Protocol):
            return inner.stream is not None
        return bool(inner.streams)


H2_PREFACE = b"PRI * HTTP/2.0"


def _wants_h2(data: bytes) -> bool:
    """Whether a plaintext connection's first bytes ask for HTTP/2: the prior-knowledge
    preface, or a request head (as far as it arrived) asking to upgrade to h2c."""
    if data.startswith(H2_PREFACE):
        return True
    head = data.partition(b"\r\n\r\n")[0].lower()
    return b"\r\nupgrade:" in head and b"h2c" in head


class EdgeH11Protocol(H11Protocol):
    """hypercorn's HTTP/1.1 protocol with a deadline on request heads and causes on errors.

    The deadline starts when the first bytes of a head are buffered with no request in progress,
    and stops when h11 has parsed the whole head; when it passes, the client gets 408 and the
    connection closes.
    """

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        config = self.config
        self._limits = config.limits if isinstance(config, EdgeConfig) else None
        self._head_timer: asyncio.TimerHandle | None = None

    async def handle(self, event: Event) -> None:
        """Feed ``event`` to hypercorn, then start the head deadline if a head is pending."""
        await super().handle(event)
        if self._limits is None:
            return
        if isinstance(event, Closed):
            self._stop_head_timer()
        elif (
            self.stream is None
            and self._head_timer is None
            and self._awaiting_head()
            and self.connection.trailing_data[0]
        ):
            self._head_timer = asyncio.get_running_loop().call_later(
                self._limits.header_timeout, self._head_timer_fired
            )

    def _awaiting_head(self) -> bool:
        return (
            isinstance(self.connection, h11.Connection) and self.connection.their_state is h11.IDLE
        )

    def _stop_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timer_fired(self) -> None:
        self._head_timer = None
        if self.stream is None and self._awaiting_head():
            self.task_group.spawn(self._head_timed_out)

    async def _head_timed_out(self) -> None:
        await self.send(RawData(data=REQUEST_TIMEOUT_RESPONSE))
        await self.send(Closed())

    async def _check_protocol(self, event: h11.Request) -> None:
        self._stop_head_timer()
        await super()._check_protocol(event)

    async def _send_error_response(self, status_code: int) -> None:
        if self._limits is None:
            await super()._send_error_response(status_code)
            return
        cause = _CAUSE_BY_STATUS.get(status_code, BAD_REQUEST)
        await self._send_h11_event(
            h11.Response(
                status_code=status_code,
                headers=[
                    (b"content-length", b"0"),
                    (b"connection", b"close"),
                    (CAUSE_HEADER, cause.encode()),
                    *self.config.response_headers("h11"),
                ],
            )
        )
        await self._send_h11_event(h11.EndOfMessage())


def install() -> None:
    """Make hypercorn build the edge classes (inert for a plain ``Config``); idempotent."""
    installed = importlib.metadata.version("hypercorn")
    if installed != PINNED_VERSION:
        log.warning(
            "hypercorn %s is installed, the edge hardening was written for %s",
            installed,
            PINNED_VERSION,
        )
    # The modules look these names up each time they build a connection or protocol.
    hypercorn.asyncio.run.TCPServer = EdgeTCPServer  # type: ignore[attr-defined]
    hypercorn.protocol.H11Protocol = EdgeH11Protocol  # type: ignore[attr-defined, assignment]
    from shoal.gateway.hypercorn_h2 import EdgeH2Protocol  # it builds on this module

    hypercorn.protocol.H2Protocol = EdgeH2Protocol  # type: ignore[attr-defined, assignment]
