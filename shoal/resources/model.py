"""The resources users write, as frozen values.

``Service`` (``shoal/v1``) says what to run; ``VirtualService`` and ``DestinationRule`` reuse
Istio's kinds and field names (``networking.istio.io/v1``, ``v1beta1`` and ``v1alpha3`` are all
accepted), as do ``PeerAuthentication`` and ``AuthorizationPolicy`` (``security.istio.io/v1``
and ``v1beta1``). These classes are built only by :mod:`shoal.resources.manifest`, which
validates every field; code that holds one may trust it.

Durations are float seconds; percentages are floats in [0, 100].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

SERVICE_API = "shoal/v1"
ISTIO_APIS = (
    "networking.istio.io/v1",
    "networking.istio.io/v1beta1",
    "networking.istio.io/v1alpha3",
)
SECURITY_APIS = ("security.istio.io/v1", "security.istio.io/v1beta1")

TlsModeName = Literal["ISTIO_MUTUAL", "DISABLE", "SIMPLE", "MUTUAL"]
LoadBalancerPolicy = Literal["ROUND_ROBIN", "RANDOM", "LEAST_REQUEST", "WEIGHTED"]


@dataclass(frozen=True, slots=True, kw_only=True)
class Scale:
    """How many instances of a revision run: bounds, autoscaler target, idle timeout."""

    min: int = 1
    max: int = 10
    target_concurrency: int = 10
    idle_timeout: float = 60.0


@dataclass(frozen=True, slots=True, kw_only=True)
class HealthCheck:
    """The active health check of an instance: HTTP GET ``path``, or with ``grpc`` the standard
    gRPC health check (``grpc.health.v1.Health/Check`` answering SERVING), else a TCP connect."""

    path: str | None = None
    grpc: bool = False
    interval: float = 2.0
    timeout: float = 1.0
    healthy_threshold: int = 1
    unhealthy_threshold: int = 3


Protocol = Literal["http", "h2c", "grpc"]
PROTOCOLS: tuple[Protocol, ...] = ("http", "h2c", "grpc")
"""What an instance speaks: HTTP/1.1 (``http``), or HTTP/2 without TLS (``h2c``; ``grpc`` is
gRPC over h2c). Routers reach each instance in its own protocol."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Metadata:
    """A manifest's ``metadata`` besides its name: kept and shown (``shoal get``), never acted
    on (a Service's instance labels are ``spec.labels``)."""

    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()


DEFAULT_ACCOUNT = "default"  # as in Kubernetes: a service that names no account runs as this

