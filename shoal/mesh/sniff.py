"""One TCP port for both mTLS and plaintext HTTP, told apart by the first byte of a connection.

Istio's PERMISSIVE mTLS mode lets a workload's port take mTLS from meshed peers and plaintext
from clients outside the mesh, on the same port, so that services can join the mesh one at a
time; STRICT refuses plaintext. Both need one listener that decides per connection. A TLS
connection always opens with a handshake record, whose first byte is its content type 0x16; an
HTTP/1.x request line and the HTTP/2 preface start with an ASCII letter. So
:func:`serve_sniffing` accepts connections itself, waits for the first byte, peeks at it
(``MSG_PEEK`` leaves it in the socket for whoever reads next) and hands the socket to the
protocol it serves (the router's HTTP/1.1 server), wrapped in TLS or as it is.

``plaintext()`` is asked once per plaintext connection, when its first byte arrives, so the
mode can change at run time (a PeerAuthentication going from PERMISSIVE to STRICT) without
reopening the port; connections already handed over are left alone. A refused connection is
closed without a word: the client sees EOF or a reset, never an HTTP answer.

Theory of operation. The listener owns every task it starts: one accept loop, and one task per
connection from its accept until it is handed to its protocol or closed. Waiting for the first byte
and the TLS handshake are each bounded by ``sniff_timeout``, so a silent client costs a task
for that long and never delays anyone else. Failures that are the peer's doing (silence, a
reset, a refused handshake) close that connection and are logged at debug level; a port that
cannot be bound raises :class:`~shoal.errors.PlatformError`; anything else is a bug and is
logged at error level with its traceback.

Why not a TaskGroup: a failure in one connection's task would cancel the listener and every
other connection, so the listener keeps its tasks in a set and cancels and awaits them when it
closes. Why not ``loop.sock_accept``: cancelling it (on close) just after a connection was
accepted drops the accepted socket unclosed; accepting on readiness, as asyncio's own servers
do, leaves a connection either in the kernel's queue or in a task that owns it.

Needs a loop with ``add_reader`` (the default selector loop and uvloop; not Windows' proactor).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import ssl
from collections.abc import Callable, Coroutine
from typing import Any

from shoal.errors import PlatformError

__all__ = ["ACCEPT_RETRY_DELAY", "TLS_HANDSHAKE", "SniffingListener", "serve_sniffing"]

log = logging.getLogger(__name__)

TLS_HANDSHAKE = b"\x16"
"""The content type of a TLS handshake record: the first byte of every TLS connection."""

ACCEPT_RETRY_DELAY = 1.0
"""Seconds the accept loop pauses when the process is out of descriptors or memory (as
asyncio's own servers do): the pending connection keeps the listener readable, so retrying at
once would spin."""

_OUT_OF_RESOURCES = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


async def serve_sniffing(
    factory: Callable[[], asyncio.BaseProtocol],
    host: str,
    port: int,
    *,
    ssl_context: ssl.SSLContext,
    plaintext: Callable[[], bool],
    sniff_timeout: float = 10.0,
    backlog: int = 128,
) -> SniffingListener:
    """Serve ``factory``'s protocol on ``host:port`` over TLS, and over plaintext for each
    connection that arrives while ``plaintext()`` says so; ``sniff_timeout`` bounds the wait
    for a connection's first byte and, separately, its TLS handshake. Close it with
    ``close()`` and ``wait_closed()``. Raises PlatformError when the port cannot be bound."""
    loop = asyncio.get_running_loop()
    listener = SniffingListener(
        loop,
        await _listen(loop, host, port, backlog),
        factory=factory,
        ssl_context=ssl_context,
        plaintext=plaintext,
        sniff_timeout=sniff_timeout,
        backlog=backlog,
    )
    await listener.start_serving()
    return listener


class SniffingListener(asyncio.AbstractServer):
    """The listening socket and the tasks serving it: the accept loop and one task per
    connection not yet handed to its protocol (or closed)."""

    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        sock: socket.socket,
        *,
        factory: Callable[[], asyncio.BaseProtocol],
        ssl_context: ssl.SSLContext,
        plaintext: Callable[[], bool],
        sniff_timeout: float,
        backlog: int,
    ) -> None:
        self._loop = loop
        self._sock = sock
        self._factory = factory
        self._tls = ssl_context
        self._plaintext = plaintext
        self._timeout = sniff_timeout
        self._backlog = max(backlog, 1)
        self._name = f"{sock.getsockname()[0]}:{sock.getsockname()[1]}"
        self._tasks: set[asyncio.Task[None]] = set()
        self._serving = False
        self._closed = False

    @property
    def sockets(self) -> tuple[socket.socket, ...]:
        """The listening socket while open."""
        return () if self._closed else (self._sock,)

    def get_loop(self) -> asyncio.AbstractEventLoop:
        """The loop the listener runs on."""
        return self._loop

    def is_serving(self) -> bool:
        """Whether connections are being accepted."""
        return self._serving and not self._closed

    async def start_serving(self) -> None:
        """Start the accept loop (once)."""
        if self._closed:
            raise RuntimeError(f"listener {self._name} is closed")
        if not self._serving:
            self._serving = True
            self._spawn(self._accept_loop(), f"sniff-accept {self._name}")

    async def serve_forever(self) -> None:
        """Not supported: :func:`serve_sniffing` starts it and its owner closes it."""
        raise NotImplementedError("a sniffing listener serves from serve_sniffing until closed")

    def close(self) -> None:
        """Stop accepting and cancel every connection not yet handed over; the listening
        socket is closed as the accept loop ends (:meth:`wait_closed` waits for that)."""
        if self._closed:
            return
        self._closed = True
        if not self._serving:
            self._sock.close()
        for task in self._tasks:
            task.cancel()

    async def wait_closed(self) -> None:
        """Wait until every task of the listener has ended."""
        while self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _spawn(self, work: Coroutine[Any, Any, None], name: str) -> None:
        task = self._loop.create_task(work, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._reap)

    def _reap(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("%s failed", task.get_name(), exc_info=error)

    async def _accept_loop(self) -> None:
        try:
            while True:
                await _readable(self._loop, self._sock)
                if not self._accept_queued():
                    await asyncio.sleep(ACCEPT_RETRY_DELAY)
        finally:
            # Runs after _readable removed its reader, so the loop never watches a closed fd.
            self._sock.close()

    def _accept_queued(self) -> bool:
        """Accept up to a backlog's worth of queued connections, each into its own task;
        False when out of resources."""
        for _ in range(self._backlog):
            try:
                conn, peer = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return True
            except ConnectionAbortedError:  # the client gave up while queued
                continue
            except OSError as e:
                if e.errno not in _OUT_OF_RESOURCES:
                    raise
                log.error(
                    "cannot accept on %s: %s; retrying in %ss", self._name, e, ACCEPT_RETRY_DELAY
                )
                return False
            conn.setblocking(False)
            self._spawn(self._serve(conn, peer), f"sniff {_address(peer)}")
        return True

    async def _serve(self, conn: socket.socket, peer: Any) -> None:
        """Sniff one connection, then hand it to its protocol or close it."""
        try:
            first = await self._first_byte(conn, peer)
            tls = first == TLS_HANDSHAKE
            if not tls and not (first and self._plaintext()):
                if first:
                    log.debug("refused plaintext from %s: the port is STRICT", _address(peer))
                conn.close()
                return
        except BaseException:
            conn.close()
            raise
        # From here the socket is asyncio's: it closes it if the handover fails or is cancelled.
        try:
            if tls:
                await self._loop.connect_accepted_socket(
                    self._factory, conn, ssl=self._tls, ssl_handshake_timeout=self._timeout
                )
            else:
                await self._loop.connect_accepted_socket(self._factory, conn)
        except OSError as e:  # ssl.SSLError, a reset, the handshake deadline: the peer's doing
            stage = "TLS handshake" if tls else "plaintext handover"
            log.debug("%s with %s failed: %s", stage, _address(peer), e)

    async def _first_byte(self, conn: socket.socket, peer: Any) -> bytes:
        """The peer's first byte, left unread; b"" if it closed, reset or stayed silent."""
        try:
            async with asyncio.timeout(self._timeout):
                while True:
                    await _readable(self._loop, conn)
                    try:
                        return conn.recv(1, socket.MSG_PEEK)
                    except (BlockingIOError, InterruptedError):  # a spurious wake-up
                        continue
        except TimeoutError:
            log.debug("%s sent nothing in %ss: closing", _address(peer), self._timeout)
        except OSError as e:
            log.debug("%s failed before its first byte: %s", _address(peer), e)
        return b""


async def _listen(
    loop: asyncio.AbstractEventLoop, host: str, port: int, backlog: int
) -> socket.socket:
    """A non-blocking socket listening on the first address ``host`` resolves to."""
    try:
        infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except OSError as e:
        raise PlatformError(f"cannot resolve {host!r} to listen on: {e}") from None
    if not infos:
        raise PlatformError(f"{host!r} resolves to no address to listen on")
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as e:
        sock.close()
        raise PlatformError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    return sock


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    """Return once ``sock`` has something to read: data, a connection, EOF or an error."""
    ready: asyncio.Future[None] = loop.create_future()
    loop.add_reader(sock, _resolve, ready)
    try:
        await ready
    finally:
        loop.remove_reader(sock)


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # level-triggered: the loop may call again before the reader is removed
        future.set_result(None)


def _address(peer: Any) -> str:
    """``host:port`` of a socket address, for logs."""
    if isinstance(peer, tuple) and len(peer) >= 2:
        return f"{peer[0]}:{peer[1]}"
    return str(peer)
