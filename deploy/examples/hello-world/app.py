"""The hello/world example of the Istio tutorial Shoal started from, as plain ASGI apps.

``hello`` answers "Hello, World!" and calls ``world`` through the mesh on ``/chain``; ``world``
answers "World, Hello!". Each response names the revision that served it in ``x-version``.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]

VERSION = os.environ.get("SHOAL_REVISION", "dev").encode()
INSTANCE = os.environ.get("SHOAL_INSTANCE", "-").encode()
MESH = os.environ.get("SHOAL_MESH_URL", "http://127.0.0.1:15001")
PROPAGATED = (b"traceparent", b"tracestate", b"x-request-id")


async def _reply(send: Send, status: int, body: bytes) -> None:
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"text/plain"),
                (b"content-length", str(len(body)).encode()),
                (b"x-version", VERSION),
                (b"x-instance", INSTANCE),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _text(greeting: bytes) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    session: aiohttp.ClientSession | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    if session is not None:
                        await session.close()
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        if scope["path"] == "/chain":
            if session is None:
                session = aiohttp.ClientSession()
            # Forward the trace context and request id that came in (what Istio asks of an app
            # too): the mesh then ties this call to the request being served.
            headers = {"Host": "world"}
            for name, value in scope["headers"]:
                if name in PROPAGATED:
                    headers[name.decode("latin-1")] = value.decode("latin-1")
            async with session.get(f"{MESH}/", headers=headers) as r:
                await _reply(send, r.status, await r.read())
            return
        await _reply(send, 200, greeting + b"\n")

    return app


hello = _text(b"Hello, World!")
world = _text(b"World, Hello!")
