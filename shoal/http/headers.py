"""Header hygiene shared by the gateway and the router: hop-by-hop removal, forwarding headers.

Header names are lower-case bytes (ASGI's form) throughout.

Two builders of the headers sent upstream:

- :func:`edge_request_headers` (the gateway, facing untrusted clients): hop-by-hop headers and
  the ones ``Connection`` names are dropped, Shoal's internal headers (``x-shoal-*``) and identity
  headers are stripped (and, by default, names with an underscore), and the forwarding headers
  (``X-Forwarded-For/-Proto/-Host``, ``Forwarded``, ``X-Real-IP``, ``X-Request-Id``) are
  written by the gateway itself: the client's are replaced,
  or, with ``trusted_hops`` proxies in front of the gateway, only the last ``trusted_hops``
  entries of the client's ``X-Forwarded-For``/``Forwarded`` are kept (like Envoy's
  ``xff_num_trusted_hops``) and the gateway appends its own.
- :func:`request_headers` (the node router, inside the mesh): hop-by-hop headers dropped, the
  caller's forwarding headers kept and the peer appended to ``X-Forwarded-For``.

In both, the headers the proxy adds are added after the ``Connection`` header has been applied,
so a client cannot make the proxy drop them; nor can it drop ``Host`` or ``Content-Length``.
"""

from __future__ import annotations

import base64
import enum
import os
import re
from collections.abc import Iterable, Sequence

# RFC 9110 §7.6.1 connection-specific fields, plus proxy-only ones; never forwarded.
# (``Trailer`` is not one: it announces end-to-end trailer fields, and the gateway needs it to
# know it must offer HTTP/2 trailers before the body starts.)
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"transfer-encoding",
        b"upgrade",
    }
)

# A ``Connection`` header naming these does not remove them: the request's routing and framing.
NEVER_NAMED = frozenset({b"host", b"content-length"})

# Written by the gateway for every request; whatever a client sends under these names is replaced.
FORWARDING = frozenset(
    {
        b"x-forwarded-for",
        b"x-forwarded-proto",
        b"x-forwarded-host",
        b"forwarded",
        b"x-request-id",
        b"x-real-ip",
    }
)


class UnderscorePolicy(enum.Enum):
    """What the edge does with a header whose name holds an underscore (``X_Auth_User``): CGI,
    WSGI and PHP read it as ``X-Auth-User``, so a client could pass a header that a proxy in
    front checks under the other spelling. nginx drops them by default."""

    DROP = "drop"  # not forwarded (default; nginx's ``underscores_in_headers off``)
    KEEP = "keep"  # forwarded as sent
    REJECT = "reject"  # 400 bad_request (Envoy's REJECT_REQUEST)


# Headers only Shoal itself may set: its own (``x-shoal-*``, e.g. the caller identity
# ``x-shoal-peer``) and the client-certificate identity header an upstream might trust.
INTERNAL_PREFIX = b"x-shoal-"
IDENTITY = frozenset({b"x-forwarded-client-cert"})

_EDGE_DROP = HOP_BY_HOP | FORWARDING | IDENTITY
_EDGE_DROP_TRACED = _EDGE_DROP | {b"traceparent"}  # replaced by the edge's own
_MESH_REPLACED = HOP_BY_HOP | {b"x-request-id", b"x-forwarded-for"}  # set by request_headers

Headers = list[tuple[bytes, bytes]]

BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})

_REQUEST_ID = re.compile(r"[!-~]{1,128}")  # visible ASCII: safe to log and to forward
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token: no quoting needed


def _named(headers: Iterable[tuple[bytes, bytes]]) -> frozenset[bytes]:
    """The header names the ``Connection`` header(s) list, minus those it may not remove."""
    return (
        frozenset(
            token.strip().lower()
            for name, value in headers
            if name == b"connection"
            for token in value.split(b",")
        )
        - NEVER_NAMED
    )


# What a proxy sends with a WebSocket handshake it forwards, and with the 101 that accepts it:
# ``Connection``/``Upgrade`` are hop-by-hop, so each hop asks for the switch again. Only
# WebSocket is tunnelled (Envoy's default): an ``Upgrade: h2c`` (request smuggling past the
# proxy's checks) or any other protocol is never passed on.
WEBSOCKET_UPGRADE: Headers = [(b"connection", b"upgrade"), (b"upgrade", b"websocket")]


