"""The node router: the hop every east-west call takes, off hypercorn for speed.

For now it serves one outbound listener on loopback that local instances call (their
``SHOAL_MESH_URL``); it routes by Host exactly like the gateway and forwards to the chosen
instance. It runs on aiohttp's low-level server (C HTTP parser, no framework), chosen over
hypercorn because this hop is paid twice per east-west call (DESIGN.md §4); ``bench/`` measures
it.
"""

from __future__ import annotations

import logging

from aiohttp import web

from shoal.mesh.forward import Forwarder, Outbound
from shoal.mesh.headers import end_to_end, expects_body, request_headers
from shoal.mesh.proxy import Refusal

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0  # seconds a request in flight may take to finish once the router stops


def _refusal(status: int, cause: str, message: str) -> web.Response:
    return web.Response(
        status=status, text=f"{cause}: {message}\n", headers={"x-shoal-cause": cause}
    )


class Router:
    """Routes and forwards requests arriving on a node's mesh listener."""

    def __init__(self, forwarder: Forwarder) -> None:
        self.forwarder = forwarder
        self._runner: web.ServerRunner | None = None
        self.port = 0

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """Forward one request."""
        raw = [(bytes(n).lower(), bytes(v)) for n, v in request.raw_headers]
        fields = {n.decode("latin-1"): v.decode("latin-1") for n, v in raw}
        peer = request.transport.get_extra_info("peername") if request.transport else None
        length = request.content_length
        result = await self.forwarder.forward(
            Outbound(
                method=request.method,
                host=fields.get("host", ""),
                path=request.path,
                raw_target=request.raw_path,
                query=request.query_string,
                headers=request_headers(raw, fields, peer[0] if peer else None, "http"),
                fields=fields,
                body=request.content.iter_any()
                if expects_body(request.method, fields, False)
                else None,
                content_length=length,
            )
        )
        if isinstance(result, Refusal):
            return _refusal(result.status, result.cause, result.message)
        upstream = result.response
        complete = False
        try:
            response = web.StreamResponse(status=upstream.status)
            for name, value in end_to_end(upstream.headers):
                response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
            await response.prepare(request)
            async for chunk in upstream.chunks():
                await response.write(chunk)
            complete = True
        finally:
            result.done()
            if not complete:
                upstream.close()
        await response.write_eof()
        return response

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; return the bound port."""
        server = web.Server(self.handle, handler_cancellation=True, access_log=None)
        self._runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port).start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to ``SHUTDOWN_GRACE``), close every
        connection and the upstream pool."""
        if self._runner is not None:
            # aiohttp's own sequence: close the listener, then idle keep-alive connections at
            # once, then the rest as their requests end. Closing only the listening socket would
            # leave connections open (and Python 3.12+'s Server.wait_closed() waiting on them).
            await self._runner.cleanup()
        await self.forwarder.upstreams.close()
