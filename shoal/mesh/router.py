"""The node router: the hop every mesh call takes, off hypercorn for speed.

Two kinds of listener:

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

It runs on Shoal's own HTTP/1.1 core (:mod:`shoal.mesh.h1server` and :mod:`shoal.mesh.upstream`
on asyncio Protocols, llhttp parsing), not hypercorn: this hop is paid twice per east-west call,
and it forwards what it received byte for byte — the raw target and query, header values as
sent (minus hop-by-hop ones), bodies in any framing, trailers. ``Expect: 100-continue`` is
answered here (once, when the body is first read) and not forwarded. The peer certificate is
read from the connection's ``ssl_object``.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping

from shoal.http import grpc
from shoal.http.h1 import HeadLimits
from shoal.http.headers import (
    HOP_BY_HOP,
    IDENTITY,
    INTERNAL_PREFIX,
    Headers,
    end_to_end,
    request_headers,
)
from shoal.http.paths import SlashPolicy, normalize_path
from shoal.http.refusal import (
    DENIED,
    MTLS_REQUIRED,
    UPSTREAM_CONNECT_ERROR,
    Refusal,
)
from shoal.http.trace import Span, hop
from shoal.identity.spiffe import node_id, peer_identity, service_id
from shoal.mesh.access_log import AccessLog, Entry, served_by
from shoal.mesh.activation import Activator
from shoal.mesh.credentials import Credentials
from shoal.mesh.forward import INSTANCE, Direct, Forwarder, Outbound
from shoal.mesh.h1server import Exchange, Handler, Server
from shoal.mesh.h2exchange import H2Exchange
from shoal.mesh.h2server import ByPreface, H2Server
from shoal.mesh.h2upstream import H2Upstreams
from shoal.mesh.matching import NO_LABELS
from shoal.mesh.peer_uid import socket_owner
from shoal.mesh.proxy_state import ProxyState
from shoal.mesh.relay import relay, router_refusal
from shoal.mesh.sniff import serve_sniffing
from shoal.mesh.upstream import UNSENT, UpstreamError, UpstreamResponse, Upstreams

Labels = tuple[tuple[str, str], ...]

log = logging.getLogger(__name__)

SHUTDOWN_GRACE = 5.0  # seconds a request in flight may take to finish once the router stops
_UNSENT = UNSENT.encode()
_DROP = frozenset({b"expect"})  # answered by this hop's server, never forwarded
_ANSWER_DROP = HOP_BY_HOP | {_UNSENT}  # an instance's answer: only this router says "unsent"


async def _refuse(
    exchange: Exchange | H2Exchange,
    refusal: Refusal,
    entry: Entry | None,
    *,
    unsent: bool = False,
) -> None:
    """The router's own answer (said in the access log's ``entry``); ``unsent``: nothing
    reached an instance (safe to retry)."""
    if entry is not None:
        entry.answered(refusal.status, refusal.cause)
    await exchange.refuse(refusal, [(_UNSENT, b"1")] if unsent else ())


def _mesh_fields(exchange: Exchange | H2Exchange) -> Headers:
    """The request's end-to-end fields without Shoal's internal ones (only routers set those)."""
    return [
        (n, v)
        for n, v in end_to_end(exchange.head.fields)
        if not n.startswith(INTERNAL_PREFIX) and n not in IDENTITY and n not in _DROP
    ]


def _traced(fields: Headers, rng: random.Random) -> tuple[Headers, Span]:
    """``fields`` with this hop's ``traceparent`` in place of the caller's, and this hop's
    span (:mod:`shoal.http.trace`)."""
    given = next((v for n, v in fields if n == b"traceparent"), None)
    span = hop(given.decode("latin-1") if given is not None else None, rng)
    kept = [(n, v) for n, v in fields if n != b"traceparent"] if given is not None else fields
    kept.append((b"traceparent", span.header()))
    return kept, span


def _trace(entry: Entry, span: Span, headers: Headers) -> None:
    """The request id and this hop's span, for the access log."""
    entry.rid = next((v for n, v in headers if n == b"x-request-id"), None)
    entry.span = span


def _as_dict(fields: Iterable[tuple[bytes, bytes]]) -> dict[str, str]:
    return {n.decode("latin-1"): v.decode("latin-1") for n, v in fields}


