"""Gateway specs: Istio's field names to model values and back.

A Gateway's ``servers`` are the ports every Shoal gateway opens (as an Istio ingress gateway
opens them for the Gateways that select it): ``HTTP`` (HTTP/1.1 and h2c; ``HTTP2`` and
``GRPC`` are the same listener), optionally answering every request with a redirect to https
(``tls.httpsRedirect``), or ``HTTPS`` with ``tls.mode`` SIMPLE (a server certificate and key)
or MUTUAL (and a CA that client certificates must chain to). Certificate, key and CA are file
paths on the gateway's host; a relative one is resolved against the manifest's directory.

Refused with a reason, since Shoal cannot honour them: ``PASSTHROUGH`` / ``AUTO_PASSTHROUGH``
/ ``ISTIO_MUTUAL`` modes and the ``TLS`` / ``TCP`` protocols (no TCP routing by SNI yet),
``credentialName`` (no secret store yet: give the files), ``bind``, ``defaultEndpoint``,
hosts of another namespace. Servers on one port must agree on being TLS or not, and TLS
servers on one port on their mode and client CA (one TLS handshake serves them all, the
certificate chosen by SNI).
"""

from __future__ import annotations

import os
from typing import cast

from shoal.errors import ManifestError
from shoal.resources.fields import (
    Section,
    boolean,
    integer,
    labels,
    list_of,
    one_of,
    put,
    string,
)
from shoal.resources.hosts import check_namespace
from shoal.resources.model import (
    NAMESPACE,
    Gateway,
    GatewayServer,
    ServerProtocol,
    ServerTLS,
    TlsMode,
    TlsVersion,
)

__all__ = ["gateway_spec", "parse_gateway"]

PROTOCOLS = ("HTTP", "HTTPS", "HTTP2", "GRPC")
_UNSUPPORTED_PROTOCOLS = {
    "TLS": "TLS passthrough needs routing by SNI to TCP destinations, which Shoal does not do yet",
    "TCP": "Shoal routes HTTP only",
    "MONGO": "Shoal routes HTTP only",
    "REDIS": "Shoal routes HTTP only",
}
_UNSUPPORTED_MODES = {
    "PASSTHROUGH": "TLS passthrough needs routing by SNI to TCP destinations, which Shoal does "
    "not do yet; terminate TLS at the gateway with SIMPLE",
    "AUTO_PASSTHROUGH": "Shoal has no multi-network gateways",
    "ISTIO_MUTUAL": "clients outside the mesh hold no mesh certificate: use MUTUAL with your own "
    "client CA",
    "OPTIONAL_MUTUAL": "not supported by Shoal: use MUTUAL or SIMPLE",
}
_SERVER_HINTS = {
    "bind": "not supported by Shoal: a gateway listens on its --host address",
    "defaultEndpoint": "not supported by Shoal: route with a VirtualService bound to the Gateway",
}
_TLS_HINTS = {
    "credentialName": "not supported by Shoal yet: give the files with serverCertificate, "
    "privateKey (and caCertificates for MUTUAL)",
    "credentialNames": "not supported by Shoal yet: give the files with serverCertificate, "
    "privateKey (and caCertificates for MUTUAL)",
    "subjectAltNames": "not supported by Shoal: client certificates are checked against "
    "caCertificates only",
    "verifyCertificateSpki": "not supported by Shoal",
    "verifyCertificateHash": "not supported by Shoal",
    "cipherSuites": "set the gateway's --tls-ciphers",
    "maxProtocolVersion": "not supported by Shoal (TLS 1.3 is always offered)",
}
_TLS_FIELDS = (
    "httpsRedirect",
    "mode",
    "serverCertificate",
    "privateKey",
    "caCertificates",
    "minProtocolVersion",
)


def parse_gateway(name: str, value: object, base_dir: str | None) -> Gateway:
    """The Gateway named ``name`` whose ``spec`` is ``value``; relative file paths are resolved
    against ``base_dir`` (kept as written when that is None)."""
    spec = Section(value, "spec", ("selector", "servers"))
    servers: tuple[GatewayServer, ...] = spec.need(
        "servers", list_of(lambda v, f: _server(v, f, base_dir), min_items=1)
    )
    _check_ports(servers, spec.at("servers"))
    return Gateway(name=name, servers=servers, selector=spec.get("selector", labels, ()))


def _server(value: object, field: str, base_dir: str | None) -> GatewayServer:
    server = Section(value, field, ("port", "hosts", "tls", "name"), _SERVER_HINTS)
    port = server.need("port", _Port.parse)
    hosts = server.need("hosts", list_of(_host, min_items=1))
    tls = server.get("tls", lambda v, f: _tls(v, f, base_dir))
    where = server.at("tls")
    if port.protocol == "HTTPS":
        if tls is None or tls.mode is None:
            raise ManifestError(
                "an HTTPS server needs tls.mode SIMPLE or MUTUAL with its certificate",
                field=where,
                value=server.raw("tls"),
            )
    elif tls is not None and (tls.mode is not None or tls.server_certificate is not None):
        raise ManifestError(
            f"a {port.protocol} server takes only tls.httpsRedirect (write protocol HTTPS to "
            "serve TLS)",
            field=where,
            value=server.raw("tls"),
        )
    return GatewayServer(
        port=port.number,
        protocol=port.protocol,
        port_name=port.name,
        hosts=hosts,
        name=server.get("name", string),
        tls=tls,
    )


