"""The gateway's ASGI app: a raw proxy, no framework in the hot path.

Per request: one snapshot read and decision (:meth:`shoal.mesh.proxy.Proxy.decide`), one pooled
upstream request, bodies streamed both ways. Every answer the gateway makes itself carries
``x-shoal-cause``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from shoal.mesh.headers import Headers, end_to_end, expects_body, request_headers
from shoal.mesh.proxy import Proxy, Refusal
from shoal.mesh.upstream import UpstreamError, Upstreams

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


async def refuse(
    send: Send, status: int, cause: str, message: str, extra: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """Answer a request the gateway will not forward."""
    body = f"{cause}: {message}\n".encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain; charset=utf-8"),
                (b"content-length", str(len(body)).encode()),
                (b"x-shoal-cause", cause.encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def _request_body(receive: Receive) -> AsyncIterator[bytes]:
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        chunk = message.get("body", b"")
        if chunk:
            yield chunk
        if not message.get("more_body", False):
            return


class GatewayApp:
    """ASGI application forwarding every HTTP request through the mesh."""

    def __init__(self, proxy: Proxy, upstreams: Upstreams, *, scheme_header: bool = True) -> None:
        self.proxy = proxy
        self.upstreams = upstreams
        self.scheme_header = scheme_header

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await self.upstreams.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_headers: Headers = scope["headers"]
        fields = {n.decode("latin-1"): v.decode("latin-1") for n, v in raw_headers}
        host = fields.get("host", "")
        method: str = scope["method"]
        path: str = scope["path"]
        decision = self.proxy.decide(host, method, path, fields)
        if isinstance(decision, Refusal):
            await refuse(send, decision.status, decision.cause, decision.message)
            return
        target = decision.path if decision.path != path else scope["raw_path"].decode("latin-1")
        if scope["query_string"]:
            target += "?" + scope["query_string"].decode("latin-1")
        client = scope.get("client")
        headers = request_headers(
            raw_headers, fields, client[0] if client else None, scope["scheme"], decision.authority
        )
        has_body = expects_body(method, fields, scope["http_version"] == "2")
        body = _request_body(receive) if has_body else None
        endpoint, balancer = decision.endpoint, decision.balancer
        balancer.on_start(endpoint)
        try:
            try:
                response = await self.upstreams.request(
                    endpoint, method, target, headers, body, decision.match.route.timeout
                )
            except UpstreamError as e:
                await refuse(send, e.status, e.cause, str(e))
                return
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": end_to_end(response.headers),
                }
            )
            complete = False
            try:
                async for chunk in response.chunks():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                complete = True
            finally:
                if complete:
                    await send({"type": "http.response.body", "body": b""})
                else:  # a truncated body must reach the client as a reset, never as complete
                    response.close()
        finally:
            balancer.on_finish(endpoint)