NAMESPACE = "default"
"""The one namespace Shoal serves: a manifest may say it (``metadata.namespace``, a host
``<name>.default.svc.cluster.local``), any other is refused."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Service:
    """One revision of a service Shoal runs: an ASGI ``app`` or a ``command`` serving ``$PORT``.

    ``node_selector`` confines its instances to nodes whose labels (``shoal node --label``)
    include every pair; like ``scale`` it says where and how many, not what runs, so it is not
    part of the revision.
    """

    name: str
    revision: str
    app: str | None = None
    command: tuple[str, ...] | None = None
    workdir: str | None = None
    env: tuple[tuple[str, str], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    weight: int = 1
    scale: Scale = field(default_factory=Scale)
    health: HealthCheck = field(default_factory=HealthCheck)
    node_selector: tuple[tuple[str, str], ...] = ()
    protocol: Protocol = "http"  # what its instances speak (Istio's appProtocol)
    # Kubernetes' serviceAccountName: AuthorizationPolicy principals in Istio's form
    # (``<td>/ns/default/sa/<account>``) match the services that run as that account.
    service_account: str = DEFAULT_ACCOUNT
    metadata: Metadata = field(default_factory=Metadata)
    # Knative's traffic tags: each reaches this revision at the host ``<tag>-<name>`` whatever
    # its share of the traffic; like ``scale``, not part of the revision.
    tags: tuple[str, ...] = ()
    # When the revision was first applied (the store's revision then): which is the latest.
    # Kept in the document's ``status``, not part of the spec or the revision.
    created: int = 0

    kind = "Service"

    @property
    def key(self) -> str:
        """Store key: one entry per revision."""
        return f"{self.name}/{self.revision}"

    def instance_labels(self) -> dict[str, str]:
        """Labels every instance of this revision carries (``version`` is the revision)."""
        return {**dict(self.labels), "app": self.name, "version": self.revision}


# ---------------------------------------------------------------------------------------------
# VirtualService


@dataclass(frozen=True, slots=True, kw_only=True)
class StringMatch:
    """Istio's StringMatch: exactly one of ``exact``, ``prefix``, ``regex`` is set."""

    exact: str | None = None
    prefix: str | None = None
    regex: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPMatchRequest:
    """One match block; all its conditions must hold (AND). Header names are lower case."""

    name: str | None = None
    uri: StringMatch | None = None
    method: StringMatch | None = None
    authority: StringMatch | None = None
    headers: tuple[tuple[str, StringMatch], ...] = ()
    query_params: tuple[tuple[str, StringMatch], ...] = ()  # names as written (case matters)
    # The calling workload's labels must include these (an instance's: ``app``, ``version``
    # and its ``spec.labels``); the gateway has none, so such a block never matches there.
    source_labels: tuple[tuple[str, str], ...] = ()
    ignore_uri_case: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class Destination:
    """Where traffic goes: a service host and optionally a DestinationRule subset."""

    host: str
    subset: str | None = None
    port: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderOperations:
    """Istio's ``HeaderOperations``: fields to remove, to overwrite, to append (lower-case
    names), applied in that order."""

    set: tuple[tuple[str, str], ...] = ()
    add: tuple[tuple[str, str], ...] = ()
    remove: tuple[str, ...] = ()

    def as_bytes(
        self,
    ) -> tuple[tuple[tuple[bytes, bytes], ...], tuple[tuple[bytes, bytes], ...], frozenset[bytes]]:
        """The operations in the proxy's form (``shoal.http.headers.HeaderEdit``)."""
        return (
            tuple((n.encode(), v.encode("latin-1")) for n, v in self.set),
            tuple((n.encode(), v.encode("latin-1")) for n, v in self.add),
            frozenset(n.encode() for n in self.remove),
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class HeaderRules:
    """Istio's ``Headers``: what to change on the request sent and on the response returned."""

    request: HeaderOperations | None = None
    response: HeaderOperations | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteDestination:
    """A weighted destination of a route."""

    destination: Destination
    weight: int = 100
    headers: HeaderRules | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Retries:
    """Istio's HTTPRetry, plus Shoal's ``retryNonIdempotent`` opt-in.

    Envoy retries any method; Shoal retries a request that may have reached the instance only
    when its method is idempotent, unless ``non_idempotent`` says the route's handlers are safe
    to run twice.
    """

    attempts: int = 2
    per_try_timeout: float | None = None
    retry_on: tuple[str, ...] = (
        "connect-failure",
        "refused-stream",
        "unavailable",
        "cancelled",
        "retriable-status-codes",
    )
    non_idempotent: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultDelay:
    """Inject ``fixed_delay`` seconds into ``percentage`` % of requests."""

    percentage: float = 100.0
    fixed_delay: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class FaultAbort:
    """Answer ``http_status`` to ``percentage`` % of requests without forwarding them."""

    percentage: float = 100.0
    http_status: int = 503


@dataclass(frozen=True, slots=True, kw_only=True)
class Fault:
    """Istio's HTTPFaultInjection."""

    delay: FaultDelay | None = None
    abort: FaultAbort | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Rewrite:
    """Istio's HTTPRewrite: replace the matched URI prefix (or whole URI) and/or the authority."""

    uri: str | None = None
    authority: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRedirect:
    """Istio's ``redirect``: answer with a redirect instead of forwarding; each part of the
    request's URL it does not name is kept (the query too)."""

    uri: str | None = None  # the new path
    authority: str | None = None  # the new host
    port: int | None = None
    scheme: str | None = None
    redirect_code: int = 301


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPDirectResponse:
    """Istio's ``directResponse``: answer with this status and body instead of forwarding
    (``text``: the body was given as ``body.string``, sent as ``text/plain``)."""

    status: int
    body: bytes = b""
    text: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class CorsPolicy:
    """Istio's ``corsPolicy``: which cross-origin callers a browser may let read the answer."""

    allow_origins: tuple[StringMatch, ...] = ()
    allow_methods: tuple[str, ...] = ()
    allow_headers: tuple[str, ...] = ()
    expose_headers: tuple[str, ...] = ()
    max_age: float | None = None
    allow_credentials: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class HTTPRoute:
    """One ``http[]`` rule: matches (OR of blocks; empty matches everything) and where to go."""

    name: str | None = None
    match: tuple[HTTPMatchRequest, ...] = ()
    route: tuple[RouteDestination, ...] = ()
    timeout: float | None = None
    retries: Retries | None = None
    fault: Fault | None = None
    rewrite: Rewrite | None = None
    mirror: Destination | None = None
    mirror_percentage: float = 100.0  # of requests copied to ``mirror``
    headers: HeaderRules | None = None
    redirect: HTTPRedirect | None = None  # instead of ``route``
    direct_response: HTTPDirectResponse | None = None  # instead of ``route``
    cors: CorsPolicy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class VirtualService:
    """Istio's VirtualService: routing rules for requests addressed to ``hosts``."""

    name: str
    hosts: tuple[str, ...]
    gateways: tuple[str, ...] = ()
    http: tuple[HTTPRoute, ...] = ()
    metadata: Metadata = field(default_factory=Metadata)

    kind = "VirtualService"

    @property
    def key(self) -> str:
        """Store key: the resource name."""
        return self.name


# ---------------------------------------------------------------------------------------------
# DestinationRule


@dataclass(frozen=True, slots=True, kw_only=True)
class OutlierDetection:
    """Istio/Envoy passive outlier detection. Defaults are Istio's."""

    consecutive_5xx_errors: int = 5
    consecutive_gateway_errors: int | None = None
    interval: float = 10.0
    base_ejection_time: float = 30.0
    max_ejection_percent: float = 10.0
    min_health_percent: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class TcpKeepalive:
    """Istio's ``connectionPool.tcp.tcpKeepalive``: TCP keepalive on the connections to the
    destination; what is unset is the system's (Linux: 2 h idle, 75 s apart, 9 probes)."""

    probes: int | None = None
    time: float | None = None  # idle before the first probe
    interval: float | None = None  # between probes


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionPool:
    """Circuit-breaker limits (Istio's connectionPool.tcp/http); None means unlimited. The
    connections' own settings: ``connect_timeout`` (None: the proxy's, 3 s) and
    ``tcp_keepalive`` (None: off)."""

    max_connections: int | None = None
    connect_timeout: float | None = None
    tcp_keepalive: TcpKeepalive | None = None
    http1_max_pending_requests: int | None = None
    http2_max_requests: int | None = None
    max_requests_per_connection: int | None = None
    idle_timeout: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class ConsistentHash:
    """Istio's ``loadBalancer.consistentHash``: requests with the same key go to the same
    instance while it is a candidate (sticky sessions), the key taken from one of a header
    (lower-case name), a cookie, the client's address or a query parameter. With
    ``cookie_ttl``, a client without the cookie is given one (Envoy's generated cookie)."""

    header: str | None = None
    cookie: str | None = None
    cookie_path: str | None = None
    cookie_ttl: float | None = None
    source_ip: bool = False
    query_parameter: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class OriginTLS:
    """TLS a proxy originates to a destination outside Shoal (a DestinationRule's ``tls`` with
    mode SIMPLE or MUTUAL): the CA to verify it with (None: the system's), the client
    certificate and key (MUTUAL), the SNI name (None: the destination host)."""

    ca_certificates: str | None = None
    client_certificate: str | None = None
    private_key: str | None = None
    sni: str | None = None
    insecure_skip_verify: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class TrafficPolicy:
    """Per-destination policy: balancer, outlier detection, pool limits, health thresholds."""

    load_balancer: LoadBalancerPolicy | None = None  # None: not set here (ROUND_ROBIN overall)
    consistent_hash: ConsistentHash | None = None  # instead of ``load_balancer``
    # ``tls.mode``: ISTIO_MUTUAL (Shoal's mTLS between proxies, the default) or DISABLE
    # (plaintext to the instance's node router, which its PeerAuthentication may refuse); to a
    # destination outside Shoal (a ServiceEntry), SIMPLE or MUTUAL: TLS that the proxy
    # originates, as ``tls_origin`` says.
    tls_mode: TlsModeName | None = None
    tls_origin: OriginTLS | None = None
    outlier_detection: OutlierDetection | None = None
    connection_pool: ConnectionPool | None = None
    failure_threshold: int | None = None
    healthy_threshold: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class Subset:
    """A named group of a service's instances, selected by labels."""

    name: str
    labels: tuple[tuple[str, str], ...] = ()
    traffic_policy: TrafficPolicy | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class DestinationRule:
    """Istio's DestinationRule: subsets and traffic policy of one service host."""

    name: str
    host: str
    subsets: tuple[Subset, ...] = ()
    traffic_policy: TrafficPolicy = field(default_factory=TrafficPolicy)
    metadata: Metadata = field(default_factory=Metadata)

    kind = "DestinationRule"

    @property
    def key(self) -> str:
        """Store key: the resource name."""
        return self.name


# ---------------------------------------------------------------------------------------------
# PeerAuthentication and AuthorizationPolicy (security.istio.io)

MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]
AuthorizationAction = Literal["ALLOW", "DENY"]


