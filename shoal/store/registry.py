"""The registry: instance and node records with leases.

A record lives in a hash; its lease deadline (ms on the Redis server's clock, so hosts' clocks
need not agree) lives in a sorted set. A heartbeat is an upsert: it re-asserts the whole record
and moves the deadline, and puts an event on the change stream only when the record changed —
so owners re-assert everything after a Redis restart without flooding readers. The controller
prunes expired entries (:meth:`Registry.prune`); readers trust records until then.

The instances a node runs have no lease of their own: they live on their node's (Kubernetes'
node leases, Consul's agent-level health). The node renews one lease a second, whatever its
number of instances, and writes an instance's record only when it changes
(:meth:`Registry.put_node_instances`); the set ``leases:node:<id>`` names them. When a node's
lease expires, the prune removes its record at once — proxies stop routing to its instances,
which are reached only through it — and then its instances' records, a bounded batch per
prune, so that a mass expiry never stalls the store.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from shoal.resources.endpoint import Endpoint
from shoal.store.config import STREAM_MAXLEN
from shoal.store.connection import Redis, translated
from shoal.store.keys import Keys

INSTANCE = "Instance"
NODE = "Node"

# KEYS: hash, leases, stream. ARGV: kind, ttl_ms, maxlen, then pairs (key, json).
_UPSERT = """
local t = redis.call('TIME')
local deadline = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000) + tonumber(ARGV[2])
local changed = 0
for i = 4, #ARGV, 2 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  redis.call('ZADD', KEYS[2], deadline, ARGV[i])
  if old ~= ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[3], '*', 'kind', ARGV[1], 'name', ARGV[i],
               'op', 'put')
    changed = changed + 1
  end
end
return changed
"""

# KEYS: instances hash, instance leases, stream, the node's set. ARGV: maxlen, then pairs
# (key, json). Writes (and announces) a record only when it changed.
_UPSERT_OWNED = """
local changed = 0
for i = 2, #ARGV, 2 do
  redis.call('ZREM', KEYS[2], ARGV[i])
  redis.call('SADD', KEYS[4], ARGV[i])
  if redis.call('HGET', KEYS[1], ARGV[i]) ~= ARGV[i + 1] then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'kind', 'Instance', 'name', ARGV[i],
               'op', 'put')
    changed = changed + 1
  end
end
return changed
"""

# KEYS: hash, leases, stream, [a node's set]. ARGV: kind, maxlen, then keys to remove.
_REMOVE = """
local removed = 0
for i = 3, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
  if KEYS[4] then redis.call('SREM', KEYS[4], ARGV[i]) end
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'kind', ARGV[1], 'name', ARGV[i],
               'op', 'delete')
    removed = removed + 1
  end
end
return removed
"""

# KEYS: instances, instance leases, nodes, node leases, stream, leader. ARGV: maxlen, asked_at
# (ms, Redis clock), fence, batch, the node sets' key prefix. Removes up to ``batch`` instances
# whose own lease expired; then, for each node whose lease expired, its record (at once) and up
# to what is left of ``batch`` of its instances (the node's lease entry goes with the last of
# them). Returns the keys removed. A prune that runs more than a second after it was asked for
# does nothing: it sat in a stalled server (SIGSTOP, a long fork) while the owners could not
# renew their leases.
_PRUNE = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[6]) ~= ARGV[3] then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - tonumber(ARGV[2]) > 1000 then return {} end
local budget = tonumber(ARGV[4])
local removed = {}
local function drop(hash, kind, key)
  if redis.call('HDEL', hash, key) == 1 then
    redis.call('XADD', KEYS[5], 'MAXLEN', '~', ARGV[1], '*', 'kind', kind, 'name', key,
               'op', 'delete')
    table.insert(removed, key)
  end
end
for _, k in ipairs(redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now, 'LIMIT', 0, budget)) do
  redis.call('ZREM', KEYS[2], k)
  drop(KEYS[1], 'Instance', k)
  budget = budget - 1
end
for _, node in ipairs(redis.call('ZRANGEBYSCORE', KEYS[4], '-inf', now, 'LIMIT', 0, 16)) do
  drop(KEYS[3], 'Node', node)
  local set = ARGV[5] .. node
  if budget > 0 then
    for _, k in ipairs(redis.call('SPOP', set, budget)) do
      drop(KEYS[1], 'Instance', k)
      budget = budget - 1
    end
  end
  if redis.call('SCARD', set) == 0 then redis.call('ZREM', KEYS[4], node) end
end
return removed
"""

PRUNE_BATCH = 2_000
"""Most instance records one prune removes (a few ms of the store's time)."""


