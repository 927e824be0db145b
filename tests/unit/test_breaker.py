"""Circuit breaker: connectionPool limits become one concurrency cap, enforced at once."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from shoal.mesh.breaker import Breaker, concurrency_limit
from shoal.resources.model import ConnectionPool

PROPERTY = settings(database=None, derandomize=True, deadline=None, max_examples=200)


@pytest.mark.parametrize(
    ("pool", "limit"),
    [
        (None, None),
        (ConnectionPool(), None),
        (ConnectionPool(http2_max_requests=100), 100),
        (ConnectionPool(max_connections=1, http1_max_pending_requests=1), 2),
        (ConnectionPool(max_connections=5), None),
        (ConnectionPool(http1_max_pending_requests=5), None),
        (ConnectionPool(max_connections=10, http1_max_pending_requests=5, http2_max_requests=8), 8),
        (ConnectionPool(max_requests_per_connection=1), None),
    ],
)
def test_concurrency_limit_mapping(pool: ConnectionPool | None, limit: int | None) -> None:
    """http2MaxRequests, or maxConnections + http1MaxPendingRequests, whichever is smaller."""
    assert concurrency_limit(pool) == limit


def test_istio_tutorial_pool_allows_two_in_flight() -> None:
    """maxConnections 1 + http1MaxPendingRequests 1: two requests pass, the third overflows."""
    breaker = Breaker(ConnectionPool(max_connections=1, http1_max_pending_requests=1))
    assert breaker.try_acquire()
    assert breaker.try_acquire()
    assert not breaker.try_acquire()
    assert (breaker.active, breaker.overflows) == (2, 1)
    breaker.release()
    assert breaker.try_acquire()


def test_unlimited_breaker_always_admits() -> None:
    """Without a connectionPool, any number of requests is admitted."""
    breaker = Breaker(None)
    assert all(breaker.try_acquire() for _ in range(10_000))
    assert breaker.limit is None


def test_update_keeps_requests_in_flight() -> None:
    """Lowering the limit below the in-flight count refuses new requests until enough finish."""
    breaker = Breaker(ConnectionPool(http2_max_requests=5))
    for _ in range(4):
        breaker.try_acquire()
    breaker.update(ConnectionPool(http2_max_requests=2))
    assert breaker.active == 4
    assert not breaker.try_acquire()
    for _ in range(3):
        breaker.release()
    assert breaker.try_acquire()


def test_release_without_acquire_is_a_bug() -> None:
    """An unmatched release raises instead of corrupting the count."""
    with pytest.raises(RuntimeError, match="without a matching"):
        Breaker(None).release()


@PROPERTY
@given(limit=st.integers(1, 10), ops=st.lists(st.booleans(), max_size=200))
def test_active_never_exceeds_limit(limit: int, ops: list[bool]) -> None:
    """Any interleaving of acquires and releases keeps active within [0, limit]."""
    breaker = Breaker(ConnectionPool(http2_max_requests=limit))
    held = 0
    for acquire in ops:
        if acquire:
            granted = breaker.try_acquire()
            assert granted == (held < limit)
            held += granted
        elif held:
            breaker.release()
            held -= 1
        assert breaker.active == held <= limit
