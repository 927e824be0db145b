"""DestinationRule specs: Istio's field names to model values and back.

Only the subset of ``networking.istio.io`` traffic policy that Shoal implements is accepted
(subsets, load balancer, outlier detection, connection pool, health thresholds); any other
Istio field (``consistentHash``, ``tls``...) is an error naming its path rather than something
quietly ignored. :func:`destination_rule_spec` writes the canonical spec back (defaults omitted),
and :func:`parse_destination_rule` reads it to an equal value.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

from shoal.errors import ManifestError
from shoal.resources.fields import (
    Section,
    boolean,
    choice,
    dns_label,
    host_name,
    integer,
    labels,
    list_of,
    percent,
    positive_duration,
    put,
    put_duration,
    section,
    string,
)
from shoal.resources.model import (
    ConnectionPool,
    ConsistentHash,
    DestinationRule,
    LoadBalancerPolicy,
    OriginTLS,
    OutlierDetection,
    Subset,
    TcpKeepalive,
    TlsModeName,
    TrafficPolicy,
)

__all__ = ["LOAD_BALANCERS", "destination_rule_spec", "parse_destination_rule"]

_OUTLIER = OutlierDetection()
_POLICY = TrafficPolicy()

LOAD_BALANCERS: Mapping[str, LoadBalancerPolicy] = MappingProxyType(
    {
        "ROUND_ROBIN": "ROUND_ROBIN",
        "RANDOM": "RANDOM",
        "LEAST_REQUEST": "LEAST_REQUEST",
        "LEAST_CONN": "LEAST_REQUEST",  # Istio's deprecated name for LEAST_REQUEST
        "WEIGHTED": "WEIGHTED",  # Shoal's: smooth weighted round robin by instance weight
    }
)

# The Istio fields Shoal implements, per object; any other key is an error.
_POLICY_FIELDS = tuple(
    "loadBalancer outlierDetection connectionPool failureThreshold healthyThreshold tls".split()
)
_OUTLIER_FIELDS = tuple(
    "consecutive5xxErrors consecutiveErrors consecutiveGatewayErrors interval baseEjectionTime "
    "maxEjectionPercent minHealthPercent".split()
)
MAX_KEEPALIVE_PROBES = 127  # Linux's TCP_KEEPCNT limit
MAX_KEEPALIVE_SECONDS = 32767  # Linux's TCP_KEEPIDLE / TCP_KEEPINTVL limit
_TCP_POOL = ("maxConnections", "connectTimeout", "tcpKeepalive")
_HTTP_POOL = tuple(
    "http1MaxPendingRequests http2MaxRequests maxRequestsPerConnection idleTimeout".split()
)


def parse_destination_rule(name: str, value: object) -> DestinationRule:
    """The DestinationRule named ``name`` whose ``spec`` is ``value``."""
    spec = Section(value, "spec", ("host", "subsets", "trafficPolicy"))
    subsets: tuple[Subset, ...] = spec.get("subsets", list_of(_subset), ())
    seen: set[str] = set()
    for index, subset in enumerate(subsets):
        if subset.name in seen:
            raise ManifestError(
                "duplicate subset name", field=f"spec.subsets[{index}].name", value=subset.name
            )
        seen.add(subset.name)
    return DestinationRule(
        name=name,
        host=spec.need("host", host_name),
        subsets=subsets,
        traffic_policy=spec.get("trafficPolicy", _traffic_policy, _POLICY),
    )


def _subset(value: object, field: str) -> Subset:
    subset = Section(value, field, ("name", "labels", "trafficPolicy"))
    return Subset(
        name=subset.need("name", dns_label),
        labels=subset.get("labels", labels, ()),
        traffic_policy=subset.get("trafficPolicy", _traffic_policy),
    )


def _traffic_policy(value: object, field: str) -> TrafficPolicy:
    policy = Section(value, field, _POLICY_FIELDS)
    balancer = policy.get("loadBalancer", section(("simple", "consistentHash")))
    if balancer is not None and balancer.has("simple") == balancer.has("consistentHash"):
        raise ManifestError(
            "must set one of simple or consistentHash", field=balancer.path, value=value
        )
    tls = policy.get("tls", _tls)
    return TrafficPolicy(
        load_balancer=None if balancer is None else balancer.get("simple", choice(LOAD_BALANCERS)),
        consistent_hash=None if balancer is None else balancer.get("consistentHash", _hash),
        outlier_detection=policy.get("outlierDetection", _outlier_detection),
        connection_pool=policy.get("connectionPool", _connection_pool),
        failure_threshold=policy.get("failureThreshold", integer(1)),
        healthy_threshold=policy.get("healthyThreshold", integer(1)),
        tls_mode=tls[0] if tls is not None else None,
        tls_origin=tls[1] if tls is not None else None,
    )


_TLS_MODES: Mapping[str, TlsModeName] = MappingProxyType(
    {m: m for m in ("ISTIO_MUTUAL", "DISABLE", "SIMPLE", "MUTUAL")}
)
_TLS_FIELDS = (
    "mode",
    "caCertificates",
    "clientCertificate",
    "privateKey",
    "sni",
    "insecureSkipVerify",
)
_TLS_HINTS = {
    "credentialName": "not supported by Shoal yet: give the files with caCertificates, "
    "clientCertificate and privateKey",
    "subjectAltNames": "not supported by Shoal: the certificate is checked against the SNI name",
}


def _tls(value: object, field: str) -> tuple[TlsModeName, OriginTLS | None]:
    """``tls``: the mode, and for SIMPLE/MUTUAL (TLS the proxy originates to a destination
    outside Shoal) its files and SNI name."""
    tls = Section(value, field, _TLS_FIELDS, _TLS_HINTS)
    mode = tls.need("mode", choice(_TLS_MODES))
    if mode in ("ISTIO_MUTUAL", "DISABLE"):
        for key in _TLS_FIELDS[1:]:
            if tls.has(key):
                raise ManifestError(
                    f"only for tls.mode SIMPLE or MUTUAL (TLS to a destination outside Shoal); "
                    f"{mode} is Shoal's own mTLS setting",
                    field=tls.at(key),
                    value=tls.raw(key),
                )
        return mode, None
    origin = OriginTLS(
        ca_certificates=tls.get("caCertificates", string),
        client_certificate=tls.get("clientCertificate", string),
        private_key=tls.get("privateKey", string),
        sni=tls.get("sni", string),
        insecure_skip_verify=tls.get("insecureSkipVerify", boolean, False),
    )
    if mode == "MUTUAL" and (origin.client_certificate is None or origin.private_key is None):
        raise ManifestError(
            "tls.mode MUTUAL needs clientCertificate and privateKey", field=field, value=value
        )
    return mode, origin


_HASH_KEYS = ("httpHeaderName", "httpCookie", "useSourceIp", "httpQueryParameterName")


def _hash(value: object, field: str) -> ConsistentHash:
    """``consistentHash``: one key; ``ringHash``/``maglev`` are accepted, and both mean the
    same here (rendezvous hashing: as stable when instances come and go, no table to size)."""
    spec = Section(value, field, (*_HASH_KEYS, "ringHash", "maglev", "minimumRingSize"))
    keys = [key for key in _HASH_KEYS if spec.has(key)]
    if len(keys) != 1:
        raise ManifestError(
            f"must set exactly one of {', '.join(_HASH_KEYS)}", field=field, value=value
        )
    spec.get("ringHash", section(("minimumRingSize",)))
    spec.get("maglev", section(("tableSize",)))
    if spec.has("useSourceIp") and not spec.need("useSourceIp", boolean):
        raise ManifestError("only true has a meaning here", field=spec.at("useSourceIp"))
    cookie = spec.get("httpCookie", section(("name", "path", "ttl")))
    return ConsistentHash(
        header=_lower(spec.get("httpHeaderName", string)),
        cookie=cookie.need("name", string) if cookie is not None else None,
        cookie_path=cookie.get("path", string) if cookie is not None else None,
        cookie_ttl=cookie.get("ttl", positive_duration) if cookie is not None else None,
        source_ip=spec.has("useSourceIp"),
        query_parameter=spec.get("httpQueryParameterName", string),
    )


def _lower(name: str | None) -> str | None:
    return None if name is None else name.lower()


def _outlier_detection(value: object, field: str) -> OutlierDetection:
    outlier = Section(value, field, _OUTLIER_FIELDS)
    if outlier.has("consecutive5xxErrors") and outlier.has("consecutiveErrors"):
        raise ManifestError(
            "consecutiveErrors is the deprecated name of consecutive5xxErrors; set only one",
            field=outlier.at("consecutiveErrors"),
            value=outlier.raw("consecutiveErrors"),
        )
    five_xx = "consecutiveErrors" if outlier.has("consecutiveErrors") else "consecutive5xxErrors"
    return OutlierDetection(
        consecutive_5xx_errors=outlier.get(five_xx, integer(0), _OUTLIER.consecutive_5xx_errors),
        consecutive_gateway_errors=outlier.get("consecutiveGatewayErrors", integer(0)),
        interval=outlier.get("interval", positive_duration, _OUTLIER.interval),
        base_ejection_time=outlier.get(
            "baseEjectionTime", positive_duration, _OUTLIER.base_ejection_time
        ),
        max_ejection_percent=outlier.get(
            "maxEjectionPercent", percent, _OUTLIER.max_ejection_percent
        ),
        min_health_percent=outlier.get("minHealthPercent", percent, _OUTLIER.min_health_percent),
    )


def _connection_pool(value: object, field: str) -> ConnectionPool:
    """Istio's two-level connectionPool, flattened; every limit is optional and >= 1."""
    pool = Section(value, field, ("tcp", "http"))
    tcp = pool.get("tcp", section(_TCP_POOL), Section({}, pool.at("tcp"), ()))
    http = pool.get("http", section(_HTTP_POOL), Section({}, pool.at("http"), ()))
    return ConnectionPool(
        max_connections=tcp.get("maxConnections", integer(1)),
        connect_timeout=tcp.get("connectTimeout", positive_duration),
        tcp_keepalive=tcp.get("tcpKeepalive", _tcp_keepalive),
        http1_max_pending_requests=http.get("http1MaxPendingRequests", integer(1)),
        http2_max_requests=http.get("http2MaxRequests", integer(1)),
        max_requests_per_connection=http.get("maxRequestsPerConnection", integer(1)),
        idle_timeout=http.get("idleTimeout", positive_duration),
    )


