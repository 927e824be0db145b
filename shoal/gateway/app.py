"""The gateway's proxy app: ASGI for hypercorn's HTTP/2 streams (:meth:`GatewayApp.__call__`),
and a handler for Shoal's own HTTP/1.1 server (:meth:`GatewayApp.serve_h1`), which serves the
HTTP/1.x connections hypercorn hands over; no framework in the hot path.

Per request: the head checked and the path normalised once (:func:`.hygiene.inspect_head`), one
snapshot read and decision (:meth:`shoal.mesh.proxy_state.ProxyState.decide`), one pooled
upstream request, bodies streamed both ways (the request body through
:class:`.body.RequestBody`, bounded in size and time). Every answer the gateway makes itself
carries ``x-shoal-cause``; a refused request reaches no upstream, and on HTTP/1.x its
connection is closed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, MutableMapping, Sequence
from typing import Any, NamedTuple

from shoal.gateway.body import BodyRefused, RequestBody
from shoal.gateway.h2_websocket import WebSocketStream
from shoal.gateway.hygiene import Head, inspect_head
from shoal.gateway.hypercorn_edge import REQUEST_TASK, client_left
from shoal.http import grpc
from shoal.http.headers import (
    Headers,
    UnderscorePolicy,
    edge_request_headers,
    end_to_end,
)
from shoal.http.limits import EdgeLimits
from shoal.http.paths import SlashPolicy
from shoal.http.refusal import UPSTREAM_TIMEOUT, Refusal
from shoal.mesh.forward import Forwarded, Forwarder, Outbound
from shoal.mesh.h1server import Exchange
from shoal.mesh.relay import relay, router_refusal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def refuse(
    send: Send, refusal: Refusal, extra: Sequence[tuple[bytes, bytes]] = (), *, rpc: bool = False
) -> None:
    """Answer a request the gateway will not forward; a gRPC one (``rpc``) as gRPC: HTTP 200
    with the status in trailers (``grpc-status`` mapped from the HTTP status, as Envoy does),
    ``x-shoal-cause`` in the head."""
    if rpc:
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/grpc"), *refusal.headers],
                "trailers": True,
            }
        )
        await send({"type": "http.response.body", "body": b""})
        message = refusal.body().decode().rstrip("\n")
        timed_out = refusal.cause == UPSTREAM_TIMEOUT
        trailers = grpc.refusal_trailers(refusal.status, message, timed_out=timed_out)
        await send({"type": "http.response.trailers", "headers": trailers})
        return
    body = refusal.body()
    await send(
        {
            "type": "http.response.start",
            "status": refusal.status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                *refusal.headers,
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


_CLOSE = ((b"connection", b"close"),)


async def reject(send: Send, refusal: Refusal, http2: bool, *, rpc: bool = False) -> None:
    """Answer a request refused for the client's fault; on HTTP/1.x the connection closes
    after it."""
    await refuse(send, refusal, () if http2 else _CLOSE, rpc=rpc)


def _takes_trailers(scope: Scope) -> bool:
    """Whether the client takes HTTP/2 trailers (``te: trailers``: gRPC clients say so)."""
    return scope["http_version"] == "2" and (b"te", b"trailers") in scope["headers"]


def _rpc(scope: Scope) -> bool:
    """Whether to answer as gRPC: a gRPC request over HTTP/2 that takes trailers."""
    return _takes_trailers(scope) and grpc.is_grpc(scope["headers"])


class _Refused(NamedTuple):
    """Why a request was not forwarded; ``clients``: the client's fault (an HTTP/1.x
    connection then closes, as the rest of its body would follow)."""

    refusal: Refusal
    clients: bool


async def _answer(exchange: Exchange | WebSocketStream, refusal: Refusal, *, close: bool) -> None:
    """:func:`refuse` on Shoal's HTTP/1.1 server; ``close``: the connection closes after it."""
    if close:
        exchange.close_after = True
    await exchange.refuse(refusal)


def _receive(exchange: Exchange | WebSocketStream) -> Receive:
    """The request body of ``exchange`` as ASGI ``receive`` (what :class:`RequestBody` reads)."""
    pieces = exchange.body()

    async def receive() -> Message:
        try:
            piece = await anext(pieces)
        except StopAsyncIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        return {"type": "http.request", "body": piece, "more_body": True}

    return receive