@dataclass(frozen=True, slots=True, kw_only=True)
class PeerAuthentication:
    """Istio's PeerAuthentication: the mTLS mode of the workloads whose labels include
    ``match_labels`` (all workloads when empty). UNSET inherits the wider policy."""

    name: str
    match_labels: tuple[tuple[str, str], ...] = ()
    mtls_mode: MtlsMode = "UNSET"
    metadata: Metadata = field(default_factory=Metadata)

    kind = "PeerAuthentication"

    @property
    def key(self) -> str:
        """Store key: the resource name."""
        return self.name


@dataclass(frozen=True, slots=True, kw_only=True)
class Source:
    """Istio's ``rules[].from[].source``: who calls. Empty tuples do not constrain.

    Principals are SPIFFE IDs without the ``spiffe://`` scheme (``<td>/svc/<service>``), as
    Istio writes them, with an optional leading or trailing ``*`` or exactly ``*``.
    """

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Operation:
    """Istio's ``rules[].to[].operation``: what is called. Empty tuples do not constrain."""

    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class Rule:
    """One ``rules[]`` entry: some ``from_`` source AND some ``to`` operation must match; an
    empty tuple does not constrain, so ``Rule()`` matches every request."""

    from_: tuple[Source, ...] = ()
    to: tuple[Operation, ...] = ()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthorizationPolicy:
    """Istio's AuthorizationPolicy: ALLOW or DENY the requests matching any of ``rules`` to
    workloads whose labels include ``match_labels`` (all workloads when empty). A policy
    without rules matches nothing (an ALLOW one then allows nothing)."""

    name: str
    match_labels: tuple[tuple[str, str], ...] = ()
    action: AuthorizationAction = "ALLOW"
    rules: tuple[Rule, ...] = ()
    metadata: Metadata = field(default_factory=Metadata)

    kind = "AuthorizationPolicy"

    @property
    def key(self) -> str:
        """Store key: the resource name."""
        return self.name


