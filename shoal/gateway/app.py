"""The gateway's proxy: one handler (:meth:`GatewayApp.serve`) for every request the edge takes —
on Shoal's own HTTP/1.1 and HTTP/2 servers, to which hypercorn hands its connections (see
:mod:`.hypercorn_edge`); hypercorn calls the app itself (ASGI) only for its lifespan. No
framework in the hot path.

Per request: the head checked and the path normalised once (:func:`.hygiene.inspect_head`), one
snapshot read and decision (:meth:`shoal.mesh.proxy_state.ProxyState.decide`), one pooled
upstream request, bodies streamed both ways (the request body through
:class:`.body.RequestBody`, bounded in size and time). Every answer the gateway makes itself
carries ``x-shoal-cause`` (to a gRPC call, in gRPC); a refused request reaches no upstream, and
on HTTP/1.x its connection is closed when the refusal is the client's fault.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any, NamedTuple

from shoal.gateway.body import BodyRefused, RequestBody
from shoal.gateway.hygiene import Head, inspect_head
from shoal.gateway.servers import PortPlan
from shoal.http.headers import (
    HOP_BY_HOP,
    UnderscorePolicy,
    edge_request_headers,
    end_to_end,
    request_id,
)
from shoal.http.limits import EdgeLimits
from shoal.http.paths import SlashPolicy
from shoal.http.refusal import NO_ROUTE, Refusal
from shoal.http.trace import Span, hop
from shoal.mesh.access_log import AccessLog, Entry, served_by
from shoal.mesh.forward import Direct, Forwarded, Forwarder, Outbound
from shoal.mesh.h1server import Exchange
from shoal.mesh.h2exchange import H2Exchange
from shoal.mesh.matching import normalize_host
from shoal.mesh.relay import relay, router_refusal

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


_ANSWER_DROP = HOP_BY_HOP | {b"x-request-id"}  # an answer's: the gateway sets its own


def _note(entry: Entry | None, status: int, cause: str | None = None) -> None:
    """The gateway answered ``status`` itself: say so in the access log's ``entry``, if
    there is one."""
    if entry is not None:
        entry.answered(status, cause)


class _Refused(NamedTuple):
    """Why a request was not forwarded; ``clients``: the client's fault (an HTTP/1.x
    connection then closes, as the rest of its body would follow)."""

    refusal: Refusal
    clients: bool


async def _answer(
    exchange: Exchange | H2Exchange,
    refusal: Refusal,
    *,
    close: bool,
    fields: Iterable[tuple[bytes, bytes]] = (),
) -> None:
    """Answer ``refusal`` (with ``fields``); ``close``: an HTTP/1.x connection closes after it."""
    if close:
        exchange.close_after = True
    await exchange.refuse(refusal, fields)


def _receive(exchange: Exchange | H2Exchange) -> Receive:
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
        access_log: AccessLog | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.access_log = access_log
        self.limits = limits or EdgeLimits()
        self.slashes = slashes
        self.underscores = underscores
        self.trusted_hops = trusted_hops
        self.rng = random.Random()  # span and trace ids

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """hypercorn's lifespan (requests never come this way: see :meth:`serve`)."""
        if scope["type"] != "lifespan":
            raise RuntimeError(f"the gateway serves {scope['type']} through GatewayApp.serve")
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.forwarder.upstreams.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def serve(self, exchange: Exchange | H2Exchange, port: PortPlan | None = None) -> None:
        """Serve one request: an HTTP/1.x one or an HTTP/2 stream (WebSockets over either
        included); a client leaving cancels this at once. On a Gateway's ``port``, the
        server its host matches decides (a redirect to https, or the routes bound to that
        Gateway); elsewhere the mesh's routes apply. With an access log, one line for it."""
        log = self.access_log
        if log is None:
            await self._serve(exchange, port, None)
            return
        entry = Entry.of(exchange)
        try:
            await self._serve(exchange, port, entry)
        finally:
            log.done(entry)

    async def _serve(
        self, exchange: Exchange | H2Exchange, port: PortPlan | None, entry: Entry | None
    ) -> None:
        """:meth:`serve`'s work; what the access log says goes in ``entry`` (when there is
        one) as it is known."""
        request = exchange.head
        target = request.target
        path, _, query = target.partition(b"?")
        method = request.method.decode("latin-1")
        peer = exchange.peer
        client_ip = peer[0] if peer else None
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
            _note(entry, head.status, head.cause)
            self._answered_here(head.status, head.cause)
            await _answer(exchange, head, close=True)
            return
        if entry is not None:
            entry.authority = head.host
        gateway = None
        if port is not None:
            host = normalize_host(head.host)
            bound = port.server_for(host)
            if bound is None:
                refusal = Refusal(
                    404, NO_ROUTE, f"no Gateway server on port {port.port} for {host}"
                )
                _note(entry, 404, NO_ROUTE)
                self._answered_here(404, NO_ROUTE)
                await _answer(exchange, refusal, close=False)
                return
            tls = bound.server.tls
            if tls is not None and tls.https_redirect and exchange.scheme == "http":
                location = f"https://{host}{target.decode('latin-1')}".encode("latin-1")
                _note(entry, 301)
                self._answered_here(301, "")
                await exchange.respond(301, [(b"location", location)], b"")
                return
            gateway = bound.gateway
        loop = asyncio.get_running_loop()
        now = loop.time()
        body = RequestBody(_receive(exchange), self.limits, now) if head.has_body else None
        rid = request_id(head.fields)
        ours = ((b"x-request-id", rid),)  # every answer from here on names the request
        span = hop(head.fields.get("traceparent"), self.rng)
        if entry is not None:
            entry.rid, entry.span, entry.bytes_in = rid, span, head.content_length
        outbound = self._outbound(
            head, method, query, request.fields, client_ip, exchange.scheme, body, rid, span
        )
        outbound.gateway = gateway
        if exchange.upgrade:  # a WebSocket handshake: the tunnel's bytes follow, unframed
            outbound.upgrade, outbound.body = True, exchange.body()
        began = time.perf_counter()  # (the loop's clock ticks in whole milliseconds on uvloop)
        result = await self._send(outbound, body)
        if entry is not None:
            entry.upstream = time.perf_counter() - began
            entry.route = outbound.route or None
        if isinstance(result, _Refused):
            _note(entry, result.refusal.status, result.refusal.cause)
            await _answer(exchange, result.refusal, close=result.clients, fields=ours)
            return
        if isinstance(result, Direct):
            _note(entry, result.status)
            await exchange.respond(result.status, [*result.headers, *ours], result.body)
            return
        response = result.response
        if entry is not None:
            served_by(entry, result)
        rpc = isinstance(exchange, H2Exchange) and exchange.rpc
        if rpc and (refused := await router_refusal(response)) is not None:
            result.done()  # a node router's own answer to a gRPC call: in gRPC too
            await exchange.refuse(refused, ours)
            return
        fields = end_to_end(response.headers, _ANSWER_DROP)
        fields.append(ours[0])
        sent = await relay(exchange, response, fields, result.done)
        if entry is not None:
            entry.bytes_out = sent

    def _answered_here(self, status: int, cause: str) -> None:
        """Count a request the gateway answers before any route (the forwarder counts the
        others)."""
        stats = self.forwarder.proxy_state.stats
        stats.requests += 1
        stats.responded("", "", "", status, cause)

    async def _send(
        self, outbound: Outbound, body: RequestBody | None
    ) -> Forwarded | Direct | _Refused:
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
        rid: bytes,
        span: Span,
    ) -> Outbound:
        """The request to forward: the normalised path with the query as received, the
        client's end-to-end headers plus the forwarding ones, request id ``rid`` and this hop's
        ``span`` as the next one's parent."""
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
                rid=rid,
                traceparent=span.header(),
            ),
            fields=head.fields,
            body=body.chunks() if body is not None else None,
            content_length=head.content_length,
            scheme=scheme,
            client_ip=client_ip,
        )
