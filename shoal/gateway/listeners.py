"""The listeners Gateways ask for, opened and closed while the gateway runs.

Each port of :func:`~shoal.gateway.servers.plan_ports` is a :class:`Listener`: hypercorn's
connection handling with the edge's hardening (:class:`~.hypercorn_edge.EdgeTCPServer`, the
same limits, counted with the gateway's own listeners), its HTTP/1.x connections on a Shoal
HTTP/1.1 server of its own, every request served by :meth:`GatewayApp.serve` with the port's
servers, so that it is routed by the VirtualServices bound to the Gateway whose server matched
its host. A TLS port answers each handshake with the certificate of the server its SNI name
matches (the first server's without SNI or without a match) and, for MUTUAL, requires a client
certificate of the servers' CA.

:class:`GatewayListeners` follows the snapshots: a port no Gateway names any more is closed
(requests in flight finish, up to the grace period), a new one opened, a changed one given its
new servers (or reopened when it changes between TLS and plaintext or its client CA). TLS
files are read when first needed and again when their modification time changes (checked
every :data:`RELOAD_EVERY` seconds): new handshakes get the new certificate, open connections
keep theirs. A port that cannot be opened, or a certificate that cannot be read, is logged and
shown by ``shoal status``; the other ports are served.
"""

from __future__ import annotations

import asyncio
import logging
import os
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from cryptography import x509
from hypercorn.app_wrappers import ASGIWrapper
from hypercorn.asyncio.worker_context import WorkerContext

from shoal.gateway.h2_edge import edge_servers
from shoal.gateway.hypercorn_edge import TLS_VERSIONS, EdgeConfig, EdgeTCPServer
from shoal.gateway.servers import PortPlan, plan_ports
from shoal.mesh.h1server import Exchange
from shoal.mesh.h2exchange import H2Exchange
from shoal.mesh.proxy_state import ProxyState
from shoal.resources.model import Gateway, ServerTLS

log = logging.getLogger(__name__)

RELOAD_EVERY = 1.0  # seconds between checks of the certificate files' modification times
_TLS_VERSIONS = {"TLSV1_2": "1.2", "TLSV1_3": "1.3"}

Serve = Callable[[Exchange | H2Exchange, PortPlan | None], Awaitable[None]]


class Certificates:
    """Server TLS contexts built from files, rebuilt when one of the files changes."""

    def __init__(self, config: EdgeConfig) -> None:
        self._config = config
        self._built: dict[ServerTLS, tuple[tuple[float, ...], ssl.SSLContext]] = {}
        self._described: dict[tuple[str, float], dict[str, Any]] = {}  # by file and mtime

    def context(self, tls: ServerTLS) -> ssl.SSLContext:
        """The context serving ``tls``'s certificate (raises OSError or ssl.SSLError if its
        files cannot be read)."""
        built = self._built.get(tls)
        if built is None:
            built = _mtimes(tls), self._make(tls)
            self._built[tls] = built
        return built[1]

    def refresh(self) -> list[ServerTLS]:
        """Rebuild the contexts whose files changed; forget those that can no longer be read
        (the next handshake says why). The ones rebuilt."""
        changed = []
        for tls, (mtimes, _) in list(self._built.items()):
            try:
                if _mtimes(tls) == mtimes:
                    continue
                self._built[tls] = _mtimes(tls), self._make(tls)
                changed.append(tls)
            except (OSError, ssl.SSLError) as e:
                log.error("cannot reload %s: %s", tls.server_certificate, e)
                del self._built[tls]
        return changed

    def _make(self, tls: ServerTLS) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _harden(context, self._config, tls)
        assert tls.server_certificate is not None and tls.private_key is not None
        context.load_cert_chain(tls.server_certificate, tls.private_key)
        if tls.mode == "MUTUAL" and tls.ca_certificates is not None:
            context.verify_mode = ssl.CERT_REQUIRED
            context.load_verify_locations(tls.ca_certificates)
        return context

    def describe(self, tls: ServerTLS) -> dict[str, Any]:
        """What ``shoal status`` shows of a server's certificate: subject, SANs, expiry (or
        the error reading it)."""
        path = tls.server_certificate or ""
        try:
            key = path, os.stat(path).st_mtime
            known = self._described.get(key)
            if known is not None:
                return known
            with open(path, "rb") as f:
                cert = x509.load_pem_x509_certificate(f.read())
        except (OSError, ValueError) as e:
            return {"error": str(e)}
        try:
            sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            names = [str(n.value) for n in sans]
        except x509.ExtensionNotFound:
            names = []
        self._described[key] = {
            "subject": cert.subject.rfc4514_string(),
            "sans": names,
            "not_after": cert.not_valid_after_utc.isoformat(),
        }
        return self._described[key]


