"""The answers Shoal makes itself: one :class:`Refusal` value and every ``x-shoal-cause`` it sends.

A :class:`Refusal` is a value: the pure checks and the proxy's decisions return it, the I/O
shell (the gateway's ASGI app, the node router) turns it into a response. At the edge, a
refusal for a client's fault closes the connection on HTTP/1.x (the body was not read, or the
framing cannot be trusted) and ends the stream on HTTP/2.

Every cause Shoal emits is a constant below, and only these are sent (a cause read back from a
node router's answer is one of them too). Grouped by who is at fault:

===================================  ======  ==================================================
cause                                status  meaning
===================================  ======  ==================================================
**the client's request**
``bad_framing``                      400     Content-Length with Transfer-Encoding, a bad or
                                             conflicting length (501: a transfer coding other
                                             than chunked, refused by h11)
``bad_request``                      400     e.g. two Host headers
``bad_path``                         400     a path the normaliser refuses (encoded slash, bad
                                             escape, NUL, ...)
``not_implemented``                  501     an HTTP/2 CONNECT for anything but a WebSocket
``headers_too_large``                431     too many header fields or bytes
``uri_too_long``                     414     the request target is too long
``body_too_large``                   413     the request body is too long
``request_timeout``                  408     the head or the body did not arrive in time
``client_closed``                    400     the client left in the middle of its body
**routing and policy**
``no_route``                         404     no route for the host and path
``no_healthy_upstream``              503     the route has no destination, or no ready and
                                             non-ejected instance
``fault_abort``                      route   the route's fault injection aborted the request
``overflow``                         503     the cluster's circuit breaker is full
``activation_overflow``              503     too many requests already wait for the service
                                             to start (with Retry-After)
``cold_start_timeout``               503     no instance became ready in time (with
                                             Retry-After)
``no_mesh_identity``                 503     this proxy holds no mesh certificate yet
``mtls_required``                    403     plaintext to a workload whose mode is STRICT
``denied``                           403     an AuthorizationPolicy refused the caller
**the upstream**
``upstream_connect_error``           503     no connection to the instance (nothing was sent)
``upstream_refused_stream``          503     the instance refused the stream (nothing
                                             processed)
``upstream_timeout``                 504     no response head in time
``upstream_reset``                   502     the connection broke after the request was sent
===================================  ======  ==================================================
"""

from __future__ import annotations

from dataclasses import dataclass

CAUSE_HEADER = b"x-shoal-cause"

# The client's request.
BAD_FRAMING = "bad_framing"
BAD_REQUEST = "bad_request"
BAD_PATH = "bad_path"
NOT_IMPLEMENTED = "not_implemented"
HEADERS_TOO_LARGE = "headers_too_large"
URI_TOO_LONG = "uri_too_long"
BODY_TOO_LARGE = "body_too_large"
REQUEST_TIMEOUT = "request_timeout"
CLIENT_CLOSED = "client_closed"

# Routing and policy.
NO_ROUTE = "no_route"
NO_HEALTHY_UPSTREAM = "no_healthy_upstream"
FAULT_ABORT = "fault_abort"
OVERFLOW = "overflow"
ACTIVATION_OVERFLOW = "activation_overflow"
COLD_START_TIMEOUT = "cold_start_timeout"
CRASH_LOOP = "crash_loop"
NO_MESH_IDENTITY = "no_mesh_identity"
MTLS_REQUIRED = "mtls_required"
DENIED = "denied"

# The upstream.
UPSTREAM_CONNECT_ERROR = "upstream_connect_error"
UPSTREAM_REFUSED_STREAM = "upstream_refused_stream"
UPSTREAM_TIMEOUT = "upstream_timeout"
UPSTREAM_RESET = "upstream_reset"

CAUSES = frozenset(
    {
        BAD_FRAMING,
        BAD_REQUEST,
        BAD_PATH,
        HEADERS_TOO_LARGE,
        URI_TOO_LONG,
        BODY_TOO_LARGE,
        REQUEST_TIMEOUT,
        CLIENT_CLOSED,
        NO_ROUTE,
        NO_HEALTHY_UPSTREAM,
        FAULT_ABORT,
        OVERFLOW,
        ACTIVATION_OVERFLOW,
        COLD_START_TIMEOUT,
        CRASH_LOOP,
        NO_MESH_IDENTITY,
        MTLS_REQUIRED,
        DENIED,
        UPSTREAM_CONNECT_ERROR,
        UPSTREAM_REFUSED_STREAM,
        UPSTREAM_TIMEOUT,
        UPSTREAM_RESET,
    }
)
"""Every ``x-shoal-cause`` Shoal sends."""


@dataclass(frozen=True, slots=True)
class Refusal:
    """A request Shoal answers itself: the status, its ``x-shoal-cause``, a human message and,
    when the client should come back later, the seconds to send as ``Retry-After``."""

    status: int
    cause: str
    message: str
    retry_after: int | None = None

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """``x-shoal-cause`` and, when set, ``retry-after``."""
        out = [(CAUSE_HEADER, self.cause.encode())]
        if self.retry_after is not None:
            out.append((b"retry-after", str(self.retry_after).encode()))
        return out

    def body(self) -> bytes:
        """The plain-text body Shoal answers with (only the cause when there is no message)."""
        return (f"{self.cause}: {self.message}" if self.message else self.cause).encode() + b"\n"
