"""An upstream's response relayed to an HTTP/1.1 client: what the router and the gateway share.

The head, the body as it arrives and the trailers go to the client's exchange; what
arrived together leaves together (one write), and what is gathered is flushed before waiting
for more, so a stream's head and events are never held back. A response cut short, by the
upstream or the client, is left unended: the client's connection closes, so the client sees a
truncated response, never a complete-looking one. After a ``101`` (a WebSocket accepted) the
"body" is the upstream's side of the tunnel, relayed until either side closes; if it ends
without a close frame (the instance went away, or this proxy stops), the proxy sends the client
one with status 1001, between two of the instance's frames.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Protocol

from shoal.http import grpc
from shoal.http.headers import WEBSOCKET_UPGRADE, Headers, content_length
from shoal.http.refusal import CAUSE_HEADER, Refusal
from shoal.http.websocket import GOING_AWAY, Frames
from shoal.mesh.upstream import UpstreamError, UpstreamResponse


class Client(Protocol):
    """The client's side :func:`relay` writes to: an HTTP/1.1 exchange
    (:class:`~shoal.mesh.h1server.Exchange`) or an HTTP/2 stream."""

    @property
    def upgrade(self) -> bool: ...  # the request asked for a WebSocket

    async def start(self, status: int, fields: Headers) -> None: ...
    async def write(self, data: bytes) -> None: ...
    async def end(self, trailers: Iterable[tuple[bytes, bytes]] = ()) -> None: ...
    def flush(self) -> None: ...
    def send_now(self, data: bytes) -> None: ...


async def router_refusal(response: UpstreamResponse) -> Refusal | None:
    """A node router's own plain-text answer (``x-shoal-cause``: denied, no instance…) as the
    :class:`Refusal` it stands for, its body read and the response closed; None (nothing read)
    for an instance's answer or one already in gRPC. To a gRPC call it is then answered in
    gRPC."""
    cause = next((v for n, v in response.headers if n == CAUSE_HEADER), None)
    if cause is None or grpc.is_grpc(response.headers):
        return None
    taken = b""
    while len(taken) < _SHORT and (piece := await response.piece()) is not None:
        taken += piece
    response.close()
    said, why = taken[:_SHORT].decode("utf-8", "replace").strip(), cause.decode()
    return Refusal(response.status, why, said.removeprefix(why).removeprefix(":").strip())


_SHORT = 1024  # bytes of a refusal's text kept
WHOLE_UP_TO = 64 * 1024
"""Bytes of body (by Content-Length) up to which an answer is relayed whole (see relay)."""


async def relay(
    exchange: Client,
    upstream: UpstreamResponse,
    fields: Headers,
    done: Callable[[], None],
) -> int:
    """Send ``upstream``'s status, ``fields`` (its end-to-end ones, as the caller chose them),
    body and trailers to ``exchange``; call ``done`` once over, however it ends. Returns the
    body bytes relayed."""
    complete = False
    sent = 0
    tunnel = None
    if upstream.status == 101 and exchange.upgrade:  # a WebSocket accepted: the client switches too
        fields = [*fields, *WEBSOCKET_UPGRADE]
        tunnel = Frames()
    # A small answer of known length leaves whole, even when its head and body arrive apart: a
    # network cut between them then costs the next hop no answer at all (it may retry) rather
    # than a head whose body never comes. Anything else streams: what is at hand goes out
    # before waiting for more.
    length = content_length(fields)
    whole = tunnel is None and length is not None and length <= WHOLE_UP_TO
    before_wait = None if whole else exchange.flush
    try:
        await exchange.start(upstream.status, fields)
        while (chunk := await upstream.piece(before_wait=before_wait)) is not None:
            if tunnel is not None:
                tunnel.feed(chunk)
            sent += len(chunk)
            await exchange.write(chunk)
        complete = True
    except (UpstreamError, ConnectionError):
        pass  # cut short: the client's connection closes without the response's end
    finally:
        done()
        if tunnel is not None and not tunnel.closed and tunnel.between:
            # The instance's end went without a close frame, or this proxy is shutting down
            # (the relay is cancelled): the client hears "going away", not a cut.
            exchange.send_now(GOING_AWAY)
        if complete:
            await exchange.end(upstream.trailers)
        else:
            upstream.close()
    return sent
