"""The node router: the hop every mesh call takes, off hypercorn for speed.

Two kinds of listener (DESIGN.md §1):

- **inbound** (one per node, default port 15006, Istio's): mTLS, presenting the node's identity
  and requiring a certificate of the mesh CA from the caller. A request names the instance it is
  for (``x-shoal-instance``, set by the calling proxy, which already routed and picked); the
  router checks that instance is one of its own, reads the caller's SPIFFE ID from the TLS
  session, applies the workload's PeerAuthentication mode and AuthorizationPolicies on the
  normalised path (403 ``denied``), and forwards over loopback. A refusal made before any byte
  reached the instance says so (``x-shoal-unsent``), so the caller may retry it elsewhere.
- **outbound** (one per local service, on loopback, made when its first instance starts): what
  that service's instances call (``SHOAL_MESH_URL``). It routes by Host exactly like the gateway
  and forwards to the picked instance's node router over mTLS, presenting the calling service's
  own identity, so the callee sees the real caller.

It runs on aiohttp's low-level server (C HTTP parser, no framework), chosen over hypercorn
because this hop is paid twice per east-west call (DESIGN.md §4); ``bench/`` measures it. Unlike
hypercorn, aiohttp hands the handler its transport, so the peer certificate is read from the
transport's ``ssl_object`` directly.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Callable

from aiohttp import web

from shoal.http.headers import (
    IDENTITY,
    INTERNAL_PREFIX,
    Headers,
    end_to_end,
    expects_body,
    request_headers,
)
from shoal.http.paths import SlashPolicy, normalize_path
from shoal.http.refusal import (
    CAUSE_HEADER,
    DENIED,
    MTLS_REQUIRED,
    UPSTREAM_CONNECT_ERROR,
    Refusal,
)
from shoal.identity.spiffe import node_id, peer_identity, service_id
from shoal.mesh.activation import Activator
from shoal.mesh.credentials import Credentials
from shoal.mesh.forward import INSTANCE, Forwarder, Outbound
from shoal.mesh.proxy_state import ProxyState
from shoal.mesh.sniff import SniffingSite
from shoal.mesh.upstream import UNSENT, UpstreamError, UpstreamResponse, Upstreams

log = logging.getLogger(__name__)

SERVER = "shoal"  # the Server header of answers without one (Envoy says "envoy")
SHUTDOWN_GRACE = 5.0  # seconds a request in flight may take to finish once the router stops
_INSTANCE = INSTANCE.decode()


def _refusal(refusal: Refusal, *, unsent: bool = False) -> web.Response:
    """The router's own answer; ``unsent``: nothing reached an instance (safe to retry)."""
    headers = {CAUSE_HEADER.decode(): refusal.cause, "server": SERVER}
    headers.update((n.decode(), v.decode()) for n, v in refusal.headers)
    if unsent:
        headers[UNSENT] = "1"
    return web.Response(
        status=refusal.status,
        body=refusal.body(),
        content_type="text/plain",
        charset="utf-8",
        headers=headers,
    )


def _mesh_headers(request: web.BaseRequest) -> tuple[Headers, dict[str, str]]:
    """The request's headers without Shoal's internal ones (only routers may set those)."""
    raw = [
        (n, v)
        for n, v in ((bytes(n).lower(), bytes(v)) for n, v in request.raw_headers)
        if not n.startswith(INTERNAL_PREFIX) and n not in IDENTITY
    ]
    return raw, {n.decode("latin-1"): v.decode("latin-1") for n, v in raw}


def _target(request: web.BaseRequest) -> str | Refusal:
    """The normalised path, as the gateway makes it, so routes and policies see one form."""
    raw = request.raw_path.split("?", 1)[0].encode("latin-1")
    return normalize_path(raw, SlashPolicy.KEEP)


async def _relay(
    request: web.BaseRequest, upstream: UpstreamResponse, done: Callable[[], None]
) -> web.StreamResponse:
    """Stream ``upstream``'s response to the caller; ``done`` once it is over."""
    complete = False
    try:
        response = web.StreamResponse(status=upstream.status)
        for name, value in end_to_end(upstream.headers):
            if name != b"x-shoal-unsent":  # only this router may say nothing was sent
                response.headers.add(name.decode("latin-1"), value.decode("latin-1"))
        response.headers.setdefault("server", SERVER)  # not aiohttp's name and version
        await response.prepare(request)
        async for chunk in upstream.chunks():
            await response.write(chunk)
        complete = True
    finally:
        done()
        if not complete:
            upstream.close()
    await response.write_eof()
    return response


