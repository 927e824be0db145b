"""Header hygiene shared by the gateway and the router: hop-by-hop removal, forwarding headers.

Header names are lower-case bytes (ASGI's form) throughout.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable

# RFC 9110 §7.6.1 connection-specific fields, plus proxy-only ones; never forwarded.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)

Headers = list[tuple[bytes, bytes]]

BODYLESS = frozenset({"GET", "HEAD", "OPTIONS", "DELETE", "TRACE"})


def end_to_end(headers: Iterable[tuple[bytes, bytes]]) -> Headers:
    """``headers`` without hop-by-hop ones, nor any named by ``Connection``."""
    headers = list(headers)
    named = {
        token.strip().lower()
        for name, value in headers
        if name == b"connection"
        for token in value.split(b",")
    }
    drop = HOP_BY_HOP | named
    return [(n, v) for n, v in headers if n not in drop and not n.startswith(b":")]


def request_headers(
    raw: Iterable[tuple[bytes, bytes]],
    fields: dict[str, str],
    client_ip: str | None,
    scheme: str,
) -> Headers:
    """Headers to forward upstream: end-to-end ones plus ``x-request-id`` and ``x-forwarded-*``.

    ``fields`` is the same headers as a str dict (lower-case names), already built by the caller.
    """
    headers = end_to_end(raw)
    if "x-request-id" not in fields:
        headers.append((b"x-request-id", uuid.uuid4().hex.encode()))
    if client_ip:
        prior = fields.get("x-forwarded-for")
        xff = f"{prior}, {client_ip}" if prior else client_ip
        headers = [(n, v) for n, v in headers if n != b"x-forwarded-for"]
        headers.append((b"x-forwarded-for", xff.encode("latin-1")))
    if "x-forwarded-proto" not in fields:
        headers.append((b"x-forwarded-proto", scheme.encode()))
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
