"""Circuit breaking: a cap on the requests one proxy has in flight to one cluster.

Istio's ``connectionPool`` becomes Envoy's per-cluster circuit-breaker thresholds. Shoal's
upstream connections are HTTP/1.1, one request per connection at a time, and its pool does not
queue, so the limits collapse into one number — the requests allowed in flight at once
(:func:`concurrency_limit`):

==============================  ===============================================================
field                           how it limits concurrent requests to the cluster
==============================  ===============================================================
``http2MaxRequests``            directly (Envoy's ``max_requests``, which also covers HTTP/1.1)
``maxConnections`` +            in flight = connections in use + requests waiting for one, so
``http1MaxPendingRequests``     ``maxConnections + http1MaxPendingRequests``; with no pending
                                limit, requests would queue without bound: no limit from these
``maxRequestsPerConnection``    not a concurrency limit: the connection pool closes a
                                connection after that many requests (not this module)
==============================  ===============================================================

When both apply, the smaller wins; with neither (Istio's default), there is no limit. A request
over the limit is answered at once with 503 and ``x-shoal-cause: overflow``: it is neither
queued nor retried on the same cluster.

Release what you acquired: the proxy keeps the :class:`Breaker` it called
:meth:`Breaker.try_acquire` on, and a changed DestinationRule is applied with
:meth:`Breaker.update`, which keeps the count of requests in flight.
"""

from __future__ import annotations

from shoal.resources.model import ConnectionPool


def concurrency_limit(pool: ConnectionPool | None) -> int | None:
    """Requests allowed in flight to the cluster at once under ``pool``; None: unlimited."""
    if pool is None:
        return None
    limits: list[int] = []
    if pool.http2_max_requests is not None:
        limits.append(pool.http2_max_requests)
    if pool.max_connections is not None and pool.http1_max_pending_requests is not None:
        limits.append(pool.max_connections + pool.http1_max_pending_requests)
    return min(limits) if limits else None


class Breaker:
    """Counts a cluster's requests in flight through one proxy and refuses those over the limit."""

    __slots__ = ("_active", "_limit", "_overflows")

    def __init__(self, pool: ConnectionPool | None) -> None:
        self._limit = concurrency_limit(pool)
        self._active = 0
        self._overflows = 0

    @property
    def limit(self) -> int | None:
        """The concurrency limit; None when unlimited."""
        return self._limit

    @property
    def active(self) -> int:
        """Requests acquired and not yet released."""
        return self._active

    @property
    def overflows(self) -> int:
        """Requests refused so far (answered 503 ``overflow``)."""
        return self._overflows

    def update(self, pool: ConnectionPool | None) -> None:
        """Apply a changed ``connectionPool``; requests in flight stay counted."""
        self._limit = concurrency_limit(pool)

    def try_acquire(self) -> bool:
        """Take a slot for one request; False (and counted as an overflow) when none is free."""
        if self._limit is not None and self._active >= self._limit:
            self._overflows += 1
            return False
        self._active += 1
        return True

    def release(self) -> None:
        """Give back the slot of a request that has finished, whatever its outcome."""
        if self._active <= 0:
            raise RuntimeError("Breaker.release() without a matching try_acquire()")
        self._active -= 1
