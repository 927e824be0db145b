"""The gateway process: hypercorn serving :class:`GatewayApp`, fed by a store watcher.

One port serves HTTP/1.1 and h2c (prior knowledge and upgrade); with a certificate, another
serves TLS (1.2+, ECDHE + AEAD ciphers) with ALPN h2/http1.1. hypercorn accepts every
connection and hands it to Shoal's own HTTP/1.1 or HTTP/2 server (:mod:`.hypercorn_edge`),
which serve every request and stream with :meth:`GatewayApp.serve`. The
gateway listens once it holds its mesh certificate (``identity_wait``), so it never answers 503
``no_mesh_identity`` while starting.

hypercorn's defaults that bite a proxy are overridden on purpose (:func:`hypercorn_config`):
it closes a keep-alive connection after 1,000 requests, adds its own ``Date`` and ``Server``
headers next to the upstream's, and waits only 3 s for requests in flight on shutdown. The
edge's limits (:class:`~shoal.http.limits.EdgeLimits`) are enforced by hypercorn (backlog,
TLS handshake deadline), by Shoal's servers below the app (:mod:`.hypercorn_edge`,
:mod:`.h2_edge`) and by the app itself (:mod:`.hygiene`, :mod:`.body`) above it.
"""

from __future__ import annotations

import asyncio
import errno
import logging
from dataclasses import dataclass, field

from hypercorn.asyncio import serve

from shoal.errors import PlatformError, UserError
from shoal.gateway import hypercorn_edge
from shoal.gateway.app import GatewayApp
from shoal.gateway.h2_edge import edge_servers
from shoal.gateway.hypercorn_edge import MODERN_CIPHERS, EdgeConfig
from shoal.gateway.listeners import GatewayListeners
from shoal.gateway.workers import WORKER_PREFIX
from shoal.http.headers import UnderscorePolicy
from shoal.http.limits import EdgeLimits
from shoal.http.paths import SlashPolicy
from shoal.identity.spiffe import gateway_id
from shoal.mesh.access_log import OFF, open_access_log
from shoal.mesh.forward import Forwarder
from shoal.mesh.proxy_process import ProxyProcess
from shoal.mesh.tasks import task_group, until_stopped
from shoal.mesh.upstream import Upstreams
from shoal.store.connection import Redis
from shoal.store.keys import Keys

log = logging.getLogger(__name__)

_CANNOT_BIND = {errno.EADDRINUSE, errno.EADDRNOTAVAIL, errno.EACCES}


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    """Where the gateway listens, with which certificate, and what it accepts from clients."""

    host: str = "0.0.0.0"
    port: int = 8080
    tls_port: int | None = None
    certfile: str | None = None
    keyfile: str | None = None
    graceful_timeout: float = 30.0
    limits: EdgeLimits = field(default_factory=EdgeLimits)
    trusted_hops: int = 0  # proxies in front of the gateway whose X-Forwarded-For entries count
    escaped_slashes: SlashPolicy = SlashPolicy.REJECT  # %2F, %5C and \ in paths
    underscore_headers: UnderscorePolicy = UnderscorePolicy.DROP  # X_Auth_User
    tls_min_version: str = "1.2"  # or "1.3"
    tls_ciphers: str = MODERN_CIPHERS  # TLS 1.2 suites (OpenSSL syntax)
    activation_timeout: float = 30.0  # a request held for a service at zero, at most
    # Seconds to wait for the mesh certificate before listening (until it is held, a request
    # for an instance in the mesh gets 503 no_mesh_identity); 0: listen at once.
    identity_wait: float = 10.0
    metrics_port: int | None = None  # Prometheus /metrics on metrics_host (None: off)
    reuse_port: bool = False  # bind with SO_REUSEPORT: several workers share the ports
    metrics_host: str = "127.0.0.1"
    access_log: str = OFF  # a file, "-" (standard output) or "off" (shoal.mesh.access_log)
    access_log_sample: float = 1.0  # the share of requests logged (by trace id)
    otlp_endpoint: str | None = None  # an OTLP/HTTP collector each logged request's span goes to
    access_log_format: str = "json"  # or "text"

    def __post_init__(self) -> None:
        if self.trusted_hops < 0:
            raise UserError(f"trusted_hops must be >= 0 (got {self.trusted_hops!r})")


