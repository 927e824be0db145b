"""What became of one attempt to an upstream instance, as outlier detection and retries see it.

An attempt ends either with a response from the instance (any status) or with a local failure the
proxy's upstream layer detected. Local failures carry the status the proxy answers with, the way
Envoy maps them (connect failure and refused stream 503, timeout 504, reset 502), so that a rule
written about status codes ("5xx", "gateway-error") covers them without a special case.

The upstream layer (:mod:`shoal.mesh.upstream`) reports failures as an ``x-shoal-cause``;
:func:`classify` turns that, or a response status, into an :class:`Outcome`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from shoal.http.refusal import (
    UPSTREAM_CONNECT_ERROR,
    UPSTREAM_REFUSED_STREAM,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
)


class Kind(enum.Enum):
    """How an attempt ended."""

    RESPONSE = "response"  # the instance answered with a status line
    CONNECT_FAILURE = "connect_failure"  # no connection: nothing reached the instance
    REFUSED_STREAM = "refused_stream"  # HTTP/2 REFUSED_STREAM: the instance processed nothing
    TIMEOUT = "timeout"  # no response head within the (per-try) timeout
    RESET = "reset"  # the connection broke after the request was (partly) sent


# The status the proxy answers with for each local failure (Envoy's mapping).
_LOCAL_STATUS = {
    Kind.CONNECT_FAILURE: 503,
    Kind.REFUSED_STREAM: 503,
    Kind.TIMEOUT: 504,
    Kind.RESET: 502,
}

GATEWAY_ERRORS = frozenset({502, 503, 504})

# Envoy's Grpc::Utility::grpcToHttpStatus, by grpc-status (anything else: 500).
_GRPC_AS_HTTP = {
    0: 200, 1: 499, 2: 500, 3: 400, 4: 504, 5: 404, 6: 409, 7: 403, 8: 429,
    9: 400, 10: 409, 11: 400, 12: 501, 13: 500, 14: 503, 15: 500, 16: 401,
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class Outcome:
    """The end of one attempt: its :class:`Kind` and the status it amounts to (100-599)."""

    kind: Kind
    status: int
    grpc_status: int | None = None  # a gRPC response's status, when its head carries it

    def __post_init__(self) -> None:
        if not 100 <= self.status <= 599:
            raise ValueError(f"Outcome.status must be an HTTP status 100-599, got {self.status!r}")
        expected = _LOCAL_STATUS.get(self.kind)
        if expected is not None and self.status != expected:
            raise ValueError(
                f"Outcome.status of a {self.kind.value} is {expected}, got {self.status!r}"
            )

    @classmethod
    def response(cls, status: int, grpc_status: int | None = None) -> Outcome:
        """The instance answered with ``status`` (and, for gRPC, ``grpc_status``)."""
        return cls(Kind.RESPONSE, status, grpc_status)

    @property
    def health_status(self) -> int:
        """The status outlier detection judges: a gRPC answer's ``grpc-status`` mapped to HTTP
        (Envoy's ``grpcToHttpStatus``: UNAVAILABLE is 503, INTERNAL 500…), else the status."""
        if self.grpc_status is None:
            return self.status
        return _GRPC_AS_HTTP.get(self.grpc_status, 500)

    @property
    def is_error(self) -> bool:
        """True for a 5xx response or any local failure (what ``consecutive5xxErrors`` counts)."""
        return self.health_status >= 500

    @property
    def is_gateway_error(self) -> bool:
        """True for 502/503/504 and every local failure (``consecutiveGatewayErrors``)."""
        return self.health_status in GATEWAY_ERRORS

    @property
    def reached_upstream(self) -> bool:
        """False only when the instance certainly processed none of the request."""
        return self.kind not in (Kind.CONNECT_FAILURE, Kind.REFUSED_STREAM)


SUCCESS = Outcome.response(200)
CONNECT_FAILURE = Outcome(Kind.CONNECT_FAILURE, 503)
REFUSED_STREAM = Outcome(Kind.REFUSED_STREAM, 503)
TIMEOUT = Outcome(Kind.TIMEOUT, 504)
RESET = Outcome(Kind.RESET, 502)

# The ``x-shoal-cause`` values the upstream layer raises, and what each one means here.
CAUSES = {
    UPSTREAM_CONNECT_ERROR: CONNECT_FAILURE,
    UPSTREAM_REFUSED_STREAM: REFUSED_STREAM,
    UPSTREAM_TIMEOUT: TIMEOUT,
    UPSTREAM_RESET: RESET,
}


def classify(status: int | None, error_cause: str | None) -> Outcome:
    """The outcome of an attempt from the upstream's status or the proxy's error cause.

    ``error_cause`` wins when both are given (an ``UpstreamError`` carries the status the proxy
    answers with, not one the instance sent). An unknown cause, or neither argument, is a bug in
    the caller and raises ``ValueError``.
    """
    if error_cause is not None:
        outcome = CAUSES.get(error_cause)
        if outcome is None:
            raise ValueError(
                f"unknown upstream error cause {error_cause!r}; expected one of {sorted(CAUSES)}"
            )
        return outcome
    if status is None:
        raise ValueError("classify needs a response status or an error cause")
    return Outcome.response(status)