def websocket_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a request asks to switch to WebSocket (``Connection: upgrade`` and ``Upgrade:
    websocket``, RFC 6455 §4.1)."""
    headers = list(headers)
    return b"upgrade" in _named(headers) and any(
        n == b"upgrade" and b"websocket" in {t.strip().lower() for t in v.split(b",")}
        for n, v in headers
    )


def content_length(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The ``content-length`` a head announces, when it is one decimal number."""
    value = next((v for n, v in headers if n == b"content-length"), None)
    return int(value) if value is not None and value.isdigit() else None


def h2c_upgrade(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether an HTTP/1.1 request asks to switch to HTTP/2 in cleartext (``Upgrade: h2c``
    with one well-formed ``HTTP2-Settings``: base64url of a SETTINGS payload, RFC 7540 §3.2.1;
    what ``curl --http2`` sends to an http URL)."""
    headers = list(headers)
    settings = [v for n, v in headers if n == b"http2-settings"]
    if len(settings) != 1 or not any(
        n == b"upgrade" and b"h2c" in {t.strip().lower() for t in v.split(b",")} for n, v in headers
    ):
        return False
    try:
        payload = base64.urlsafe_b64decode(settings[0] + b"=" * (-len(settings[0]) % 4))
    except ValueError:
        return False
    return len(payload) % 6 == 0  # 6 bytes per setting


def end_to_end(
    headers: Sequence[tuple[bytes, bytes]], drop: frozenset[bytes] = HOP_BY_HOP
) -> Headers:
    """``headers`` without pseudo-headers, those in ``drop`` (hop-by-hop ones at least: the
    default; callers add the names they replace) nor any that ``Connection`` names. One pass
    when nothing is dropped: this runs on every request and answer of every hop."""
    kept = [(n, v) for n, v in headers if n not in drop and n[:1] != b":"]
    if len(kept) != len(headers):  # a Connection header among those dropped may name more
        named = _named(headers)
        if named:
            kept = [(n, v) for n, v in kept if n not in named]
    return kept


def request_id(fields: dict[str, str]) -> bytes:
    """The client's ``X-Request-Id`` if it is sane (1-128 visible ASCII), else a fresh one."""
    given = fields.get("x-request-id")
    if given is not None and _REQUEST_ID.fullmatch(given):
        return given.encode("latin-1")
    return os.urandom(16).hex().encode()


def request_headers(
    raw: Sequence[tuple[bytes, bytes]],
    fields: dict[str, str],
    client_ip: str | None,
    scheme: str,
) -> Headers:
    """Headers to forward upstream inside the mesh: end-to-end ones, ``x-request-id`` and
    ``x-forwarded-*`` (the caller's kept, the peer appended to ``x-forwarded-for``).

    ``fields`` is the same headers as a str dict (lower-case names), already built by the caller.
    """
    headers = end_to_end(raw, _MESH_REPLACED)
    headers.append((b"x-request-id", request_id(fields)))
    prior = fields.get("x-forwarded-for")
    if client_ip:
        xff = f"{prior}, {client_ip}" if prior else client_ip
        headers.append((b"x-forwarded-for", xff.encode("latin-1")))
    elif prior:
        headers.append((b"x-forwarded-for", prior.encode("latin-1")))
    if "x-forwarded-proto" not in fields:
        headers.append((b"x-forwarded-proto", scheme.encode()))
    return headers


def _split_list(value: str) -> list[str]:
    """A comma-separated header value as its elements, commas inside quoted strings kept."""
    if '"' not in value:
        return [part.strip() for part in value.split(",") if part.strip()]
    parts: list[str] = []
    current: list[str] = []
    quoted = escaped = False
    for ch in value:
        if escaped:
            escaped = False
        elif ch == "\\" and quoted:
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == "," and not quoted:
            parts.append("".join(current).strip())
            current = []
            continue
        current.append(ch)
    parts.append("".join(current).strip())
    return [p for p in parts if p]


def _forwarded_value(value: str) -> str:
    """``value`` as an RFC 7239 parameter value: a token, or a quoted string."""
    if _TOKEN.fullmatch(value):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _forwarded_node(ip: str) -> str:
    return f'"[{ip}]"' if ":" in ip else ip


def edge_request_headers(
    raw: Iterable[tuple[bytes, bytes]],
    fields: dict[str, str],
    *,
    client_ip: str | None,
    scheme: str,
    host: str,
    trusted_hops: int = 0,
    keep_underscores: bool = False,
    rid: bytes | None = None,
    traceparent: bytes | None = None,
) -> Headers:
    """Headers to forward upstream from the edge (see the module docstring); names with an
    underscore only with ``keep_underscores``; ``rid``: the request id (default: the client's
    if sane, else a new one); ``traceparent``: this hop's, in place of the client's.

    ``fields`` is the same headers as a str dict (lower-case names); ``host`` the request's host.
    """
    drop = _EDGE_DROP_TRACED if traceparent is not None else _EDGE_DROP
    if "connection" in fields:
        drop = drop | _named(raw)
    headers = [
        (n, v)
        for n, v in raw
        if n not in drop
        and not n.startswith(INTERNAL_PREFIX)
        and (keep_underscores or b"_" not in n)
    ]
    headers.append((b"x-request-id", rid or request_id(fields)))
    if traceparent is not None:
        headers.append((b"traceparent", traceparent))
    proto, fwd_host = scheme, host
    chain: list[str] = []
    elements: list[str] = []
    if trusted_hops:
        xff = [v.decode("latin-1") for n, v in raw if n == b"x-forwarded-for"]
        chain = _split_list(", ".join(xff))[-trusted_hops:]
        fwd = [v.decode("latin-1") for n, v in raw if n == b"forwarded"]
        elements = _split_list(", ".join(fwd))[-trusted_hops:]
        proto = fields.get("x-forwarded-proto", scheme)
        fwd_host = fields.get("x-forwarded-host", host)
    if client_ip:
        chain.append(client_ip)
    if chain:
        headers.append((b"x-forwarded-for", ", ".join(chain).encode("latin-1")))
        # nginx's X-Real-IP: the client, as the outermost trusted proxy (or the gateway) saw it
        headers.append((b"x-real-ip", chain[0].encode("latin-1")))
    headers.append((b"x-forwarded-proto", proto.encode("latin-1")))
    if fwd_host:
        headers.append((b"x-forwarded-host", fwd_host.encode("latin-1")))
    mine = f"proto={scheme}"
    if client_ip:
        mine = f"for={_forwarded_node(client_ip)};{mine}"
    if host:
        mine = f"{mine};host={_forwarded_value(host)}"
    elements.append(mine)
    headers.append((b"forwarded", ", ".join(elements).encode("latin-1")))
    return headers


def expects_body(method: str, fields: dict[str, str], http2: bool) -> bool:
    """Whether a request carries a body to stream upstream."""
    length = fields.get("content-length")
    if length is not None:
        return length != "0"
    return "transfer-encoding" in fields or (http2 and method not in BODYLESS)


def with_authority(headers: Headers, authority: str) -> Headers:
    """``headers`` with the Host replaced (a route's ``rewrite.authority``)."""
    return [(n, v) for n, v in headers if n != b"host"] + [(b"host", authority.encode("latin-1"))]


HeaderEdit = tuple[
    tuple[tuple[bytes, bytes], ...],  # set: overwrite (or add when absent)
    tuple[tuple[bytes, bytes], ...],  # add: append
    frozenset[bytes],  # remove
]
"""A route's header operations as bytes, made once per snapshot (see :func:`edit`)."""


def edit(headers: Headers, operations: Iterable[HeaderEdit]) -> Headers:
    """``headers`` after each of ``operations`` in turn: its removals, then its sets (every
    field of the name replaced by the one value), then its additions (appended)."""
    for set_, add, remove in operations:
        drop = remove | {name for name, _ in set_}
        headers = [(n, v) for n, v in headers if n not in drop] + [*set_, *add]
    return headers
