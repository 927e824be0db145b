"""gRPC as HTTP sees it: which responses carry their status in trailers.

A gRPC response is ``content-type: application/grpc[+proto|+json…]``; its status
(``grpc-status``, ``grpc-message``) comes in the trailers, except in a *trailers-only* response,
where it is in the head and there is no body (the gRPC over HTTP/2 spec).
"""

from __future__ import annotations

from collections.abc import Iterable

__all__ = ["UNKNOWN_WITHOUT_TRAILERS", "awaits_trailers", "trailers_only"]

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
    grpc = any(n == b"content-type" and v.startswith(b"application/grpc") for n, v in headers)
    if not grpc or not any(n == b"grpc-status" for n, _ in headers):
        return None
    return [f for f in headers if f[0] == b"content-type"], [
        f for f in headers if f[0] != b"content-type"
    ]
