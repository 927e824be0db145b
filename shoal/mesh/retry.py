"""Retries: whether a failed attempt may be tried again, the retry budget, and the backoff.

The proxy calls, after each failed attempt: :func:`should_retry` (the route's policy and the
request's safety), then :meth:`RetryBudget.can_retry` (the cluster-wide brake), then sleeps
:func:`backoff` and picks another instance, giving the attempt :func:`attempt_timeout`. All of
it is pure: the clock and the random source are arguments.

``retryOn`` follows Envoy's vocabulary as Istio passes it through:

=========================  ==============================================================
condition                  retries on
=========================  ==============================================================
``5xx``                    any 5xx response, connect failure, refused stream, reset, timeout
``gateway-error``          502/503/504 responses and the same local failures as ``5xx``
``reset``                  connect failure, refused stream, reset, timeout (no response)
``connect-failure``        connect failure
``refused-stream``         HTTP/2 REFUSED_STREAM
``retriable-4xx``          409
``retriable-status-codes`` a response whose status is one of the numeric codes in retryOn
=========================  ==============================================================

Envoy counts a per-try timeout as a reset, hence ``timeout`` under ``5xx``, ``gateway-error``
and ``reset``. The gRPC conditions (``cancelled`` 1, ``deadline-exceeded`` 4,
``resource-exhausted`` 8, ``internal`` 13, ``unavailable`` 14) match a response whose head
carries that ``grpc-status`` — a trailers-only answer, as in Envoy: a status that comes in the
trailers arrives after the body has been relayed. ``envoy-ratelimited`` and
``retriable-headers`` are accepted and never match (no rate limiter, no header list).

Safety: a request whose bytes may have reached the instance (``sent``) is retried only if its
method is idempotent (or the route opts in) and its body was buffered and can be sent again.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

from shoal.mesh.outcome import GATEWAY_ERRORS, Kind, Outcome
from shoal.resources.model import Retries

IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"})

# Istio's policy when a route sets no ``retries`` (and its status codes when ``retryOn`` is left
# at the default): pilot's retry.DefaultPolicy().
ISTIO_DEFAULT_RETRY_ON = Retries().retry_on
ISTIO_DEFAULT_STATUS_CODES = frozenset({503})

_LOCAL_FAILURES = frozenset({Kind.CONNECT_FAILURE, Kind.REFUSED_STREAM, Kind.RESET, Kind.TIMEOUT})
GRPC_CODES = {
    "cancelled": 1,
    "deadline-exceeded": 4,
    "resource-exhausted": 8,
    "internal": 13,
    "unavailable": 14,
}
MATCHING = frozenset(
    "5xx gateway-error reset connect-failure refused-stream retriable-4xx "
    "retriable-status-codes".split()
) | frozenset(GRPC_CODES)
NEVER_MATCHING = frozenset("envoy-ratelimited retriable-headers".split())


@dataclass(frozen=True, slots=True, kw_only=True)
class RetryPolicy:
    """The effective retry policy of a route.

    ``attempts`` is the number of retries after the first try (Istio's meaning; 0 disables);
    ``timeout`` is the route's total deadline across all tries, ``per_try_timeout`` the limit of
    each one; None means no limit.
    """

    attempts: int
    conditions: frozenset[str]
    status_codes: frozenset[int] = frozenset()
    per_try_timeout: float | None = None
    timeout: float | None = None

    def __post_init__(self) -> None:
        if self.attempts < 0:
            raise ValueError(f"RetryPolicy.attempts must be >= 0, got {self.attempts!r}")
        unknown = self.conditions - MATCHING - NEVER_MATCHING
        if unknown:
            raise ValueError(f"RetryPolicy.conditions has unknown {sorted(unknown)!r}")
        for code in self.status_codes:
            if not 100 <= code <= 599:
                raise ValueError(f"RetryPolicy.status_codes has a non-HTTP status {code!r}")
        for name in ("per_try_timeout", "timeout"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ValueError(f"RetryPolicy.{name} must be > 0 seconds or None, got {value!r}")


def effective(retries: Retries | None, timeout: float | None = None) -> RetryPolicy:
    """The policy Istio would apply for a route's ``retries`` and ``timeout``.

    No ``retries``: Istio's default (2 retries on connect-failure, refused-stream and 503).
    ``attempts: 0``: no retries. Numeric parts of ``retryOn`` are the retriable status codes and
    imply ``retriable-status-codes``. A ``retryOn`` equal to Istio's default keeps the default
    code 503 (the model cannot tell it from an unset ``retryOn``).
    """
    if retries is None:
        return RetryPolicy(
            attempts=2,
            conditions=frozenset(ISTIO_DEFAULT_RETRY_ON),
            status_codes=ISTIO_DEFAULT_STATUS_CODES,
            timeout=timeout,
        )
    conditions = frozenset(part for part in retries.retry_on if not part.isdigit())
    codes = frozenset(int(part) for part in retries.retry_on if part.isdigit())
    if codes:
        conditions |= {"retriable-status-codes"}
    elif retries.retry_on == ISTIO_DEFAULT_RETRY_ON:
        codes = ISTIO_DEFAULT_STATUS_CODES
    return RetryPolicy(
        attempts=retries.attempts,
        conditions=conditions,
        status_codes=codes,
        per_try_timeout=retries.per_try_timeout,
        timeout=timeout,
    )


def retriable(policy: RetryPolicy, outcome: Outcome) -> bool:
    """True when ``outcome`` matches one of the policy's ``retryOn`` conditions."""
    on = policy.conditions
    kind = outcome.kind
    if kind is Kind.RESPONSE:
        status = outcome.status
        return (
            ("5xx" in on and status >= 500)
            or ("gateway-error" in on and status in GATEWAY_ERRORS)
            or ("retriable-4xx" in on and status == 409)
            or ("retriable-status-codes" in on and status in policy.status_codes)
            or (
                outcome.grpc_status is not None
                and any(GRPC_CODES.get(c) == outcome.grpc_status for c in on)
            )
        )
    if kind in _LOCAL_FAILURES and not on.isdisjoint(("5xx", "gateway-error", "reset")):
        return True
    return ("connect-failure" in on and kind is Kind.CONNECT_FAILURE) or (
        "refused-stream" in on and kind is Kind.REFUSED_STREAM
    )


def should_retry(
    policy: RetryPolicy,
    attempt: int,
    outcome: Outcome,
    method: str,
    *,
    sent: bool,
    idempotent_opt_in: bool,
    body_replayable: bool,
) -> bool:
    """Whether try number ``attempt`` (1 is the first) that ended in ``outcome`` may be retried.

    Yes only if fewer than ``policy.attempts`` retries were made, the outcome matches ``retryOn``
    and the request is safe to send again. Once some byte may have reached the instance
    (``sent``, taken as True for every outcome but a connect failure or a refused stream), a
    non-idempotent method needs ``idempotent_opt_in`` and any body must be ``body_replayable``
    (buffered).
    """
    if attempt < 1:
        raise ValueError(f"attempt counts tries from 1, got {attempt!r}")
    if attempt > policy.attempts or not retriable(policy, outcome):
        return False
    if not (sent or outcome.reached_upstream):
        return True
    if not body_replayable:
        return False
    return idempotent_opt_in or method.upper() in IDEMPOTENT_METHODS


def attempt_timeout(policy: RetryPolicy, elapsed: float) -> float | None:
    """The timeout of the next try, ``elapsed`` seconds after the request started.

    The smaller of ``per_try_timeout`` and what is left of ``timeout``; 0.0 when the route's
    deadline has passed (do not try again); None when neither limit is set.
    """
    remaining = None if policy.timeout is None else max(0.0, policy.timeout - elapsed)
    if policy.per_try_timeout is None:
        return remaining
    if remaining is None:
        return policy.per_try_timeout
    return min(policy.per_try_timeout, remaining)


def backoff(attempt: int, rng: random.Random, base: float = 0.025, cap: float = 0.25) -> float:
    """Seconds to wait before retry number ``attempt`` (1 is the first retry).

    Envoy's fully jittered exponential backoff: uniform in ``[0, min(cap, base * (2**attempt -
    1)))``; the defaults are Envoy's (25 ms, capped at 10 times that).
    """
    if attempt < 1:
        raise ValueError(f"attempt counts retries from 1, got {attempt!r}")
    ceiling = min(cap, base * (2.0 ** min(attempt, 64) - 1.0))
    return rng.random() * ceiling


class RetryBudget:
    """Linkerd's retry budget: retries stay below ``ratio`` of requests plus a floor.

    A retry is allowed at ``now`` when, counting it, the retries of the trailing ``ttl`` window
    are at most ``ratio * requests + min_per_second * ttl`` of the same window. The window is
    ``buckets`` fixed time slots (1 s each by default) in a ring: the slot holding ``now`` and the
    ones before it, so memory is constant and a request costs one increment. Times before the
    newest slot seen are counted in it (a monotonic clock never goes back; this only guards).
    """

    __slots__ = (
        "_epochs",
        "_latest",
        "_requests",
        "_retries",
        "_width",
        "min_per_second",
        "ratio",
        "ttl",
    )

    def __init__(
        self,
        *,
        ratio: float = 0.2,
        min_per_second: float = 10.0,
        ttl: float = 10.0,
        buckets: int = 10,
    ) -> None:
        if ratio < 0 or min_per_second < 0:
            raise ValueError(
                f"RetryBudget ratio and min_per_second must be >= 0, got {ratio!r}, "
                f"{min_per_second!r}"
            )
        if not ttl > 0 or buckets < 1:
            raise ValueError(
                f"RetryBudget needs ttl > 0 and buckets >= 1, got {ttl!r}, {buckets!r}"
            )
        self.ratio = ratio
        self.min_per_second = min_per_second
        self.ttl = ttl
        self._width = ttl / buckets
        self._epochs = [-1] * buckets  # which time slot each ring entry counts
        self._requests = [0] * buckets
        self._retries = [0] * buckets
        self._latest = -1

    def _slot(self, now: float) -> int:
        epoch = max(math.floor(now / self._width), self._latest)
        self._latest = epoch
        index = epoch % len(self._epochs)
        if self._epochs[index] != epoch:
            self._epochs[index] = epoch
            self._requests[index] = 0
            self._retries[index] = 0
        return index

    def on_request(self, now: float) -> None:
        """Count one original request (not a retry)."""
        self._requests[self._slot(now)] += 1

    def window(self, now: float) -> tuple[int, int]:
        """``(requests, retries)`` counted in the window that ends at ``now``."""
        self._slot(now)
        oldest = self._latest - len(self._epochs) + 1
        requests = retries = 0
        for index, epoch in enumerate(self._epochs):
            if epoch >= oldest:
                requests += self._requests[index]
                retries += self._retries[index]
        return requests, retries

    def can_retry(self, now: float) -> bool:
        """True (and the retry is counted) when the budget allows one more retry at ``now``."""
        requests, retries = self.window(now)
        if retries + 1 > self.ratio * requests + self.min_per_second * self.ttl + 1e-9:
            return False
        self._retries[self._slot(now)] += 1
        return True
