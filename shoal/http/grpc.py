"""gRPC as HTTP sees it: which responses carry their status in trailers.

A gRPC response is ``content-type: application/grpc[+proto|+json…]``; its status
(``grpc-status``, ``grpc-message``) comes in the trailers, except in a *trailers-only* response,
where it is in the head and there is no body (the gRPC over HTTP/2 spec).
"""

from __future__ import annotations

from collections.abc import Iterable
from urllib.parse import quote

__all__ = [
    "UNKNOWN_WITHOUT_TRAILERS",
    "awaits_trailers",
    "head_status",
    "is_grpc",
    "refusal_trailers",
    "status_for",
    "timeout",
    "trailers_only",
]

UNKNOWN_WITHOUT_TRAILERS = [(b"grpc-status", b"2"), (b"grpc-message", b"upstream sent no trailers")]
"""What a proxy ends a gRPC response with when the upstream sent no status at all: UNKNOWN."""


def awaits_trailers(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a response with this head is gRPC whose status is still to come (in trailers)."""
    grpc = status = False
    for name, value in headers:
        if name == b"content-type":
            grpc = value.startswith(b"application/grpc")
        elif name == b"grpc-status":
            status = True
    return grpc and not status


def trailers_only(
    headers: list[tuple[bytes, bytes]],
) -> tuple[list[tuple[bytes, bytes]], list[tuple[bytes, bytes]]] | None:
    """A trailers-only gRPC response's head split into (head, trailers) — its content-type, and
    its status and metadata — for a hop that cannot end a stream on its head (an ASGI server
    sends the end of the body as a frame of its own); None for any other response."""
    if not is_grpc(headers) or not any(n == b"grpc-status" for n, _ in headers):
        return None
    return [f for f in headers if f[0] == b"content-type"], [
        f for f in headers if f[0] != b"content-type"
    ]


def is_grpc(headers: Iterable[tuple[bytes, bytes]]) -> bool:
    """Whether a message with these header fields is gRPC (``content-type: application/grpc…``)."""
    return any(n == b"content-type" and v.startswith(b"application/grpc") for n, v in headers)


# The gRPC project's HTTP-to-gRPC status mapping (doc/http-grpc-status-mapping.md), as Envoy
# applies it to its own answers: anything else is UNKNOWN (2).
_STATUS = {400: 13, 401: 16, 403: 7, 404: 12, 429: 14, 502: 14, 503: 14, 504: 14}


def status_for(http_status: int) -> int:
    """The ``grpc-status`` a gRPC client is told for an HTTP status Shoal would have sent."""
    return _STATUS.get(http_status, 2)


DEADLINE_EXCEEDED = 4


def refusal_trailers(
    http_status: int, message: str, *, timed_out: bool = False
) -> list[tuple[bytes, bytes]]:
    """``grpc-status`` and ``grpc-message`` (percent-encoded, as the spec wants) for an answer
    Shoal makes itself; a deadline that passed is DEADLINE_EXCEEDED (Envoy's choice too)."""
    encoded = "".join(c if " " <= c <= "~" and c != "%" else quote(c, safe="") for c in message)
    status = str(DEADLINE_EXCEEDED if timed_out else status_for(http_status)).encode()
    return [(b"grpc-status", status), (b"grpc-message", encoded.encode())]


_UNITS = {"H": 3600.0, "M": 60.0, "S": 1.0, "m": 1e-3, "u": 1e-6, "n": 1e-9}


def timeout(value: str | None) -> float | None:
    """Seconds of a ``grpc-timeout`` value (1 to 8 digits and a unit: H M S m u n), or None when
    absent or malformed (then no deadline is taken from it)."""
    if value is None or not 2 <= len(value) <= 9:
        return None
    digits, unit = value[:-1], _UNITS.get(value[-1])
    if unit is None or not (digits.isascii() and digits.isdigit()):
        return None
    return int(digits) * unit


def head_status(headers: Iterable[tuple[bytes, bytes]]) -> int | None:
    """The ``grpc-status`` in a gRPC response's head (a trailers-only answer), else None."""
    grpc, status = False, None
    for name, value in headers:
        if name == b"content-type":
            grpc = value.startswith(b"application/grpc")
        elif name == b"grpc-status" and value.isdigit() and len(value) < 4:
            status = int(value)
    return status if grpc else None