class Router:
    """A node's router: its inbound mTLS listener and the outbound listeners of its services."""

    def __init__(
        self,
        proxy_state: ProxyState,
        credentials: Credentials,
        *,
        node: str,
        trust_domain: str,
        upstreams: Upstreams | None = None,
        activator: Activator | None = None,
    ) -> None:
        self.proxy_state = proxy_state
        self.credentials = credentials
        self.node = node
        self.trust_domain = trust_domain
        self.identity = str(node_id(trust_domain, node))
        self.upstreams = upstreams or Upstreams()
        self.inbound_port = 0
        self.activator = activator
        self._runners: list[web.ServerRunner] = []
        self._outbound: dict[str, int] = {}
        self._opening: dict[str, asyncio.Lock] = {}

    async def _listen(
        self, handler: Callable[[web.BaseRequest], object], host: str, port: int, tls: bool
    ) -> int:
        server = web.Server(handler, handler_cancellation=True, access_log=None)  # type: ignore[arg-type]
        runner = web.ServerRunner(server, shutdown_timeout=SHUTDOWN_GRACE)
        await runner.setup()
        self._runners.append(runner)
        site: web.BaseSite
        if tls:
            site = SniffingSite(
                runner,
                host,
                port,
                ssl_context=self.credentials.server_context(self.identity),
                # STRICT everywhere: plaintext connections close before a byte is read.
                plaintext=lambda: self.proxy_state.plaintext_allowed,
            )
        else:
            site = web.TCPSite(runner, host, port)
        await site.start()
        return int(runner.addresses[-1][1])

    async def start(self, host: str, port: int) -> int:
        """Get the node's certificate, then serve the inbound listener; return its port."""
        await self.credentials.ready(self.identity)
        self.inbound_port = await self._listen(self.inbound, host, port, tls=True)
        return self.inbound_port

    async def outbound(self, service: str) -> int:
        """The loopback port ``service``'s instances call out through (opened on first use,
        once the service's certificate is held)."""
        port = self._outbound.get(service)
        if port is not None:
            return port
        # One lock per service: two instances starting together share one listener.
        async with self._opening.setdefault(service, asyncio.Lock()):
            identity = str(service_id(self.trust_domain, service))
            await self.credentials.ready(identity)
            port = self._outbound.get(service)  # another instance may have opened it meanwhile
            if port is None:
                forwarder = Forwarder(
                    self.proxy_state,
                    self.upstreams,
                    mesh_tls=lambda: self.credentials.client_context(identity),
                    activator=self.activator,
                )
                port = await self._listen(
                    lambda request: self.outbound_request(forwarder, request),
                    "127.0.0.1",
                    0,
                    tls=False,
                )
                self._outbound[service] = port
                log.info("outbound listener for %s on 127.0.0.1:%d", service, port)
        return port

    async def outbound_request(
        self, forwarder: Forwarder, request: web.BaseRequest
    ) -> web.StreamResponse:
        """Route and forward one request a local instance sent."""
        path = _target(request)
        if isinstance(path, Refusal):
            return _refusal(path)
        raw, fields = _mesh_headers(request)
        peer = request.transport.get_extra_info("peername") if request.transport else None
        query = request.query_string
        result = await forwarder.forward(
            Outbound(
                method=request.method,
                host=fields.get("host", ""),
                path=path,
                raw_target=path + (f"?{query}" if query else ""),
                query=query,
                headers=request_headers(raw, fields, peer[0] if peer else None, "http"),
                fields=fields,
                body=request.content.iter_any()
                if expects_body(request.method, fields, False)
                else None,
                content_length=request.content_length,
            )
        )
        if isinstance(result, Refusal):
            return _refusal(result)
        return await _relay(request, result.response, result.done)

    async def inbound(self, request: web.BaseRequest) -> web.StreamResponse:
        """Check and forward one request a proxy sent for one of this node's instances."""
        key = request.headers.get(_INSTANCE, "")
        endpoint = self.proxy_state.instances.get(key)
        if endpoint is None or endpoint.node != self.node or not endpoint.mtls:
            missing = f"no instance {key!r} on {self.node}"
            return _refusal(Refusal(503, UPSTREAM_CONNECT_ERROR, missing), unsent=True)
        workload = self.proxy_state.workload(endpoint)
        ssl_object: ssl.SSLObject | None = (
            request.transport.get_extra_info("ssl_object") if request.transport else None
        )
        if ssl_object is None and workload.mtls_mode == "STRICT":
            return _refusal(Refusal(403, MTLS_REQUIRED, f"{endpoint.service} accepts mTLS only"))
        caller = peer_identity(ssl_object.getpeercert()) if ssl_object is not None else None
        path = _target(request)
        if isinstance(path, Refusal):
            return _refusal(path, unsent=True)
        decision = workload.authz.check(str(caller) if caller else None, request.method, path)
        if not decision.allowed:
            log.info("denied %s %s %s → %s: %s", caller, request.method, path, key, decision.reason)
            return _refusal(Refusal(403, DENIED, decision.reason))
        raw, fields = _mesh_headers(request)
        headers = [(n, v) for n, v in raw]
        if caller is not None:  # Envoy's x-forwarded-client-cert: who called, verified
            headers.append(
                (b"x-forwarded-client-cert", f"By={self.identity};URI={caller}".encode())
            )
        query = request.query_string
        try:
            upstream = await self.upstreams.request(
                endpoint.authority,
                request.method,
                path + (f"?{query}" if query else ""),
                headers,
                request.content.iter_any() if expects_body(request.method, fields, False) else None,
            )
        except UpstreamError as e:
            return _refusal(Refusal(e.status, e.cause, str(e)), unsent=not e.sent)
        return await _relay(request, upstream, lambda: None)

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to ``SHUTDOWN_GRACE``), close every
        connection and the upstream pool."""
        for runner in self._runners:
            # aiohttp's own sequence: close the listener, then idle keep-alive connections at
            # once, then the rest as their requests end. Closing only the listening socket would
            # leave connections open (and Python 3.12+'s Server.wait_closed() waiting on them).
            await runner.cleanup()
        await self.upstreams.close()