# ---------------------------------------------------------------------------------------------
# Gateway (networking.istio.io): the edge's listeners

ServerProtocol = Literal["HTTP", "HTTPS", "HTTP2", "GRPC"]
TlsMode = Literal["SIMPLE", "MUTUAL"]
TlsVersion = Literal["TLSV1_2", "TLSV1_3"]
MESH_GATEWAY = "mesh"
"""The reserved gateway name of a VirtualService's ``gateways``: east-west, in the mesh."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerTLS:
    """A Gateway server's ``tls``: on an HTTP server only ``https_redirect``; on an HTTPS one
    the mode and the certificate, key and (MUTUAL) client CA files, paths on the gateway's
    host."""

    https_redirect: bool = False
    mode: TlsMode | None = None
    server_certificate: str | None = None
    private_key: str | None = None
    ca_certificates: str | None = None
    min_protocol_version: TlsVersion | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class GatewayServer:
    """One listener of a Gateway: a port, its protocol, the hosts it serves, its TLS."""

    port: int
    protocol: ServerProtocol
    hosts: tuple[str, ...]
    port_name: str | None = None
    name: str | None = None
    tls: ServerTLS | None = None

    @property
    def secure(self) -> bool:
        """Whether the port speaks TLS."""
        return self.protocol == "HTTPS"

    @property
    def handshake(self) -> tuple[object, ...]:
        """What servers sharing a port must agree on, one handshake serving them all: TLS or
        not and, for TLS, the mode, the client CA and the lowest version."""
        tls = self.tls
        if not self.secure or tls is None:
            return (False,)
        return (True, tls.mode, tls.ca_certificates, tls.min_protocol_version)


@dataclass(frozen=True, slots=True, kw_only=True)
class Gateway:
    """Istio's Gateway: ports every Shoal gateway opens, each for some hosts, and how."""

    name: str
    servers: tuple[GatewayServer, ...]
    selector: tuple[tuple[str, str], ...] = ()
    metadata: Metadata = field(default_factory=Metadata)

    kind = "Gateway"

    @property
    def key(self) -> str:
        """Store key: the resource name."""
        return self.name