class GatewayApp:
    """ASGI application forwarding every HTTP request through the mesh."""

    def __init__(
        self,
        forwarder: Forwarder,
        *,
        limits: EdgeLimits | None = None,
        slashes: SlashPolicy = SlashPolicy.REJECT,
        underscores: UnderscorePolicy = UnderscorePolicy.DROP,
        trusted_hops: int = 0,
    ) -> None:
        self.forwarder = forwarder
        self.limits = limits or EdgeLimits()
        self.slashes = slashes
        self.underscores = underscores
        self.trusted_hops = trusted_hops

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.forwarder.upstreams.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        if client_left(scope):
            return  # the stream was reset before this task ran: nothing goes upstream
        raw_headers: Headers = scope["headers"]
        method: str = scope["method"]
        http2 = scope["http_version"] == "2"
        query: bytes = scope["query_string"]
        head = inspect_head(
            method,
            scope["raw_path"],
            query,
            raw_headers,
            scope["http_version"],
            self.limits,
            self.slashes,
            self.underscores,
        )
        if isinstance(head, Refusal):
            await reject(send, head, http2, rpc=_rpc(scope))
            return
        loop = asyncio.get_running_loop()
        body = RequestBody(receive, self.limits, loop.time()) if head.has_body else None
        me = asyncio.current_task(loop)
        assert me is not None
        scope[REQUEST_TASK] = me  # the edge cancels it when the client resets or leaves
        try:
            await self._forward(scope, head, body, send)
        except asyncio.CancelledError:
            if not client_left(scope) or me.cancelling() > 1:
                raise  # not (only) the client leaving: hypercorn or shutdown cancels us
            me.uncancel()  # the client left: nothing more to answer

    async def serve_h1(self, exchange: Exchange | WebSocketStream) -> None:
        """Serve one HTTP/1.x request on Shoal's own server core (hypercorn hands those
        connections over, see :mod:`.hypercorn_edge`), or a WebSocket over HTTP/2 (see
        :mod:`.h2_websocket`): the same checks and forwarding as :meth:`_http`, without the
        ASGI layer; a client leaving cancels this at once."""
        request = exchange.head
        target = request.target
        path, _, query = target.partition(b"?")
        method = request.method.decode("latin-1")
        head = inspect_head(
            method,
            path,
            query,
            request.fields,
            request.version.decode("latin-1"),
            self.limits,
            self.slashes,
            self.underscores,
        )
        if isinstance(head, Refusal):
            await _answer(exchange, head, close=True)
            return
        loop = asyncio.get_running_loop()
        body = RequestBody(_receive(exchange), self.limits, loop.time()) if head.has_body else None
        peer = exchange.peer
        outbound = self._outbound(
            head, method, query, request.fields, peer[0] if peer else None, exchange.scheme, body
        )
        if exchange.upgrade:  # a WebSocket handshake: the tunnel's bytes follow, unframed
            outbound.upgrade, outbound.body = True, exchange.body()
        result = await self._send(outbound, body)
        if isinstance(result, _Refused):
            await _answer(exchange, result.refusal, close=result.clients)
            return
        response = result.response
        await relay(exchange, response, end_to_end(response.headers), result.done)

    async def _send(self, outbound: Outbound, body: RequestBody | None) -> Forwarded | _Refused:
        """Forward ``outbound``; a refusal says whether the client's request body caused it."""
        try:
            result = await self.forwarder.forward(outbound)
        except BodyRefused as e:
            return _Refused(e.refusal, clients=True)
        if isinstance(result, Refusal):
            if body is not None and body.refusal is not None:  # the upstream saw it abort
                return _Refused(body.refusal, clients=True)
            return _Refused(result, clients=False)
        return result

    def _outbound(
        self,
        head: Head,
        method: str,
        query: bytes,
        raw_headers: Iterable[tuple[bytes, bytes]],
        client_ip: str | None,
        scheme: str,
        body: RequestBody | None,
    ) -> Outbound:
        """The request to forward: the normalised path with the query as received, the
        client's end-to-end headers plus the forwarding ones."""
        query_text = query.decode("latin-1")
        return Outbound(
            method=method,
            host=head.host,
            path=head.path,
            raw_target=head.path + ("?" + query_text if query_text else ""),
            query=query_text,
            headers=edge_request_headers(
                raw_headers,
                head.fields,
                client_ip=client_ip,
                scheme=scheme,
                host=head.host,
                trusted_hops=self.trusted_hops,
                keep_underscores=self.underscores is UnderscorePolicy.KEEP,
            ),
            fields=head.fields,
            body=body.chunks() if body is not None else None,
            content_length=head.content_length,
        )

    async def _forward(
        self, scope: Scope, head: Head, body: RequestBody | None, send: Send
    ) -> None:
        """Route and send the request, then relay the answer (or answer a refusal)."""
        http2 = scope["http_version"] == "2"
        raw_headers: Headers = scope["headers"]
        client = scope.get("client")
        result = await self._send(
            self._outbound(
                head,
                scope["method"],
                scope["query_string"],
                raw_headers,
                client[0] if client else None,
                scope["scheme"],
                body,
            ),
            body,
        )
        wants = _takes_trailers(scope)
        rpc = wants and grpc.is_grpc(raw_headers)
        if isinstance(result, _Refused):
            if result.clients:
                await reject(send, result.refusal, http2, rpc=rpc)
            else:
                await refuse(send, result.refusal, rpc=rpc)
            return
        response = result.response
        if rpc and (refused := await router_refusal(response)) is not None:
            result.done()  # a node router's own answer to a gRPC call: in gRPC too
            await refuse(send, refused, rpc=True)
            return
        complete = False
        # hypercorn sends trailers on HTTP/2 to a client that said ``te: trailers`` (gRPC's);
        # they must be announced before the body, so only for an upstream that announced them
        # (``Trailer``) or a gRPC response that is not trailers-only (its status comes last),
        # and the h2 library cannot send an empty trailer block.
        fields, moved = end_to_end(response.headers), None
        if wants and (split := grpc.trailers_only(fields)) is not None:
            fields, moved = split  # so that the status still ends the stream, after the body
        trailers = wants and (
            moved is not None
            or any(n == b"trailer" for n, _ in response.headers)
            or grpc.awaits_trailers(response.headers)
        )
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": fields,
                    "trailers": trailers,
                }
            )
            ended = False  # the last piece went out with the end of the body
            while (chunk := await response.piece()) is not None:
                ended = response.complete and not trailers
                await send({"type": "http.response.body", "body": chunk, "more_body": not ended})
            complete = True
        finally:
            result.done()
            if complete:
                if not ended:
                    await send({"type": "http.response.body", "body": b""})
                if trailers:
                    sent = moved or response.trailers
                    if not sent and grpc.awaits_trailers(response.headers):
                        sent = grpc.UNKNOWN_WITHOUT_TRAILERS
                    await send({"type": "http.response.trailers", "headers": sent})
            else:  # a truncated body must reach the client as a reset, never as complete
                response.close()
