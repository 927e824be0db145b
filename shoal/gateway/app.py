"""The gateway's ASGI app: a raw proxy, no framework in the hot path.

Per request: one snapshot read and decision (:meth:`shoal.mesh.proxy.Proxy.decide`), one pooled
upstream request, bodies streamed both ways. Every answer the gateway makes itself carries
``x-shoal-cause``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from typing import Any

from shoal.mesh.forward import Forwarder, Outbound
from shoal.mesh.headers import Headers, end_to_end, expects_body, request_headers
from shoal.mesh.proxy import Refusal

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

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder

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
        raw_headers: Headers = scope["headers"]
        fields = {n.decode("latin-1"): v.decode("latin-1") for n, v in raw_headers}
        method: str = scope["method"]
        client = scope.get("client")
        length = fields.get("content-length")
        result = await self.forwarder.forward(
            Outbound(
                method=method,
                host=fields.get("host", ""),
                path=scope["path"],
                raw_target=scope["raw_path"].decode("latin-1")
                + ("?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""),
                query=scope["query_string"].decode("latin-1"),
                headers=request_headers(
                    raw_headers, fields, client[0] if client else None, scope["scheme"]
                ),
                fields=fields,
                body=_request_body(receive)
                if expects_body(method, fields, scope["http_version"] == "2")
                else None,
                content_length=int(length) if length is not None and length.isdigit() else None,
            )
        )
        if isinstance(result, Refusal):
            await refuse(send, result.status, result.cause, result.message)
            return
        response = result.response
        complete = False
        try:
            await send(
                {
                    "type": "http.response.start",
                    "status": response.status,
                    "headers": end_to_end(response.headers),
                }
            )
            async for chunk in response.chunks():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            complete = True
        finally:
            result.done()
            if complete:
                await send({"type": "http.response.body", "body": b""})
            else:  # a truncated body must reach the client as a reset, never as complete
                response.close()
