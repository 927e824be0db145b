"""What the Gateways ask of the edge, worked out without I/O: which ports to open and which
servers each serves (:func:`plan_ports`), which server a request's host (or a TLS client's
SNI name) belongs to (:meth:`PortPlan.server_for`).

Servers are taken in Gateway name order, then in their order in the Gateway. Servers of
different Gateways on one port must agree as those of one Gateway must (TLS or not; for TLS
the mode and client CA): a server that does not is left out and said why. So is one on a port
the gateway already serves itself (``--port``, ``--tls-port``).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from shoal.resources.model import Gateway, GatewayServer

__all__ = ["Bound", "PortPlan", "host_matches", "plan_ports"]


@dataclass(frozen=True, slots=True)
class Bound:
    """One server of one Gateway."""

    gateway: str
    server: GatewayServer


@dataclass(frozen=True, slots=True)
class PortPlan:
    """A port to listen on and the servers it serves."""

    port: int
    secure: bool
    servers: tuple[Bound, ...]

    def server_for(self, host: str | None) -> Bound | None:
        """The server whose hosts match ``host`` (lower case, no port) best: an exact host,
        then the longest ``*.suffix``, then ``*``; with None (a TLS client that sent no SNI)
        the first server."""
        if host is None:
            return self.servers[0] if self.servers else None
        best: tuple[int, Bound] | None = None
        for bound in self.servers:
            for pattern in bound.server.hosts:
                rank = host_matches(pattern, host)
                if rank is not None and (best is None or rank > best[0]):
                    best = rank, bound
        return best[1] if best is not None else None


def host_matches(pattern: str, host: str) -> int | None:
    """How specifically ``pattern`` (``name``, ``*.suffix`` or ``*``) matches ``host``: None
    if it does not, else a rank (higher is more specific)."""
    if pattern == host:
        return 1_000
    if pattern == "*":
        return 0
    if pattern.startswith("*.") and host.endswith(pattern[1:]) and len(host) > len(pattern) - 1:
        return len(pattern)
    return None


def plan_ports(
    gateways: Iterable[Gateway], taken: Iterable[int] = ()
) -> tuple[dict[int, PortPlan], list[str]]:
    """The ports the Gateways ask for, with their servers, and why any server was left out.
    ``taken``: ports the gateway serves already."""
    reserved = set(taken)
    plans: dict[int, list[Bound]] = {}
    problems: list[str] = []
    for gateway in sorted(gateways, key=lambda g: g.name):
        for server in gateway.servers:
            where = f"Gateway {gateway.name} server on port {server.port}"
            if server.port in reserved:
                problems.append(f"{where}: the gateway's own listener has that port")
                continue
            bound = plans.setdefault(server.port, [])
            if bound and bound[0].server.handshake != server.handshake:
                other = bound[0].gateway
                problems.append(
                    f"{where}: left out, it disagrees with Gateway {other} on that port "
                    "(TLS or not, tls.mode, caCertificates)"
                )
                continue
            bound.append(Bound(gateway.name, server))
    return {
        port: PortPlan(port, servers[0].server.secure, tuple(servers))
        for port, servers in plans.items()
    }, problems
