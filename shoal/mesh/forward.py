"""The outbound request path every proxy shares: route, fault, pick, send, retry, observe.

One request goes through these stages (linkerd2-proxy's discover → logical → concrete →
endpoint, in one place)::

    decide (route + weighted cluster)  ─► fault injection (delay / abort)
      ─► circuit breaker slot for the cluster (503 overflow when full)
      ─► attempt loop:
           pick an instance (ready, not ejected, not tried yet when another exists)
           send with the attempt's timeout ─► outcome ─► outlier detector
           retry? (retryOn, attempts, idempotency, budget, deadline) ─► jittered backoff
      ─► the response head (the caller streams its body), or a Refusal with its cause

Bodies whose Content-Length is within ``buffer_limit`` are buffered so they can be replayed;
bodies of unknown length (chunked, HTTP/2 without a length: gRPC) stream through a
:class:`~shoal.mesh.replay.Replay`, which keeps them for a retry while they fit the limit;
larger ones stream and are never retried once sent. The route's ``timeout`` bounds
all attempts together, bodies included; ``perTryTimeout`` bounds each attempt's response head.
"""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, replace

from shoal.http import grpc
from shoal.http.headers import Headers, edit, with_authority
from shoal.http.refusal import (
    CAUSE_HEADER,
    CRASH_LOOP,
    FAULT_ABORT,
    NO_HEALTHY_UPSTREAM,
    NO_MESH_IDENTITY,
    OVERFLOW,
    UPSTREAM_CONNECT_ERROR,
    UPSTREAM_TIMEOUT,
    Refusal,
)
from shoal.identity.spiffe import node_id
from shoal.mesh import cors
from shoal.mesh.activation import Activator, crash_looping
from shoal.mesh.clusters import Cluster
from shoal.mesh.hashing import hash_key, new_cookie, set_cookie
from shoal.mesh.matching import NO_LABELS
from shoal.mesh.outcome import Outcome, classify
from shoal.mesh.proxy_state import ClusterState, Decision, ProxyState, Route
from shoal.mesh.replay import Replay
from shoal.mesh.retry import RetryPolicy, attempt_timeout, backoff, should_retry
from shoal.mesh.upstream import UpstreamError, UpstreamResponse, Upstreams
from shoal.resources.endpoint import Endpoint
from shoal.resources.model import HTTPDirectResponse, HTTPRedirect, OriginTLS

Body = AsyncIterator[bytes] | bytes | None

BUFFER_LIMIT = 1 << 20  # bodies up to 1 MiB are buffered and may be retried (Envoy's default)
MIRRORS_MAX = 100  # mirrored copies in flight per proxy; beyond, requests are not copied
MIRROR_TIMEOUT = 30.0  # seconds a mirrored copy may take, answer included


INSTANCE = b"x-shoal-instance"
"""Names the instance a request sent to a node router is for (``service/id``)."""


def _target(req: Outbound, route: Route) -> str:
    """The request target to send: as received, unless the route rewrites the path."""
    if route.rewritten:
        return route.path + (f"?{req.query}" if req.query else "")
    return req.raw_target


def _split(authority: str) -> tuple[str, str]:
    """``host:port`` as (host, port); the port is ``""`` when there is none (an IPv6 literal
    keeps its brackets)."""
    host, colon, port = authority.rpartition(":")
    if colon and port.isdigit() and not authority.endswith("]"):
        return host, port
    return authority, ""


def shadow_authority(authority: str) -> str:
    """Envoy's Host for a mirrored copy: ``-shadow`` after the host name, before any port."""
    host, port = _split(authority)
    return f"{host}-shadow" + (f":{port}" if port else "")


class _NoIdentity(Exception):
    """An instance behind a router was picked before this proxy holds a mesh certificate."""


@dataclass(slots=True, kw_only=True)
class Outbound:
    """One request to forward, as the listener parsed it."""

    method: str
    host: str
    path: str  # decoded, without query: what routes match on
    raw_target: str  # path and query as received: what is sent when no rewrite applies
    query: str
    headers: Headers  # end-to-end headers plus forwarding headers
    fields: dict[str, str]  # the client's headers as a dict, lower-case names
    body: Body
    content_length: int | None = None
    upgrade: bool = False  # a WebSocket handshake: ``body`` is the client's side of the tunnel
    scheme: str = "http"  # as the client sent it (what a redirect keeps)
    client_ip: str | None = None  # the caller's address (a consistentHash key)
    gateway: str | None = None  # the Gateway whose listener received it (its routes apply)
    service: str = ""  # what it was routed to, once known (metrics name it)
    route: str = ""