def _mtimes(tls: ServerTLS) -> tuple[float, ...]:
    files = (tls.server_certificate, tls.private_key, tls.ca_certificates)
    return tuple(os.stat(f).st_mtime if f is not None else 0.0 for f in files)


def _harden(context: ssl.SSLContext, config: EdgeConfig, tls: ServerTLS | None) -> None:
    """The edge's TLS policy (as :meth:`EdgeConfig.create_ssl_context`) and ALPN."""
    version = config.tls_min_version
    if tls is not None and tls.min_protocol_version is not None:
        version = TLS_VERSIONS[_TLS_VERSIONS[tls.min_protocol_version]]
    context.minimum_version = version
    context.set_ciphers(config.ciphers)
    context.options |= (
        ssl.OP_NO_COMPRESSION
        | ssl.OP_CIPHER_SERVER_PREFERENCE
        | ssl.OP_NO_RENEGOTIATION
        | ssl.OP_SINGLE_ECDH_USE
    )
    context.set_alpn_protocols(["h2", "http/1.1"])


class Listener:
    """One port the Gateways name, serving their servers on it."""

    def __init__(
        self,
        plan: PortPlan,
        *,
        serve: Serve,
        config: EdgeConfig,
        certificates: Certificates,
        host: str,
        reuse_port: bool,
        context: WorkerContext,
        app: ASGIWrapper,
    ) -> None:
        self.plan = plan
        self._serve = serve
        self._certificates = certificates
        self._host, self._reuse_port = host, reuse_port
        self._context, self._app = context, app
        self.h1, self.h2 = edge_servers(self.serve, config.limits)
        self._config = config.for_listener(self.h1, self.h2)
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()

    async def serve(self, exchange: Exchange | H2Exchange) -> None:
        """Serve one request with this port's current servers."""
        await self._serve(exchange, self.plan)

    def handshake(self) -> tuple[object, ...]:
        """What a change of needs a new listener (its servers all share it)."""
        return self.plan.servers[0].server.handshake

    async def open(self) -> None:
        """Listen (raises OSError if the port cannot be had)."""
        tls = None
        if self.plan.secure:
            tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            first = self.plan.servers[0].server.tls
            _harden(tls, self._config, first)
            assert first is not None
            tls.load_cert_chain(*_files(first))  # never used: the SNI callback picks one
            if first.mode == "MUTUAL":
                tls.verify_mode = ssl.CERT_REQUIRED  # (the chosen context's CA verifies)
            tls.sni_callback = self._pick
        limits = self._config.limits
        self._server = await asyncio.start_server(
            self._connection,
            self._host,
            self.plan.port,
            ssl=tls,
            backlog=limits.backlog,
            reuse_port=self._reuse_port or None,
            ssl_handshake_timeout=limits.tls_handshake_timeout if tls is not None else None,
        )
        log.info(
            "listening on %s:%d (%s) for %s",
            self._host,
            self.plan.port,
            "TLS" if tls is not None else "plaintext",
            ", ".join(sorted({b.gateway for b in self.plan.servers})),
        )

    def _pick(self, connection: ssl.SSLObject, name: str | None, _: ssl.SSLContext) -> int | None:
        """The SNI callback: the certificate of the server ``name`` belongs to."""
        bound = self.plan.server_for(name.lower() if name else None) or self.plan.servers[0]
        tls = bound.server.tls
        assert tls is not None  # a TLS port's servers all have tls
        try:
            connection.context = self._certificates.context(tls)
        except (OSError, ssl.SSLError) as e:
            log.error("port %d: cannot serve %s: %s", self.plan.port, tls.server_certificate, e)
            return ssl.ALERT_DESCRIPTION_INTERNAL_ERROR
        return None

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            loop = asyncio.get_running_loop()
            await EdgeTCPServer(self._app, loop, self._config, self._context, {}, reader, writer)
        finally:
            self._connections.discard(task)

    async def close(self, grace: float) -> None:
        """Stop listening; requests in flight get ``grace`` seconds, then connections close."""
        if self._server is not None:
            self._server.close()
        await asyncio.gather(self.h1.close(grace), self.h2.close(grace))
        if self._connections:
            _, pending = await asyncio.wait(self._connections, timeout=grace)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    def describe(self) -> list[dict[str, Any]]:
        """The port's servers for ``shoal status``: Gateway, hosts, TLS and certificate."""
        shown = []
        for bound in self.plan.servers:
            server = bound.server
            entry: dict[str, Any] = {
                "gateway": bound.gateway,
                "port": server.port,
                "protocol": server.protocol,
                "hosts": list(server.hosts),
            }
            if server.tls is not None and server.tls.mode is not None:
                entry["tls"] = server.tls.mode
                entry["certificate"] = self._certificates.describe(server.tls)
            elif server.tls is not None and server.tls.https_redirect:
                entry["tls"] = "httpsRedirect"
            shown.append(entry)
        return shown


