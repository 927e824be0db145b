"""The controller's own keys against a real redis-server: the leader lease, the published
autoscaler decisions and the store's uptime."""

from __future__ import annotations

import socket

import pytest

from shoal.errors import StoreUnavailable
from shoal.store.config import Change, ConfigStore, FencedOut
from shoal.store.connection import Redis, connect, uptime
from shoal.store.decisions import AutoscalerDecisions
from shoal.store.keys import Keys
from shoal.store.leader import LEASE_MS, LeaderLease


def closed_port() -> int:
    """A local TCP port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_one_holder_at_a_time(redis: Redis, keys: Keys) -> None:
    """The first controller to renew takes the lease; another cannot while it is held."""
    a, b = LeaderLease(redis, keys, "ctl-a"), LeaderLease(redis, keys, "ctl-b")
    assert await a.renew()
    assert not await b.renew()
    assert await a.renew()
    assert await redis.get(keys.leader) == "ctl-a"


async def test_renew_sets_the_ttl(redis: Redis, keys: Keys) -> None:
    """Taking and extending the lease both give it the full TTL, in milliseconds."""
    lease = LeaderLease(redis, keys, "ctl-a")
    assert lease.ttl_ms == LEASE_MS
    assert await lease.renew()
    assert 0 < await redis.pttl(keys.leader) <= LEASE_MS
    await redis.pexpire(keys.leader, 100)
    assert await lease.renew()
    assert await redis.pttl(keys.leader) > 100


async def test_a_lapsed_lease_goes_to_the_next_asker(redis: Redis, keys: Keys) -> None:
    """Once the holder's lease lapses, another controller takes it and fenced writes follow."""
    a, b = LeaderLease(redis, keys, "ctl-a"), LeaderLease(redis, keys, "ctl-b")
    assert await a.renew()
    await redis.delete(keys.leader)  # what expiry does
    assert await b.renew()
    assert not await a.renew()
    store = ConfigStore(redis, keys)
    with pytest.raises(FencedOut):
        await store.write([Change("Placement", "n1", None)], fence="ctl-a")
    await store.write([Change("Placement", "n1", {"revisions": {}})], fence="ctl-b")


async def test_release_frees_only_our_own_lease(redis: Redis, keys: Keys) -> None:
    """Releasing gives the lease up when we hold it and leaves another holder's alone."""
    a, b = LeaderLease(redis, keys, "ctl-a"), LeaderLease(redis, keys, "ctl-b")
    assert await a.renew()
    await b.release()
    assert await redis.get(keys.leader) == "ctl-a"
    await a.release()
    assert await redis.get(keys.leader) is None
    assert await b.renew()


async def test_lease_errors_are_store_errors(keys: Keys) -> None:
    """An unreachable store surfaces as StoreUnavailable, not as a redis-py error."""
    client = connect(f"redis://127.0.0.1:{closed_port()}")
    try:
        lease = LeaderLease(client, keys, "ctl-a")
        with pytest.raises(StoreUnavailable, match="renewing the leader lease"):
            await lease.renew()
        with pytest.raises(StoreUnavailable, match="releasing the leader lease"):
            await lease.release()
        with pytest.raises(StoreUnavailable, match="autoscaler"):
            await AutoscalerDecisions(client, keys).read()
        with pytest.raises(StoreUnavailable, match="uptime"):
            await uptime(client)
    finally:
        await client.aclose()


async def test_decisions_round_trip(redis: Redis, keys: Keys) -> None:
    """Published decisions read back as published, each stored as JSON by revision."""
    decisions = AutoscalerDecisions(redis, keys)
    assert await decisions.read() == {}
    wanted = {"hello/v1": {"desired": 2, "ready": 1, "panicking": False, "reason": "stable"}}
    await decisions.publish(wanted)
    assert await decisions.read() == wanted
    assert set(await redis.hkeys(keys.autoscaler)) == {"hello/v1"}


async def test_a_publication_replaces_the_last(redis: Redis, keys: Keys) -> None:
    """A revision left out of a publication is gone from the decisions; none at all clears them."""
    decisions = AutoscalerDecisions(redis, keys)
    one = {"desired": 1, "ready": 1, "panicking": False, "reason": "stable"}
    await decisions.publish({"hello/v1": one, "hello/v2": one})
    await decisions.publish({"hello/v2": one})
    assert await decisions.read() == {"hello/v2": one}
    await decisions.publish({})
    assert await decisions.read() == {}
    assert not await redis.exists(keys.autoscaler)


async def test_uptime_counts_seconds(redis: Redis) -> None:
    """The store's uptime is a non-negative number of seconds, as INFO reports it."""
    assert await uptime(redis) >= 0.0
