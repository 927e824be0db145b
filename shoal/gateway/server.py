"""The gateway process: hypercorn serving :class:`GatewayApp`, fed by a store watcher.

One port serves HTTP/1.1 and h2c (prior knowledge and upgrade); with a certificate, another
serves TLS with ALPN h2/http1.1. Settings that bite a proxy are set on purpose (FACTS.md).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from hypercorn.asyncio import serve
from hypercorn.config import Config

from shoal.gateway.app import GatewayApp
from shoal.mesh.follow import follow
from shoal.mesh.forward import Forwarder
from shoal.mesh.proxy import Proxy
from shoal.mesh.upstream import Upstreams
from shoal.store.connection import Redis
from shoal.store.keys import Keys

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewaySettings:
    """Where the gateway listens and with which certificate."""

    host: str = "0.0.0.0"
    port: int = 8080
    tls_port: int | None = None
    certfile: str | None = None
    keyfile: str | None = None
    graceful_timeout: float = 30.0


def hypercorn_config(s: GatewaySettings) -> Config:
    """hypercorn settings for the edge."""
    cfg = Config()
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
    cfg.keep_alive_max_requests = 1_000_000_000
    cfg.graceful_timeout = s.graceful_timeout
    # The upstream's own Date and Server pass through; hypercorn must not add a second pair.
    cfg.include_date_header = False
    cfg.include_server_header = False
    cfg.read_timeout = 60
    cfg.accesslog = None
    cfg.errorlog = "-"
    return cfg


async def run_gateway(
    redis: Redis,
    url: str,
    keys: Keys,
    *,
    settings: GatewaySettings,
    stop: asyncio.Event,
    component: str = "gateway",
) -> None:
    """Serve until ``stop``; routing follows the store."""
    proxy = Proxy()
    upstreams = Upstreams()
    tasks = follow(proxy, redis, url, keys, component)
    try:
        await serve(
            GatewayApp(Forwarder(proxy, upstreams)),  # type: ignore[arg-type]
            hypercorn_config(settings),
            shutdown_trigger=stop.wait,
        )
    finally:
        for t in tasks:
            t.cancel()
        await upstreams.close()
