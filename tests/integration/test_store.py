"""The config store, registry and change feed against a real redis-server."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import Callable

import pytest

from shoal.resources.endpoint import Endpoint
from shoal.store.acks import Acks, live_acks
from shoal.store.config import Change, ConfigStore, FencedOut
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from shoal.store.registry import Registry
from shoal.store.watch import View, Watcher
from tests.support.wait import eventually


def endpoint(n: int, state: str = "ready") -> Endpoint:
    """An instance record for tests."""
    return Endpoint(
        id=f"i{n}",
        service="hello",
        revision="v1",
        node="n1",
        address="127.0.0.1",
        port=9000 + n,
        state=state,
    )  # type: ignore[arg-type]


def latest(views: list[View], cond: Callable[[View], bool]) -> View | None:
    """The newest received view that satisfies ``cond``, if any."""
    return next((v for v in reversed(views) if cond(v)), None)


async def test_write_is_atomic_and_bumps_one_revision(redis: Redis, keys: Keys) -> None:
    """All changes of one write land together under a single new revision."""
    store = ConfigStore(redis, keys)
    rev = await store.write(
        [Change("VirtualService", "a", {"x": 1}), Change("VirtualService", "b", {"x": 2})]
    )
    assert rev == 1
    assert await store.list("VirtualService") == {"a": {"x": 1}, "b": {"x": 2}}
    entries = await redis.xrange(keys.changes)
    assert [(e[1]["rev"], e[1]["name"], e[1]["op"]) for e in entries] == [
        ("1", "a", "put"),
        ("1", "b", "put"),
    ]


async def test_identical_write_changes_nothing(redis: Redis, keys: Keys) -> None:
    """Re-applying the same document neither bumps the revision nor adds stream entries."""
    store = ConfigStore(redis, keys)
    await store.write([Change("VirtualService", "a", {"x": 1})])
    assert await store.write([Change("VirtualService", "a", {"x": 1})]) == 1
    assert len(await redis.xrange(keys.changes)) == 1


async def test_delete_removes_and_records(redis: Redis, keys: Keys) -> None:
    """A delete removes the document and is recorded on the stream; deleting nothing is no-op."""
    store = ConfigStore(redis, keys)
    await store.write([Change("VirtualService", "a", {"x": 1})])
    assert await store.write([Change("VirtualService", "a", None)]) == 2
    assert await store.get("VirtualService", "a") is None
    assert await store.write([Change("VirtualService", "a", None)]) == 2


async def test_registry_heartbeat_emits_only_changes(redis: Redis, keys: Keys) -> None:
    """Re-asserting an unchanged instance moves its lease but adds no stream entry."""
    reg = Registry(redis, keys)
    assert await reg.put_instances([endpoint(1, "starting")], ttl=5) == 1
    assert await reg.put_instances([endpoint(1, "starting")], ttl=5) == 0
    assert await reg.put_instances([endpoint(1, "ready")], ttl=5) == 1
    assert [e.state for e in await reg.instances()] == ["ready"]
    assert len(await redis.xrange(keys.changes)) == 2


async def test_prune_removes_only_expired(redis: Redis, keys: Keys) -> None:
    """Instances whose lease expired are pruned; live ones stay."""
    reg = Registry(redis, keys)
    await reg.put_instances([endpoint(1)], ttl=0.05)
    await reg.put_instances([endpoint(2)], ttl=30)
    await eventually(reg.prune, "the expired instance pruned", timeout=5)
    assert [e.id for e in await reg.instances()] == ["i2"]


async def test_watcher_sees_snapshot_then_changes(redis_url: str, redis: Redis, keys: Keys) -> None:
    """A watcher first gets what exists, then every later config and registry change."""
    store, reg = ConfigStore(redis, keys), Registry(redis, keys)
    await store.write([Change("VirtualService", "a", {"x": 1})])
    views: list[View] = []
    watcher = Watcher(redis_url, keys, ["VirtualService"])
    task = asyncio.create_task(watcher.run(views.append))
    try:
        await eventually(
            lambda: latest(views, lambda v: "a" in v.documents("VirtualService")), "a view with a"
        )
        await store.write([Change("VirtualService", "b", {"x": 2})])
        await reg.put_instances([endpoint(1)], ttl=5)
        v = await eventually(
            lambda: latest(
                views, lambda v: "b" in v.documents("VirtualService") and "hello/i1" in v.instances
            ),
            "a view with b and hello/i1",
        )
        assert v.revision == 2
        await reg.remove_instances(["hello/i1"])
        await eventually(lambda: latest(views, lambda v: not v.instances), "a view without i1")
    finally:
        task.cancel()


async def test_watcher_resyncs_after_reconnect(redis_url: str, redis: Redis, keys: Keys) -> None:
    """A watcher whose connection is killed reloads and misses nothing written meanwhile."""
    store = ConfigStore(redis, keys)
    views: list[View] = []
    watcher = Watcher(redis_url, keys, ["VirtualService"])
    task = asyncio.create_task(watcher.run(views.append))
    try:
        async with asyncio.timeout(5):
            await watcher.connected.wait()
        await redis.client_kill_filter(_type="normal", skipme=True)
        await store.write([Change("VirtualService", "late", {"x": 3})])
        await eventually(
            lambda: latest(views, lambda v: "late" in v.documents("VirtualService")),
            "a view with the document written while disconnected",
        )
    finally:
        task.cancel()


@pytest.mark.parametrize("n", [3])
async def test_registry_lists_sorted(redis: Redis, keys: Keys, n: int) -> None:
    """Instances come back sorted by key with their fields intact."""
    reg = Registry(redis, keys)
    await reg.put_instances([endpoint(i) for i in reversed(range(n))], ttl=5)
    got = await reg.instances()
    assert [e.id for e in got] == [f"i{i}" for i in range(n)]
    assert got[0] == endpoint(0)


async def test_prune_that_sat_in_a_stalled_server_does_nothing(redis: Redis, keys: Keys) -> None:
    """A prune executed over a second after it was asked for removes nothing."""
    reg = Registry(redis, keys)
    await reg.put_instances([endpoint(1)], ttl=0)  # its lease ends as it is written
    seconds, micros = await redis.time()
    stale = seconds * 1000 + micros // 1000 - 5_000
    assert await reg.prune(asked_at=stale) == []
    assert [e.id for e in await reg.instances()] == ["i1"]
    assert await reg.prune() == ["hello/i1"]


async def test_fenced_writes_need_the_leader_lease(redis: Redis, keys: Keys) -> None:
    """A write or prune fenced with a controller id happens only while that id holds the
    leader lease: a deposed leader's late write changes nothing."""
    store, reg = ConfigStore(redis, keys), Registry(redis, keys)
    await redis.set(keys.leader, "ctl-a")
    rev = await store.write([Change("Placement", "n1", {"revisions": {"a/v1": 1}})], fence="ctl-a")
    await redis.set(keys.leader, "ctl-b")  # the lead moved on
    with pytest.raises(FencedOut):
        await store.write([Change("Placement", "n1", None)], fence="ctl-a")
    assert await store.revision() == rev
    assert await store.get("Placement", "n1") == {"revisions": {"a/v1": 1}}
    await reg.put_instances([endpoint(1)], ttl=0)  # its lease ends as it is written
    assert await reg.prune(fence="ctl-a") == []
    assert await reg.prune(fence="ctl-b") == ["hello/i1"]