def _files(tls: ServerTLS) -> tuple[str, str]:
    assert tls.server_certificate is not None and tls.private_key is not None
    return tls.server_certificate, tls.private_key


class GatewayListeners:
    """The Gateways' listeners of one gateway process, following its snapshots."""

    def __init__(
        self,
        state: ProxyState,
        serve: Serve,
        config: EdgeConfig,
        *,
        host: str,
        taken: tuple[int, ...],
        reuse_port: bool,
        grace: float,
    ) -> None:
        self._state = state
        self._serve = serve
        self._config = config
        self._host, self._taken, self._reuse_port, self._grace = host, taken, reuse_port, grace
        self.certificates = Certificates(config)
        self._context = WorkerContext(None)
        self._app = ASGIWrapper(_no_asgi)
        self.listeners: dict[int, Listener] = {}
        self.problems: list[str] = []  # what is not served as asked, and why
        self._failed = False  # a port could not be opened: try again

    async def run(self, stop: asyncio.Event) -> None:
        """Follow the snapshots until ``stop``, then close every listener."""
        served: tuple[Gateway, ...] | None = None
        try:
            while not stop.is_set():
                changed = self._state.changed
                gateways = self._state.snapshot.gateways
                if gateways != served or self._failed:
                    await self.reconcile(gateways)
                    served = gateways
                waits = [asyncio.ensure_future(changed.wait()), asyncio.ensure_future(stop.wait())]
                await asyncio.wait(waits, timeout=RELOAD_EVERY, return_when=asyncio.FIRST_COMPLETED)
                for waiting in waits:
                    waiting.cancel()
                for tls in self.certificates.refresh():
                    log.info("certificate %s reloaded", tls.server_certificate)
        finally:
            await asyncio.gather(*(each.close(self._grace) for each in self.listeners.values()))
            self.listeners.clear()

    async def reconcile(self, gateways: tuple[Gateway, ...]) -> None:
        """Open, update and close listeners to serve ``gateways``."""
        plans, problems = plan_ports(gateways, self._taken)
        for port in [p for p in self.listeners if p not in plans]:
            await self.listeners.pop(port).close(self._grace)
            log.info("closed port %d: no Gateway serves it any more", port)
        for port, plan in plans.items():
            listener = self.listeners.get(port)
            if listener is not None:
                before = listener.handshake()
                listener.plan = plan
                if listener.handshake() == before:
                    continue
                await self.listeners.pop(port).close(self._grace)
            listener = Listener(
                plan,
                serve=self._serve,
                config=self._config,
                certificates=self.certificates,
                host=self._host,
                reuse_port=self._reuse_port,
                context=self._context,
                app=self._app,
            )
            try:
                await listener.open()
            except (OSError, ssl.SSLError) as e:
                problems.append(f"port {port}: cannot listen: {e}")
                continue
            self.listeners[port] = listener
        for problem in problems:
            if problem not in self.problems:
                log.error("%s", problem)
        self.problems = problems
        self._failed = any(port not in self.listeners for port in plans)

    def describe(self) -> Mapping[str, Any]:
        """The Gateway servers this process serves, and what it could not serve."""
        return {
            "servers": [s for listener in self.listeners.values() for s in listener.describe()],
            "problems": list(self.problems),
        }


async def _no_asgi(scope: Any, receive: Any, send: Any) -> None:
    raise RuntimeError("the gateway serves requests through GatewayApp.serve, not ASGI")


__all__ = ["RELOAD_EVERY", "Certificates", "GatewayListeners", "Listener"]