def _tcp_keepalive(value: object, field: str) -> TcpKeepalive:
    keepalive = Section(value, field, ("probes", "time", "interval"))
    return TcpKeepalive(
        probes=keepalive.get("probes", integer(1, MAX_KEEPALIVE_PROBES)),
        time=keepalive.get("time", _keepalive_seconds),
        interval=keepalive.get("interval", _keepalive_seconds),
    )


def _keepalive_seconds(value: object, field: str) -> float:
    """A keepalive duration: whole seconds, as the kernel takes them, from 1 s to 32,767 s."""
    seconds = positive_duration(value, field)
    if seconds != int(seconds) or not 1 <= seconds <= MAX_KEEPALIVE_SECONDS:
        raise ManifestError(
            f"must be whole seconds from 1s to {MAX_KEEPALIVE_SECONDS}s (the kernel's unit)",
            field=field,
            value=value,
        )
    return seconds


def destination_rule_spec(rule: DestinationRule) -> dict[str, object]:
    """The canonical ``spec`` of a DestinationRule, in Istio's field names."""
    spec: dict[str, object] = {"host": rule.host}
    subsets = []
    for subset in rule.subsets:
        out: dict[str, object] = {"name": subset.name}
        put(out, "labels", dict(subset.labels), {})
        if subset.traffic_policy is not None:
            out["trafficPolicy"] = _traffic_policy_doc(subset.traffic_policy)
        subsets.append(out)
    put(spec, "subsets", subsets, [])
    put(spec, "trafficPolicy", _traffic_policy_doc(rule.traffic_policy), {})
    return spec