def _target(exchange: Exchange | H2Exchange) -> tuple[str, str] | Refusal:
    """The normalised path (as the gateway makes it, so routes and policies see one form) and
    the raw query, as sent."""
    path, _, query = exchange.head.target.partition(b"?")
    normal = normalize_path(path, SlashPolicy.KEEP)
    return normal if isinstance(normal, Refusal) else (normal, query.decode("latin-1"))


def _answer_fields(upstream: UpstreamResponse) -> Headers:
    """An instance's end-to-end response fields: only this router may say "unsent"."""
    return end_to_end(upstream.headers, _ANSWER_DROP)


def _caller(exchange: Exchange, router: str) -> tuple[str | None, Headers]:
    """The SPIFFE ID of the connection's verified client certificate, and the fields that say
    so to the instance (Envoy's x-forwarded-client-cert, naming ``router``): read once per
    connection (TLS 1.3 cannot change it), not per request."""
    memo = exchange.memo
    if "caller" not in memo:
        ssl_object = exchange.ssl_object
        found = peer_identity(ssl_object.getpeercert()) if ssl_object else None
        caller = str(found) if found is not None else None
        xfcc = f"By={router};URI={caller}".encode()
        memo["caller"] = caller, [] if caller is None else [(b"x-forwarded-client-cert", xfcc)]
    known: tuple[str | None, Headers] = memo["caller"]
    return known


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
        head_limits: HeadLimits = HeadLimits(),
        tunnel_idle_timeout: float = 300.0,
        callers: Callable[[str], frozenset[int]] | None = None,
        access_log: AccessLog | None = None,
    ) -> None:
        self.proxy_state = proxy_state
        self.head_limits = head_limits  # at least the edge's (EdgeLimits.head_limits(inner=True))
        self.tunnel_idle_timeout = tunnel_idle_timeout  # a WebSocket with no byte either way
        self.credentials = credentials
        self.node = node
        self.trust_domain = trust_domain
        self.identity = str(node_id(trust_domain, node))
        # service -> the uids its instances run as (default: this router's own)
        self._callers = callers or (lambda service: frozenset({os.getuid()}))
        self.upstreams = upstreams or Upstreams()
        self.h2_upstreams = H2Upstreams()  # to instances that speak HTTP/2 (h2c, gRPC)
        self.rng = random.Random()  # span and trace ids
        self.access_log = access_log
        self.inbound_port = 0
        self.activator = activator
        self._listeners: list[asyncio.AbstractServer] = []
        self._servers: list[Server] = []
        self._h2_servers: list[H2Server] = []  # outbound listeners' h2c (gRPC) side
        # (service, its instances' labels) -> port: one listener per revision's labels, so
        # that routes may match on the caller's (Istio's ``sourceLabels``)
        self._outbound: dict[tuple[str, Labels], int] = {}
        self._opening: dict[tuple[str, Labels], asyncio.Lock] = {}

    def _server(
        self, handler: Handler, admit: Callable[[asyncio.Transport], bool] | None = None
    ) -> Server:
        server = Server(
            handler,
            limits=self.head_limits,
            tunnel_idle_timeout=self.tunnel_idle_timeout,
            admit=admit,
        )
        self._servers.append(server)
        return server

    async def start(self, host: str, port: int) -> int:
        """Get the node's certificate, then serve the inbound listener; return its port."""
        await self.credentials.ready(self.identity)
        listener = await serve_sniffing(
            self._server(self.inbound),
            host,
            port,
            ssl_context=self.credentials.server_context(self.identity),
            # STRICT everywhere: plaintext connections close before a byte is read.
            plaintext=lambda: self.proxy_state.plaintext_allowed,
        )
        self._listeners.append(listener)
        self.inbound_port = int(listener.sockets[0].getsockname()[1])
        return self.inbound_port

    async def outbound(self, service: str, labels: Mapping[str, str] = NO_LABELS) -> int:
        """The loopback port the instances of ``service`` labelled ``labels`` call out through
        (opened on first use, once the service's certificate is held)."""
        key = service, tuple(sorted(labels.items()))
        port = self._outbound.get(key)
        if port is not None:
            return port
        # One lock per listener: two instances starting together share one.
        async with self._opening.setdefault(key, asyncio.Lock()):
            identity = str(service_id(self.trust_domain, service))
            await self.credentials.ready(identity)
            port = self._outbound.get(key)  # another instance may have opened it meanwhile
            if port is None:
                forwarder = Forwarder(
                    self.proxy_state,
                    self.upstreams,
                    trust_domain=self.trust_domain,
                    mesh_tls=lambda: self.credentials.client_context(identity),
                    activator=self.activator,
                    source=dict(key[1]),
                )

                async def handle(exchange: Exchange | H2Exchange) -> None:
                    await self.outbound_request(forwarder, exchange)

                admit = functools.partial(self._instance_caller, self._callers(service))
                h1, h2 = self._server(handle), H2Server(handle)
                self._h2_servers.append(h2)
                listener = await asyncio.get_running_loop().create_server(
                    lambda: ByPreface(h1, h2, admit), "127.0.0.1", 0
                )
                self._listeners.append(listener)
                port = int(listener.sockets[0].getsockname()[1])
                self._outbound[key] = port
                shown = ",".join(f"{k}={v}" for k, v in key[1])
                log.info("outbound listener for %s (%s) on 127.0.0.1:%d", service, shown, port)
        return port

    def _instance_caller(self, uids: frozenset[int], transport: asyncio.Transport) -> bool:
        """Whether a connection to a service's outbound listener comes from a process running
        as its instances do (one of ``uids``): calls leave under the service's identity, so no
        other service or local user may use them. The kernel's socket table says whose it is."""
        peer, local = transport.get_extra_info("peername"), transport.get_extra_info("sockname")
        owner = socket_owner(peer, local) if peer and local else None
        if owner in uids:
            return True
        log.warning("refused a connection to %s from uid %s: not an instance's", local, owner)
        return False

    @staticmethod
    async def _logged(
        log: AccessLog,
        serve: Callable[[Entry | None], Awaitable[None]],
        exchange: Exchange | H2Exchange,
        kind: str,
    ) -> None:
        """Run ``serve`` with an access-log entry for ``exchange`` (its ``kind``: inbound or
        outbound), logged once it is over."""
        head, entry = exchange.head, Entry.of(exchange)
        entry.listener, entry.authority = kind, head.get(b"host") or b""
        entry.bytes_in = head.content_length
        try:
            await serve(entry)
        finally:
            log.done(entry)

    async def outbound_request(self, forwarder: Forwarder, exchange: Exchange | H2Exchange) -> None:
        """Route and forward one request a local instance sent."""
        log = self.access_log
        if log is None:  # nothing to gather: no wrapper on the hot path
            await self._outbound_request(forwarder, exchange, None)
            return
        await self._logged(
            log,
            lambda entry: self._outbound_request(forwarder, exchange, entry),
            exchange,
            "outbound",
        )

    async def _outbound_request(
        self, forwarder: Forwarder, exchange: Exchange | H2Exchange, entry: Entry | None
    ) -> None:
        target = _target(exchange)
        if isinstance(target, Refusal):
            await _refuse(exchange, target, entry)
            return
        path, query = target
        raw, span = _traced(_mesh_fields(exchange), self.rng)
        fields = _as_dict(raw)
        peer = exchange.peer
        headers = request_headers(raw, fields, peer[0] if peer else None, "http")
        began = time.perf_counter()  # (the loop's clock ticks in whole ms on uvloop)
        if entry is not None:
            _trace(entry, span, headers)
        outbound = Outbound(
            method=exchange.head.method.decode(),
            host=fields.get("host", ""),
            path=path,
            raw_target=path + (f"?{query}" if query else ""),
            query=query,
            headers=headers,
            fields=fields,
            body=exchange.body() if exchange.has_body else None,
            content_length=exchange.head.content_length,
            upgrade=exchange.upgrade,
            client_ip=peer[0] if peer else None,
        )
        result = await forwarder.forward(outbound)
        if entry is not None:
            entry.upstream = time.perf_counter() - began
            entry.route = outbound.route or None
        if isinstance(result, Refusal):
            await _refuse(exchange, result, entry)
            return
        if isinstance(result, Direct):
            if entry is not None:
                entry.status = result.status
            await exchange.respond(result.status, result.headers, result.body)
            return
        response = result.response
        if entry is not None:
            served_by(entry, result)
        if isinstance(exchange, H2Exchange) and grpc.is_grpc(exchange.head.fields):
            if (refused := await router_refusal(response)) is not None:
                result.done()  # the instance's router refused a gRPC call: say it in gRPC
                await exchange.refuse(refused)
                return
        sent = await relay(exchange, response, _answer_fields(response), result.done)
        if entry is not None:
            entry.bytes_out = sent

    async def inbound(self, exchange: Exchange) -> None:
        """Check and forward one request a proxy sent for one of this node's instances."""
        log = self.access_log
        if log is None:
            await self._inbound(exchange, None)
            return
        await self._logged(log, lambda entry: self._inbound(exchange, entry), exchange, "inbound")

    async def _inbound(self, exchange: Exchange, entry: Entry | None) -> None:
        key = (exchange.head.get(INSTANCE) or b"").decode("latin-1")
        snapshot = self.proxy_state.snapshot  # one snapshot for the whole request
        endpoint = snapshot.instances.get(key)
        if endpoint is None or endpoint.node != self.node or not endpoint.mtls:
            missing = f"no instance {key!r} on {self.node}"
            refusal = Refusal(503, UPSTREAM_CONNECT_ERROR, missing)
            await _refuse(exchange, refusal, entry, unsent=True)
            return
        if entry is not None:
            entry.endpoint, entry.attempts = endpoint, 1
        inbound = self.proxy_state.stats.inbound
        inbound[key] = inbound.get(key, 0) + 1
        workload = snapshot.workload(endpoint)
        ssl_object = exchange.ssl_object
        if ssl_object is None and workload.mtls_mode == "STRICT":
            refusal = Refusal(403, MTLS_REQUIRED, f"{endpoint.service} accepts mTLS only")
            await _refuse(exchange, refusal, entry)
            return
        # A caller over TLS is of our trust domain: the handshake refused any other
        # (shoal.mesh.handshake).
        caller, caller_fields = _caller(exchange, self.identity)
        if entry is not None:
            entry.caller = caller
        target = _target(exchange)
        if isinstance(target, Refusal):
            await _refuse(exchange, target, entry, unsent=True)
            return
        path, query = target
        method = exchange.head.method.decode()
        decision = workload.authz.check(caller, method, path)
        if not decision.allowed:
            # The policy is the operator's business: the log and metrics name it, the caller
            # reads only "denied".
            log.info("denied %s %s %s → %s: %s", caller, method, path, key, decision.reason)
            self.proxy_state.stats.deny(endpoint.service, decision.policy)
            await _refuse(exchange, Refusal(403, DENIED, ""), entry)
            return
        headers, span = _traced(_mesh_fields(exchange), self.rng)
        if entry is not None:
            _trace(entry, span, headers)
        headers += caller_fields
        sent_target = path + (f"?{query}" if query else "")
        body = exchange.body() if exchange.has_body else None
        began = time.perf_counter()  # (the loop's clock ticks in whole ms on uvloop)
        try:
            if exchange.upgrade:  # WebSocket: HTTP/1.1's Upgrade, whatever else the instance speaks
                upstream = await self.upstreams.request(
                    endpoint.authority, method, sent_target, headers, body, tunnel=True
                )
            else:
                pool = self.upstreams if endpoint.protocol == "http" else self.h2_upstreams
                upstream = await pool.request(
                    endpoint.authority, method, sent_target, headers, body
                )
        except UpstreamError as e:
            refusal = Refusal(e.status, e.cause, str(e))
            await _refuse(exchange, refusal, entry, unsent=not e.sent)
            return
        if entry is None:
            await relay(exchange, upstream, _answer_fields(upstream), lambda: None)
            return
        entry.status, entry.upstream = upstream.status, time.perf_counter() - began
        entry.bytes_out = await relay(exchange, upstream, _answer_fields(upstream), lambda: None)

    async def stop(self) -> None:
        """Stop listening, let requests in flight finish (up to ``SHUTDOWN_GRACE``), close every
        connection and the upstream pool."""
        for listener in self._listeners:
            listener.close()
        for server in self._servers:
            await server.close(SHUTDOWN_GRACE)
        for h2 in self._h2_servers:
            await h2.close(SHUTDOWN_GRACE)
        for listener in self._listeners:
            await listener.wait_closed()
        await self.upstreams.close()
        await self.h2_upstreams.close()