@dataclass(slots=True)
class Forwarded:
    """The upstream's response head; call ``done`` once its body has been relayed."""

    response: UpstreamResponse
    endpoint: Endpoint
    attempts: int
    done: Callable[[], None]


@dataclass(slots=True)
class Direct:
    """An answer the matched route gives itself (Istio's ``redirect``, ``directResponse``)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes = b""


def redirect_location(
    redirect: HTTPRedirect, scheme: str, authority: str, path: str, query: str
) -> str:
    """Where ``redirect`` sends a request for ``scheme://authority/path?query``: each part
    it names replaced, the rest kept (the port too, unless the scheme or the port changes)."""
    host, port = _split(authority)
    new_scheme = redirect.scheme or scheme
    if redirect.port is not None:
        port = str(redirect.port)
    elif new_scheme != scheme:
        port = ""  # the new scheme's own port
    netloc = (redirect.authority or host) + (f":{port}" if port else "")
    target = redirect.uri or path
    return f"{new_scheme}://{netloc}{target}" + (f"?{query}" if query else "")


@dataclass(slots=True)
class _Attempt:
    endpoint: Endpoint
    outcome: Outcome
    response: UpstreamResponse | None = None
    error: UpstreamError | None = None


class Forwarder:
    """The proxy of one process (gateway or node router): sends each request where its
    :class:`~shoal.mesh.proxy_state.ProxyState` decides, and records what happened there."""

    def __init__(
        self,
        proxy_state: ProxyState,
        upstreams: Upstreams,
        *,
        trust_domain: str,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
        buffer_limit: int = BUFFER_LIMIT,
        mesh_tls: Callable[[], ssl.SSLContext | None] = lambda: None,
        activator: Activator | None = None,
        source: Mapping[str, str] = NO_LABELS,
    ) -> None:
        self.proxy_state = proxy_state
        self.source = source  # the labels of the workload whose calls this forwards
        self.upstreams = upstreams
        self.mesh_tls = mesh_tls  # the client context presenting this caller's identity
        # A node's router must present its node's SPIFFE ID: by node, computed once.
        self.trust_domain = trust_domain
        self._node_ids: dict[str, str] = {}
        self.activator = activator  # holds requests for destinations scaled to zero
        self.clock = clock
        self.rng = rng or proxy_state.rng
        self.buffer_limit = buffer_limit
        self._mirrors: set[asyncio.Task[None]] = set()  # copies in flight (see _mirror)
        self._origins: dict[OriginTLS, ssl.SSLContext] = {}  # TLS to destinations outside Shoal

    async def forward(self, req: Outbound) -> Forwarded | Refusal | Direct:
        """Route and send ``req``; the caller relays the body and then calls ``done``."""
        stats = self.proxy_state.stats
        stats.requests += 1
        result = await self._forward(req)
        if isinstance(result, Refusal):
            stats.refusals[result.cause] = stats.refusals.get(result.cause, 0) + 1
            stats.responded(req.service, "", req.route, result.status, result.cause)
        elif isinstance(result, Direct):
            stats.responded(req.service, "", req.route, result.status, "")
        else:
            response, endpoint = result.response, result.endpoint
            cause = ""
            if response.status >= 400:  # a router's own answer says why
                cause = next((v for n, v in response.headers if n == CAUSE_HEADER), b"").decode()
            stats.responded(endpoint.service, endpoint.revision, req.route, response.status, cause)
        return result

    def _decide(self, req: Outbound) -> Decision:
        state = self.proxy_state
        return state.decide(
            req.host, req.method, req.path, req.fields, req.query, self.source, req.gateway
        )

    async def _forward(self, req: Outbound) -> Forwarded | Refusal | Direct:
        route = self._decide(req)
        if isinstance(route, Route):
            req.service, req.route = route.cluster.service, route.match.name
        if (
            isinstance(route, Route)
            and not route.cluster.endpoints
            and route.cluster.revisions
            and self.activator
        ):
            failing = crash_looping(route.snapshot.instances.values(), route.cluster.revisions)
            if failing is not None:  # waiting would only end in cold_start_timeout
                why = ", ".join(p for p in (failing.reason, failing.exit) if p)
                return Refusal(
                    503,
                    CRASH_LOOP,
                    f"{failing.revision_key} cannot start ({why}): see shoal status",
                    retry_after=5,
                )
            route = await self.activator.hold(route, functools.partial(self._decide, req))
        if isinstance(route, Refusal):
            return route
        if isinstance(route, HTTPRedirect):
            location = redirect_location(route, req.scheme, req.host, req.path, req.query)
            return Direct(route.redirect_code, [(b"location", location.encode("latin-1"))])
        if isinstance(route, HTTPDirectResponse):
            kind = b"text/plain; charset=utf-8" if route.text else b"application/octet-stream"
            return Direct(route.status, [(b"content-type", kind)] if route.body else [], route.body)
        origin = req.fields.get("origin")
        if origin is not None and cors.allows(route.match.cors_origins, origin):
            policy = route.match.route.cors
            assert policy is not None  # (the origins are its)
            if req.method == "OPTIONS" and "access-control-request-method" in req.fields:
                return Direct(200, cors.preflight_headers(policy, origin))  # never forwarded
            edits = (*route.response_edits, cors.answer_edit(policy, origin))
            route = replace(route, response_edits=edits)
        fault = route.match.route.fault
        if fault is not None:
            if fault.delay is not None and self.rng.random() * 100 < fault.delay.percentage:
                await asyncio.sleep(fault.delay.fixed_delay)
            if fault.abort is not None and self.rng.random() * 100 < fault.abort.percentage:
                return Refusal(fault.abort.http_status, FAULT_ABORT, "fault injected by route")
        mirror = route.match.mirror
        if (
            mirror is not None
            and not req.upgrade
            and self.rng.random() * 100 < route.match.route.mirror_percentage
        ):
            await self._mirror(req, route, mirror)
        state = self.proxy_state.cluster_state(route.cluster)
        if not state.breaker.try_acquire():
            return Refusal(
                503,
                OVERFLOW,
                f"{route.cluster.service}: more than {state.breaker.limit} requests in flight",
            )
        stats, service = self.proxy_state.stats, route.cluster.service
        stats.served[service] = stats.served.get(service, 0) + 1
        stats.in_flight[service] = stats.in_flight.get(service, 0) + 1

        def release() -> None:
            state.breaker.release()
            stats.in_flight[service] -= 1

        try:
            result = await self._attempts(req, route, state)
        except _NoIdentity:
            release()
            return Refusal(503, NO_MESH_IDENTITY, "this proxy has no mesh certificate yet")
        except BaseException:
            release()
            raise
        if isinstance(result, Refusal):
            release()
            return result
        release_endpoint = result.done

        def done() -> None:
            release_endpoint()
            release()

        result.done = done
        return result

    async def _mirror(self, req: Outbound, route: Route, cluster: Cluster) -> None:
        """Send a copy of ``req`` to ``cluster`` in the background (Istio's ``mirror``): its
        answer is read and dropped, and nothing about it slows or fails the request. The copy's
        Host ends in ``-shadow``, as Envoy's. A body is copied when its length is known and
        within the buffer limit (it is buffered for both); a longer or streamed body is not
        copied, nor is the request, nor one beyond :data:`MIRRORS_MAX` copies in flight."""
        if len(self._mirrors) >= MIRRORS_MAX:
            return
        if req.body is not None and not isinstance(req.body, bytes):
            if req.content_length is None or req.content_length > self.buffer_limit:
                return
            req.body = b"".join([chunk async for chunk in req.body])
        task = asyncio.get_running_loop().create_task(self._shadow(req, route, cluster))
        self._mirrors.add(task)
        task.add_done_callback(self._mirrors.discard)

    async def _shadow(self, req: Outbound, route: Route, cluster: Cluster) -> None:
        balancer = route.snapshot.table.balancer_for(cluster)
        shadow = replace(route, cluster=cluster, balancer=balancer)
        state = self.proxy_state.cluster_state(cluster)
        endpoint = self.proxy_state.pick(shadow, state, self.clock(), set())
        if endpoint is None:
            return
        headers = with_authority(edit(req.headers, route.request_edits), shadow_authority(req.host))
        target = _target(req, route)
        attempt = None
        try:
            async with asyncio.timeout(MIRROR_TIMEOUT):
                attempt = await self._send(
                    req, endpoint, target, headers, req.body, MIRROR_TIMEOUT, MIRROR_TIMEOUT, shadow
                )
                if attempt.response is not None:
                    while await attempt.response.piece() is not None:
                        pass  # read and dropped
        except (TimeoutError, UpstreamError, ConnectionError, _NoIdentity):
            pass  # a mirror's failure is its own
        finally:
            if attempt is not None and attempt.response is not None:
                attempt.response.close()
                self._finished(shadow, endpoint)

    async def _attempts(
        self, req: Outbound, route: Route, state: ClusterState
    ) -> Forwarded | Refusal:
        policy = route.snapshot.retry_policy(route.match)
        deadline = grpc.timeout(req.fields.get("grpc-timeout"))
        if deadline is not None and (policy.timeout is None or deadline < policy.timeout):
            policy = replace(policy, timeout=deadline)  # a gRPC call's own deadline bounds it
        retries = route.match.route.retries
        opt_in = retries is not None and retries.non_idempotent
        body = req.body
        if (
            body is not None
            and not isinstance(body, bytes)
            and policy.attempts
            and req.content_length is not None
            and req.content_length <= self.buffer_limit
        ):
            body = b"".join([chunk async for chunk in body])
        replay = None
        if (
            isinstance(body, AsyncIterator)
            and policy.attempts
            and req.content_length is None
            and not req.upgrade  # a tunnel is never retried
        ):
            replay = Replay(body, self.buffer_limit)
        try:
            return await self._tries(req, route, state, policy, opt_in, body, replay)
        except BaseException:
            if replay is not None:
                replay.close()
            raise

    async def _tries(
        self,
        req: Outbound,
        route: Route,
        state: ClusterState,
        policy: RetryPolicy,
        opt_in: bool,
        body: Body,
        replay: Replay | None,
    ) -> Forwarded | Refusal:
        """Try instances until one answers or retrying is not allowed (or not possible)."""
        not_streamed = body is None or isinstance(body, bytes)
        headers = req.headers
        if route.authority is not None:
            headers = with_authority(headers, route.authority)
        if route.request_edits:
            headers = edit(headers, route.request_edits)
        target = _target(req, route)
        sticky, cookie = route.cluster.policy.consistent_hash, None
        key = None if sticky is None else hash_key(sticky, req.fields, req.client_ip, req.query)
        if sticky is not None and key is None and sticky.cookie_ttl is not None:
            key = new_cookie(self.rng)  # the client is given it with the answer
            cookie = set_cookie(sticky, key)
        started = self.clock()
        state.budget.on_request(started)
        tried: set[str] = set()
        last: _Attempt | None = None
        attempt = 0
        while True:
            now = self.clock()
            timeout = attempt_timeout(policy, now - started)
            endpoint = (
                self.proxy_state.pick(route, state, now, tried, key) if timeout != 0.0 else None
            )
            if endpoint is None:
                break
            attempt += 1
            tried.add(endpoint.key)
            if last is not None:
                self._discard(last, route)
            remaining = None if policy.timeout is None else policy.timeout - (now - started)
            this_body = replay.body() if replay is not None else body
            last = await self._send(
                req, endpoint, target, headers, this_body, timeout, remaining, route
            )
            state.detector.record(endpoint.key, last.outcome, self.clock())
            sent = last.error.sent if last.error is not None else True
            if not should_retry(
                policy,
                attempt,
                last.outcome,
                req.method,
                sent=sent,
                idempotent_opt_in=opt_in,
                body_replayable=replay.replayable if replay is not None else not_streamed,
            ):
                break
            if not state.budget.can_retry(self.clock()):
                break
            self.proxy_state.stats.retry(route.cluster.service)
            await asyncio.sleep(backoff(attempt, self.rng))
        if last is None:
            if replay is not None:
                replay.close()
            if attempt_timeout(policy, self.clock() - started) == 0.0:
                return Refusal(504, UPSTREAM_TIMEOUT, "route timeout passed before any try")
            subset = f" subset {route.cluster.subset}" if route.cluster.subset else ""
            return Refusal(
                503,
                NO_HEALTHY_UPSTREAM,
                f"no healthy instance of {route.cluster.service}{subset}",
            )
        # The request's final answer and its time to a response head: rollouts judge on these.
        self.proxy_state.stats.answered(
            last.endpoint.revision_key,
            last.response is None or last.response.status >= 500,
            self.clock() - started,
        )
        if last.response is None:
            assert last.error is not None
            if replay is not None:
                replay.close()
            return Refusal(last.error.status, last.error.cause, str(last.error))
        endpoint = last.endpoint
        if route.response_edits:
            last.response.headers = edit(last.response.headers, route.response_edits)
        if cookie is not None:
            last.response.headers.append((b"set-cookie", cookie))

        def done() -> None:
            if replay is not None:
                replay.close()  # the answer is over: so is the request's body
            self._finished(route, endpoint)

        return Forwarded(response=last.response, endpoint=endpoint, attempts=attempt, done=done)

    async def _send(
        self,
        req: Outbound,
        endpoint: Endpoint,
        target: str,
        headers: Headers,
        body: Body,
        head_timeout: float | None,
        total_timeout: float | None,
        route: Route,
    ) -> _Attempt:
        authority, tls, peer, server_name = endpoint.authority, None, None, None
        origin = route.cluster.origin
        if endpoint.mtls:  # through the instance's node router, which forwards to it
            # The endpoint is from this snapshot, which keeps only instances of live nodes.
            authority = route.snapshot.meshes[endpoint.node]
            headers = [*headers, (INSTANCE, endpoint.key.encode())]
            if route.cluster.policy.tls_mode != "DISABLE":  # else plaintext, as the rule says
                tls = self.mesh_tls()
                if tls is None:
                    raise _NoIdentity
                peer = self._node_ids.get(endpoint.node)
                if peer is None:
                    peer = str(node_id(self.trust_domain, endpoint.node))
                    self._node_ids[endpoint.node] = peer
        route.balancer.on_start(endpoint)
        self.proxy_state.load.change(endpoint.revision_key, 1, self.clock(), arrival=True)
        try:
            if origin is not None and not endpoint.mtls:  # TLS to a destination outside Shoal
                tls, server_name = self._origin_context(origin), origin.sni or route.cluster.service
            response = await self.upstreams.request(
                authority,
                req.method,
                target,
                headers,
                body,
                head_timeout=head_timeout,
                total_timeout=total_timeout,
                tls=tls,
                peer=peer,
                tunnel=req.upgrade,
                settings=route.cluster.policy.connection_pool,
                server_name=server_name,
            )
        except UpstreamError as e:
            self._finished(route, endpoint)
            return _Attempt(endpoint, classify(None, e.cause), error=e)
        outcome = Outcome.response(response.status, grpc.head_status(response.headers))
        return _Attempt(endpoint, outcome, response=response)

    def _origin_context(self, origin: OriginTLS) -> ssl.SSLContext:
        """The client context for TLS originated as ``origin`` says (built once; an unreadable
        file is a connect failure)."""
        context = self._origins.get(origin)
        if context is None:
            try:
                context = ssl.create_default_context(cafile=origin.ca_certificates)
                if origin.client_certificate is not None and origin.private_key is not None:
                    context.load_cert_chain(origin.client_certificate, origin.private_key)
            except (OSError, ssl.SSLError) as e:
                raise UpstreamError(
                    503, UPSTREAM_CONNECT_ERROR, f"TLS settings: {e}", sent=False
                ) from None
            if origin.insecure_skip_verify:
                context.check_hostname, context.verify_mode = False, ssl.CERT_NONE
            self._origins[origin] = context
        return context

    def _finished(self, route: Route, endpoint: Endpoint) -> None:
        route.balancer.on_finish(endpoint)
        self.proxy_state.load.change(endpoint.revision_key, -1, self.clock())

    def _discard(self, attempt: _Attempt, route: Route) -> None:
        """Drop a failed attempt's response before trying again."""
        if attempt.response is not None:
            attempt.response.close()
            self._finished(route, attempt.endpoint)