def _traffic_policy_doc(policy: TrafficPolicy) -> dict[str, object]:
    out: dict[str, object] = {}
    if policy.load_balancer is not None:
        out["loadBalancer"] = {"simple": policy.load_balancer}
    if policy.consistent_hash is not None:
        out["loadBalancer"] = {"consistentHash": _hash_doc(policy.consistent_hash)}
    if policy.outlier_detection is not None:
        out["outlierDetection"] = _outlier_doc(policy.outlier_detection)
    if policy.connection_pool is not None:
        out["connectionPool"] = _connection_pool_doc(policy.connection_pool)
    put(out, "failureThreshold", policy.failure_threshold)
    put(out, "healthyThreshold", policy.healthy_threshold)
    if policy.tls_mode is not None:
        tls: dict[str, object] = {"mode": policy.tls_mode}
        origin = policy.tls_origin
        if origin is not None:
            put(tls, "caCertificates", origin.ca_certificates)
            put(tls, "clientCertificate", origin.client_certificate)
            put(tls, "privateKey", origin.private_key)
            put(tls, "sni", origin.sni)
            put(tls, "insecureSkipVerify", origin.insecure_skip_verify, False)
        out["tls"] = tls
    return out


def _hash_doc(spec: ConsistentHash) -> dict[str, object]:
    if spec.cookie is not None:
        cookie: dict[str, object] = {"name": spec.cookie}
        put(cookie, "path", spec.cookie_path)
        put_duration(cookie, "ttl", spec.cookie_ttl)
        return {"httpCookie": cookie}
    if spec.header is not None:
        return {"httpHeaderName": spec.header}
    if spec.query_parameter is not None:
        return {"httpQueryParameterName": spec.query_parameter}
    return {"useSourceIp": True}