async def test_a_nodes_instances_live_on_its_lease(redis: Redis, keys: Keys) -> None:
    """A node's instances have no lease of their own: renewing the node's renews them all,
    and writing an unchanged record again announces nothing."""
    reg = Registry(redis, keys)
    assert await reg.put_node("n1", {"mesh": "127.0.0.1:1"}, ttl=30)  # (new: say so)
    assert await reg.put_node_instances("n1", [endpoint(i) for i in range(5)]) == 5
    stream = len(await redis.xrange(keys.changes))
    assert not await reg.put_node("n1", {"mesh": "127.0.0.1:1"}, ttl=30)
    assert await reg.put_node_instances("n1", [endpoint(0), endpoint(1, "draining")]) == 1
    assert len(await redis.xrange(keys.changes)) == stream + 1
    assert await redis.zcard(keys.instance_leases) == 0  # no lease per instance
    assert await reg.node_instances("n1") == {f"hello/i{i}" for i in range(5)}
    assert await reg.remove_instances(["hello/i4"], node="n1") == 1
    assert "hello/i4" not in await reg.node_instances("n1")
    assert await reg.prune() == []  # the node's lease holds


async def test_an_expired_node_goes_at_once_and_its_instances_in_batches(
    redis: Redis, keys: Keys
) -> None:
    """When a node's lease expires its record is pruned at once (proxies then route to none
    of its instances) and its instances' records a bounded batch per prune."""
    reg = Registry(redis, keys)
    await reg.put_node("n1", {"mesh": "127.0.0.1:1"}, ttl=0)  # its lease ends as it is written
    await reg.put_node_instances("n1", [endpoint(i) for i in range(10)])
    await reg.put_instances([endpoint(99)], ttl=30)  # a live one of its own lease
    first = await reg.prune(batch=4)
    assert "n1" in first and len(first) == 5  # the node, and 4 of its instances
    assert await reg.nodes() == {}
    assert len(await reg.prune(batch=4)) == 4
    assert len(await reg.prune(batch=4)) == 2
    assert await reg.prune(batch=4) == []
    assert [e.id for e in await reg.instances()] == ["i99"]
    assert await redis.zcard(keys.node_leases) == 0 and not await reg.node_instances("n1")


async def test_an_ack_on_a_change_makes_no_report(redis: Redis, keys: Keys) -> None:
    """A component acks a new revision at once, but its report (which costs what the proxy
    holds: every cluster) only every ``every`` seconds: a change costs what changed."""
    made: list[int] = []

    def report() -> dict[str, int]:
        made.append(len(made))
        return {"seq": len(made)}

    acks = Acks(redis, keys, "gw", report=report, every=3600)
    task = asyncio.create_task(acks.run())
    try:
        await eventually(lambda: live_acks(redis, keys), "the first ack", until=lambda a: "gw" in a)
        for revision in (1, 2, 3):
            acks.applied(revision)
            await eventually(
                lambda: live_acks(redis, keys),
                f"revision {revision} acked",
                until=lambda a, r=revision: a.get("gw") == r,  # type: ignore[misc]
            )
        assert made == [0]  # the first ack's report only
        assert json.loads(await redis.hget(keys.reports, "gw")) == {"seq": 1}
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
