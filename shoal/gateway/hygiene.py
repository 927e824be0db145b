"""The request head, checked once at the edge: framing, limits, Host, path.

hypercorn (h11, h2) has already parsed the head; what hypercorn 0.18.0 lets through and the
gateway must not: ``Content-Length`` together with ``Transfer-Encoding`` (request smuggling),
header blocks of any size or count when they arrive in one read (h11 only bounds a head that is
still incomplete), any URI length, duplicate ``Host`` headers, and un-normalised paths.
:func:`inspect_head` is pure: the head in, a :class:`Head` to route and forward or a
:class:`~shoal.http.refusal.Refusal` out. Checks run in order of cost, the first failing one
wins:

=====  ================================================================  ===================
 414    path + query longer than ``max_uri_bytes``                        ``uri_too_long``
 431    more than ``max_header_count`` fields, or more than               ``headers_too_large``
        ``max_header_bytes`` (Σ len(name) + len(value) + 4)
 400    ``Transfer-Encoding`` with ``Content-Length``, or in HTTP/1.0 or   ``bad_framing``
        HTTP/2, or other than ``chunked``; a ``Content-Length`` that is
        not digits, or two different ones
 400    a header name with ``_`` (with ``UnderscorePolicy.REJECT``)      ``bad_request``
 400    more than one ``Host``                                            ``bad_request``
 413    ``Content-Length`` over ``max_body_bytes``                        ``body_too_large``
 400    a path :func:`~shoal.http.paths.normalize_path` refuses         ``bad_path``
=====  ================================================================  ===================

What h11 refuses before the app runs (hypercorn answers, :mod:`.hypercorn_edge` adds the cause):
conflicting or non-numeric ``Content-Length`` (400), a ``Transfer-Encoding`` other than
``chunked`` or repeated (501, RFC 9112 §6.1), a head still incomplete after
``max_header_bytes + max_uri_bytes`` (431).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from shoal.http.headers import UnderscorePolicy, expects_body
from shoal.http.limits import EdgeLimits
from shoal.http.paths import SlashPolicy, normalize_path
from shoal.http.refusal import (
    BAD_FRAMING,
    BAD_REQUEST,
    BODY_TOO_LARGE,
    HEADERS_TOO_LARGE,
    URI_TOO_LONG,
    Refusal,
)


@dataclass(slots=True, kw_only=True)
class Head:
    """A request head that passed the checks: what routing and forwarding need."""

    path: str  # normalised; routes and authz match on it, and it is what is forwarded
    host: str
    fields: dict[str, str]  # every header, lower-case names, the last value of repeated ones
    content_length: int | None
    has_body: bool


def _repeated(headers: Sequence[tuple[bytes, bytes]], name: bytes) -> list[bytes]:
    return [v for n, v in headers if n == name]


def inspect_head(
    method: str,
    raw_path: bytes,
    query: bytes,
    headers: Sequence[tuple[bytes, bytes]],
    http_version: str,
    limits: EdgeLimits,
    slashes: SlashPolicy = SlashPolicy.REJECT,
    underscores: UnderscorePolicy = UnderscorePolicy.DROP,
) -> Head | Refusal:
    """Check one request head against ``limits``; see the module docstring for the table."""
    if len(raw_path) + len(query) > limits.max_uri_bytes:
        return Refusal(414, URI_TOO_LONG, f"request target over {limits.max_uri_bytes} bytes")
    count = len(headers)
    if count > limits.max_header_count:
        return Refusal(
            431, HEADERS_TOO_LARGE, f"{count} header fields, over {limits.max_header_count}"
        )
    size = 4 * count
    fields: dict[str, str] = {}
    for name, value in headers:
        size += len(name) + len(value)
        fields[name.decode("latin-1")] = value.decode("latin-1")
    if size > limits.max_header_bytes:
        return Refusal(
            431, HEADERS_TOO_LARGE, f"header fields over {limits.max_header_bytes} bytes"
        )
    if underscores is UnderscorePolicy.REJECT:
        odd = next((name for name in fields if "_" in name), None)
        if odd is not None:
            return Refusal(400, BAD_REQUEST, f"header name with an underscore: {odd[:64]}")
    length = fields.get("content-length")
    if "transfer-encoding" in fields:
        if length is not None:
            return Refusal(400, BAD_FRAMING, "Content-Length with Transfer-Encoding")
        if http_version != "1.1":
            return Refusal(400, BAD_FRAMING, f"Transfer-Encoding in HTTP/{http_version}")
        if fields["transfer-encoding"].lower() != "chunked":
            return Refusal(400, BAD_FRAMING, "Transfer-Encoding other than chunked")
    content_length: int | None = None
    if length is not None:
        if not (length.isascii() and length.isdigit()):
            return Refusal(400, BAD_FRAMING, "Content-Length is not a number")
        content_length = int(length)
    if len(fields) != count:  # a repeated field: Host and Content-Length may not differ
        if len(_repeated(headers, b"host")) > 1:
            return Refusal(400, BAD_REQUEST, "more than one Host header")
        if len(set(_repeated(headers, b"content-length"))) > 1:
            return Refusal(400, BAD_FRAMING, "conflicting Content-Length headers")
    if content_length is not None and content_length > limits.max_body_bytes:
        return Refusal(413, BODY_TOO_LARGE, f"Content-Length over {limits.max_body_bytes} bytes")
    path = normalize_path(raw_path, slashes)
    if isinstance(path, Refusal):
        return path
    return Head(
        path=path,
        host=fields.get("host", ""),
        fields=fields,
        content_length=content_length,
        has_body=expects_body(method, fields, http_version == "2"),
    )