def _outlier_doc(outlier: OutlierDetection) -> dict[str, object]:
    out: dict[str, object] = {}
    default = _OUTLIER
    put(out, "consecutive5xxErrors", outlier.consecutive_5xx_errors, default.consecutive_5xx_errors)
    put(out, "consecutiveGatewayErrors", outlier.consecutive_gateway_errors)
    put_duration(out, "interval", outlier.interval, default.interval)
    put_duration(out, "baseEjectionTime", outlier.base_ejection_time, default.base_ejection_time)
    put(out, "maxEjectionPercent", outlier.max_ejection_percent, default.max_ejection_percent)
    put(out, "minHealthPercent", outlier.min_health_percent, default.min_health_percent)
    return out


def _connection_pool_doc(pool: ConnectionPool) -> dict[str, object]:
    tcp: dict[str, object] = {}
    put(tcp, "maxConnections", pool.max_connections)
    put_duration(tcp, "connectTimeout", pool.connect_timeout)
    if pool.tcp_keepalive is not None:
        keepalive: dict[str, object] = {}
        put(keepalive, "probes", pool.tcp_keepalive.probes)
        put_duration(keepalive, "time", pool.tcp_keepalive.time)
        put_duration(keepalive, "interval", pool.tcp_keepalive.interval)
        tcp["tcpKeepalive"] = keepalive
    http: dict[str, object] = {}
    put(http, "http1MaxPendingRequests", pool.http1_max_pending_requests)
    put(http, "http2MaxRequests", pool.http2_max_requests)
    put(http, "maxRequestsPerConnection", pool.max_requests_per_connection)
    put_duration(http, "idleTimeout", pool.idle_timeout)
    out: dict[str, object] = {}
    put(out, "tcp", tcp, {})
    put(out, "http", http, {})
    return out
