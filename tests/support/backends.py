"""Real HTTP backends for tests: small aiohttp servers that say who they are and what they got."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from aiohttp import web

from shoal.resources.endpoint import Endpoint


@dataclass
class Backend:
    """A running echo server and the requests it has seen."""

    name: str
    port: int
    seen: list[dict[str, object]] = field(default_factory=list)

    def endpoint(self, service: str, revision: str, state: str = "ready") -> Endpoint:
        """Its registry record as an instance of ``service`` revision ``revision``."""
        return Endpoint(
            id=self.name,
            service=service,
            revision=revision,
            node="test",
            address="127.0.0.1",
            port=self.port,
            labels=(("app", service), ("version", revision)),
            state=state,  # type: ignore[arg-type]
        )


@asynccontextmanager
async def echo_backend(
    name: str,
    delay: Callable[[web.BaseRequest], float] | None = None,
    status: Callable[[web.BaseRequest], int] | None = None,
    reset: Callable[[web.BaseRequest], bool] | None = None,
    tls: ssl.SSLContext | None = None,
    port: int = 0,
) -> AsyncIterator[Backend]:
    """An echo server on a loopback port (``port``, else a free one; over ``tls`` when given);
    answers JSON of method, path, headers, body.

    ``delay`` holds the answer, ``status`` chooses it, ``reset`` drops the connection instead.
    """
    backend = Backend(name=name, port=0)

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        body = await request.read()
        record = {
            "method": request.method,
            "path": request.raw_path,
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body_len": len(body),
        }
        backend.seen.append(record)
        if delay is not None:
            await asyncio.sleep(delay(request))  # a slow backend: holding the answer is the point
        if reset is not None and reset(request) and request.transport is not None:
            request.transport.abort()
            raise asyncio.CancelledError
        return web.Response(
            text=json.dumps(record),
            headers={"x-backend": name},
            status=status(request) if status is not None else 200,
            content_type="application/json",
        )

    server = web.Server(handle, access_log=None)
    loop = asyncio.get_running_loop()
    srv = await loop.create_server(server, "127.0.0.1", port, ssl=tls)
    backend.port = int(srv.sockets[0].getsockname()[1])
    try:
        yield backend
    finally:
        srv.close()
        await srv.wait_closed()
        await server.shutdown(0.1)