class Registry:
    """Instance and node records with leases, under one key prefix."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._upsert = redis.register_script(_UPSERT)
        self._upsert_owned = redis.register_script(_UPSERT_OWNED)
        self._remove = redis.register_script(_REMOVE)
        self._prune = redis.register_script(_PRUNE)

    def _table(self, kind: str) -> list[str]:
        if kind == INSTANCE:
            return [self._keys.instances, self._keys.instance_leases, self._keys.changes]
        return [self._keys.nodes, self._keys.node_leases, self._keys.changes]

    async def put_instances(self, endpoints: Sequence[Endpoint], *, ttl: float) -> int:
        """Register or re-assert ``endpoints`` (lease: ``ttl`` s); return how many changed."""
        if not endpoints:
            return 0
        argv: list[str] = [INSTANCE, str(int(ttl * 1000)), str(STREAM_MAXLEN)]
        for ep in endpoints:
            argv += [ep.key, ep.to_json()]
        async with translated("registering instances"):
            return int(await self._upsert(keys=self._table(INSTANCE), args=argv))

    async def put_node_instances(self, node_id: str, endpoints: Sequence[Endpoint]) -> int:
        """Register or update instances of node ``node_id`` that live on its lease (see the
        module's doc); return how many changed."""
        if not endpoints:
            return 0
        argv: list[str] = [str(STREAM_MAXLEN)]
        for ep in endpoints:
            argv += [ep.key, ep.to_json()]
        keys = [*self._table(INSTANCE), self._keys.node_instances(node_id)]
        async with translated("registering instances"):
            return int(await self._upsert_owned(keys=keys, args=argv))

    async def node_instances(self, node_id: str) -> set[str]:
        """The keys of the instances living on node ``node_id``'s lease."""
        async with translated("listing a node's instances"):
            return {str(k) for k in await self._redis.smembers(self._keys.node_instances(node_id))}

    async def remove_instances(self, keys: Sequence[str], *, node: str | None = None) -> int:
        """Deregister instances by ``service/id`` key (of ``node``: living on its lease);
        return how many existed."""
        if not keys:
            return 0
        tables = self._table(INSTANCE)
        if node is not None:
            tables.append(self._keys.node_instances(node))
        async with translated("deregistering instances"):
            return int(await self._remove(keys=tables, args=[INSTANCE, str(STREAM_MAXLEN), *keys]))

    async def instances(self) -> list[Endpoint]:
        """Every registered instance."""
        async with translated("listing instances"):
            raw = await self._redis.hgetall(self._keys.instances)
        return sorted((Endpoint.from_json(v) for v in raw.values()), key=lambda e: e.key)

    async def put_node(self, node_id: str, record: dict[str, Any], *, ttl: float) -> bool:
        """Register or re-assert a node with a lease of ``ttl`` seconds; whether its record
        changed (or was not there: a new store, or the node's lease had expired)."""
        argv = [
            NODE,
            str(int(ttl * 1000)),
            str(STREAM_MAXLEN),
            node_id,
            json.dumps(record, sort_keys=True),
        ]
        async with translated("registering the node"):
            return bool(await self._upsert(keys=self._table(NODE), args=argv))

    async def remove_node(self, node_id: str) -> None:
        """Deregister a node."""
        async with translated("deregistering the node"):
            await self._remove(keys=self._table(NODE), args=[NODE, str(STREAM_MAXLEN), node_id])

    async def nodes(self) -> dict[str, dict[str, Any]]:
        """Every registered node's record, by id."""
        async with translated("listing nodes"):
            raw = await self._redis.hgetall(self._keys.nodes)
        return {str(k): json.loads(v) for k, v in sorted(raw.items())}

    async def prune(
        self, *, fence: str | None = None, asked_at: int | None = None, batch: int = PRUNE_BATCH
    ) -> list[str]:
        """Remove expired instances and nodes, at most ``batch`` instances (the rest goes with
        the next prunes); return the keys removed. With ``fence``, only while the leader lease
        is held by ``fence`` (checked in the same script).

        ``asked_at`` is when the prune was decided, in ms on the Redis server's clock (by
        default: now, read from the server); a prune that runs more than a second after it
        removes nothing (see ``_PRUNE``)."""
        k = self._keys
        async with translated("pruning expired leases"):
            if asked_at is None:
                seconds, micros = await self._redis.time()
                asked_at = seconds * 1000 + micros // 1000
            keys = [k.instances, k.instance_leases, k.nodes, k.node_leases, k.changes, k.leader]
            args = [str(STREAM_MAXLEN), str(asked_at), fence or "", str(batch)]
            removed = await self._prune(keys=keys, args=[*args, k.node_instances_prefix])
        return [str(key) for key in removed]