# ---------------------------------------------------------------------------------------------
# ServiceEntry (networking.istio.io): destinations outside Shoal

EntryProtocol = Literal["HTTP", "HTTPS"]


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryPort:
    """A ServiceEntry port: ``HTTP`` is spoken to the endpoints as it is, ``HTTPS`` with TLS
    that Shoal originates (as a DestinationRule's ``tls.mode: SIMPLE`` would)."""

    number: int
    protocol: EntryProtocol
    name: str | None = None
    target_port: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class EntryEndpoint:
    """An endpoint of a ServiceEntry (Istio's inline WorkloadEntry): an address (an IP, or a
    host name resolved when connecting), ports by port name, labels (subsets select them)."""

    address: str
    ports: tuple[tuple[str, int], ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    weight: int = 1


@dataclass(frozen=True, slots=True, kw_only=True)
class ServiceEntry:
    """Istio's ServiceEntry: hosts served outside Shoal, added to the mesh's registry so that
    routes, retries, timeouts and outlier detection apply to them. ``STATIC``: the
    ``endpoints``' addresses; ``DNS``: their names, or the host itself, resolved when
    connecting."""

    name: str
    hosts: tuple[str, ...]
    ports: tuple[EntryPort, ...]
    resolution: Literal["STATIC", "DNS"] = "DNS"
    location: Literal["MESH_EXTERNAL", "MESH_INTERNAL"] = "MESH_EXTERNAL"
    endpoints: tuple[EntryEndpoint, ...] = ()
    metadata: Metadata = field(default_factory=Metadata)

    kind = "ServiceEntry"

    @property
    def key(self) -> str:
        """Store key: the resource name."""
        return self.name


Resource = (
    Service
    | VirtualService
    | DestinationRule
    | PeerAuthentication
    | AuthorizationPolicy
    | Gateway
    | ServiceEntry
)
KINDS: dict[
    str,
    type[Service]
    | type[VirtualService]
    | type[DestinationRule]
    | type[PeerAuthentication]
    | type[AuthorizationPolicy]
    | type[Gateway]
    | type[ServiceEntry],
] = {
    "Service": Service,
    "VirtualService": VirtualService,
    "DestinationRule": DestinationRule,
    "PeerAuthentication": PeerAuthentication,
    "AuthorizationPolicy": AuthorizationPolicy,
    "Gateway": Gateway,
    "ServiceEntry": ServiceEntry,
}