def hypercorn_config(s: GatewaySettings) -> EdgeConfig:
    """hypercorn settings for the edge."""
    cfg = EdgeConfig(s.limits, tls_min_version=s.tls_min_version, ciphers=s.tls_ciphers)
    # Without TLS hypercorn serves ``bind`` in plaintext; with it, ``bind`` is TLS and
    # ``insecure_bind`` is plaintext.
    plain = [f"{s.host}:{s.port}"]
    if s.certfile and s.keyfile and s.tls_port is not None:
        cfg.bind = [f"{s.host}:{s.tls_port}"]
        cfg.insecure_bind = plain
        cfg.certfile = s.certfile
        cfg.keyfile = s.keyfile
        cfg.alpn_protocols = ["h2", "http/1.1"]
    else:
        cfg.bind = plain
    if s.reuse_port:
        cfg.workers = 2  # hypercorn sets SO_REUSEPORT on the sockets it binds when workers > 1
    cfg.keep_alive_max_requests = 1_000_000_000
    cfg.graceful_timeout = s.graceful_timeout
    # The upstream's own Date and Server pass through; hypercorn must not add a second pair.
    cfg.include_date_header = False
    cfg.include_server_header = False
    cfg.accesslog = None
    cfg.errorlog = "-"
    return cfg


async def _identity(
    process: ProxyProcess, identity: str, settings: GatewaySettings, stop: asyncio.Event
) -> bool:
    """Wait (``identity_wait`` at most) for the gateway's mesh certificate; False if stopped
    meanwhile. Without one it listens anyway (instances outside the mesh need none)."""
    if settings.identity_wait <= 0:
        return True
    try:
        async with asyncio.timeout(settings.identity_wait):
            await until_stopped(process.credentials.ready(identity), stop)
    except TimeoutError:
        log.warning(
            "no mesh certificate after %gs (is a controller running?): listening anyway; "
            "requests for instances in the mesh get 503 no_mesh_identity until one is issued",
            settings.identity_wait,
        )
    return not stop.is_set()


async def run_gateway(
    redis: Redis,
    url: str,
    keys: Keys,
    *,
    settings: GatewaySettings,
    stop: asyncio.Event,
    trust_domain: str,
    component: str = "gateway",
    join_token: str | None = None,
) -> None:
    """Serve until ``stop``; routing follows the store."""
    hypercorn_edge.install()
    process = ProxyProcess(
        redis,
        url,
        keys,
        component=component,
        requester="gateway",  # every worker holds the one gateway identity, admitted once
        join_token=join_token,
        activation_timeout=settings.activation_timeout,
        metrics_host=settings.metrics_host,
        metrics_port=settings.metrics_port,
        # A worker's /metrics (the first's: the others serve none) shows every worker.
        siblings=WORKER_PREFIX if component.startswith(WORKER_PREFIX) else None,
    )
    identity = str(gateway_id(trust_domain))
    process.credentials.want(identity)
    upstreams = Upstreams()
    access_log = open_access_log(
        settings.access_log,
        component,
        sample=settings.access_log_sample,
        otlp_endpoint=settings.otlp_endpoint,
        line_format=settings.access_log_format,
    )
    app = GatewayApp(
        Forwarder(
            process.state,
            upstreams,
            trust_domain=trust_domain,
            mesh_tls=lambda: process.credentials.client_context(identity),
            activator=process.activator,
        ),
        limits=settings.limits,
        slashes=settings.escaped_slashes,
        underscores=settings.underscore_headers,
        trusted_hops=settings.trusted_hops,
        access_log=access_log,
    )
    config = hypercorn_config(settings)
    config.h1, config.h2 = h1, h2 = edge_servers(app.serve, settings.limits)
    listeners = GatewayListeners(
        process.state,
        app.serve,
        config,
        host=settings.host,
        taken=tuple(p for p in (settings.port, settings.tls_port) if p is not None),
        reuse_port=settings.reuse_port,
        grace=settings.graceful_timeout,
    )
    process.state.extra_reports.append(lambda: {"gateway_servers": listeners.describe()})

    async def drain() -> None:
        await stop.wait()
        grace = settings.graceful_timeout
        await asyncio.gather(h1.close(grace), h2.close(grace))

    try:
        async with process.running(), task_group() as tasks:
            if not await _identity(process, identity, settings, stop):
                return  # stopped while waiting
            tasks.create_task(drain())
            tasks.create_task(listeners.run(stop))
            if access_log is not None:
                tasks.create_task(access_log.run(stop))
            try:
                await serve(app, config, shutdown_trigger=stop.wait)  # type: ignore[arg-type]
            except OSError as e:
                if e.errno not in _CANNOT_BIND:
                    raise
                where = ", ".join([*config.bind, *config.insecure_bind])
                raise PlatformError(f"the gateway cannot listen on {where}: {e.strerror}") from None
    finally:
        await upstreams.close()
        if access_log is not None:
            access_log.close()  # with what the requests drained after stop logged