class _Port:
    def __init__(self, number: int, protocol: ServerProtocol, name: str | None) -> None:
        self.number, self.protocol, self.name = number, protocol, name

    @classmethod
    def parse(cls, value: object, field: str) -> _Port:
        port = Section(value, field, ("number", "protocol", "name", "targetPort"))
        if port.has("targetPort"):
            raise ManifestError(
                "not supported by Shoal: the gateway listens on the port number itself",
                field=port.at("targetPort"),
                value=port.raw("targetPort"),
            )
        protocol = port.need("protocol", string).upper()
        if protocol in _UNSUPPORTED_PROTOCOLS:
            raise ManifestError(
                _UNSUPPORTED_PROTOCOLS[protocol], field=port.at("protocol"), value=protocol
            )
        one_of(PROTOCOLS)(protocol, port.at("protocol"))
        return cls(
            port.need("number", integer(1, 65535)),
            cast(ServerProtocol, protocol),
            port.get("name", string),
        )


def _host(value: object, field: str) -> str:
    """A server host, ``[namespace/]host``: the namespace may be ``.``, ``*`` or ``default``."""
    host = string(value, field)
    namespace, slash, bare = host.rpartition("/")
    if slash:
        if namespace not in (".", "*", NAMESPACE):
            raise ManifestError(
                f"names namespace {namespace}: Shoal serves one namespace, {NAMESPACE}",
                field=field,
                value=host,
            )
        host = bare
    if not host or " " in host or ":" in host:
        raise ManifestError("must be a host name, '*' or '*.suffix'", field=field, value=value)
    return check_namespace(host.lower(), field)


def _tls(value: object, field: str, base_dir: str | None) -> ServerTLS:
    tls = Section(value, field, _TLS_FIELDS, _TLS_HINTS)
    mode_text = tls.get("mode", string)
    if mode_text is not None and mode_text in _UNSUPPORTED_MODES:
        raise ManifestError(_UNSUPPORTED_MODES[mode_text], field=tls.at("mode"), value=mode_text)
    mode = cast(TlsMode | None, tls.get("mode", one_of(("SIMPLE", "MUTUAL"))))

    def path(value: object, where: str) -> str:
        written = string(value, where)
        return written if base_dir is None else os.path.join(base_dir, written)

    found = ServerTLS(
        https_redirect=tls.get("httpsRedirect", boolean, False),
        mode=mode,
        server_certificate=tls.get("serverCertificate", path),
        private_key=tls.get("privateKey", path),
        ca_certificates=tls.get("caCertificates", path),
        min_protocol_version=cast(
            TlsVersion | None, tls.get("minProtocolVersion", one_of(("TLSV1_2", "TLSV1_3")))
        ),
    )
    if mode is not None and (found.server_certificate is None or found.private_key is None):
        raise ManifestError(
            f"tls.mode {mode} needs serverCertificate and privateKey (files on the gateway's host)",
            field=field,
            value=value,
        )
    if mode == "MUTUAL" and found.ca_certificates is None:
        raise ManifestError(
            "tls.mode MUTUAL needs caCertificates: the CA client certificates must chain to",
            field=field,
            value=value,
        )
    return found


def _check_ports(servers: tuple[GatewayServer, ...], field: str) -> None:
    """Servers sharing a port agree on TLS, and TLS ones on their mode and client CA."""
    first: dict[int, GatewayServer] = {}
    for index, server in enumerate(servers):
        seen = first.setdefault(server.port, server)
        if seen is server:
            continue
        clash = None
        if seen.secure != server.secure:
            clash = "one serves TLS and the other does not"
        elif seen.handshake != server.handshake:
            clash = "their tls.mode or caCertificates differ (one TLS handshake serves a port)"
        if clash is not None:
            raise ManifestError(
                f"shares port {server.port} with another server, but {clash}",
                field=f"{field}[{index}]",
                value=server.port,
            )


def gateway_spec(gateway: Gateway) -> dict[str, object]:
    """The canonical ``spec`` of a Gateway, in Istio's field names."""
    spec: dict[str, object] = {}
    put(spec, "selector", dict(gateway.selector), {})
    servers = []
    for server in gateway.servers:
        port: dict[str, object] = {"number": server.port, "protocol": server.protocol}
        put(port, "name", server.port_name)
        out: dict[str, object] = {"port": port, "hosts": list(server.hosts)}
        put(out, "name", server.name)
        if server.tls is not None:
            tls: dict[str, object] = {}
            put(tls, "httpsRedirect", server.tls.https_redirect, False)
            put(tls, "mode", server.tls.mode)
            put(tls, "serverCertificate", server.tls.server_certificate)
            put(tls, "privateKey", server.tls.private_key)
            put(tls, "caCertificates", server.tls.ca_certificates)
            put(tls, "minProtocolVersion", server.tls.min_protocol_version)
            out["tls"] = tls
        servers.append(out)
    spec["servers"] = servers
    return spec
