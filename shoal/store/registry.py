"""The registry: instance and node records with leases.

A record lives in a hash; its lease deadline (ms on the Redis server's clock, so hosts' clocks
need not agree) lives in a sorted set. A heartbeat is an upsert: it re-asserts the whole record
and moves the deadline, and puts an event on the change stream only when the record changed —
so owners re-assert everything after a Redis restart without flooding readers. The controller
prunes expired entries (:meth:`Registry.prune`); readers trust records until then.
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

# KEYS: hash, leases, stream. ARGV: kind, maxlen, then keys to remove.
_REMOVE = """
local removed = 0
for i = 3, #ARGV do
  redis.call('ZREM', KEYS[2], ARGV[i])
  if redis.call('HDEL', KEYS[1], ARGV[i]) == 1 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'kind', ARGV[1], 'name', ARGV[i],
               'op', 'delete')
    removed = removed + 1
  end
end
return removed
"""

# KEYS: hash, leases, stream. ARGV: kind, maxlen, asked_at (ms, Redis clock). Removes every
# entry whose deadline passed, and any record that has no lease at all; returns the removed
# keys. A prune that runs more than a second after it was asked for does nothing: it sat in a
# stalled server (SIGSTOP, a long fork) while the owners could not renew their leases.
_PRUNE = """
if ARGV[4] ~= '' and redis.call('GET', KEYS[4]) ~= ARGV[4] then return {} end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now - tonumber(ARGV[3]) > 1000 then return {} end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, k in ipairs(redis.call('HKEYS', KEYS[1])) do
  if not redis.call('ZSCORE', KEYS[2], k) then table.insert(expired, k) end
end
for _, k in ipairs(expired) do
  redis.call('ZREM', KEYS[2], k)
  if redis.call('HDEL', KEYS[1], k) == 1 then
    redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[2], '*', 'kind', ARGV[1], 'name', k,
               'op', 'delete')
  end
end
return expired
"""


class Registry:
    """Instance and node records with leases, under one key prefix."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._upsert = redis.register_script(_UPSERT)
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

    async def remove_instances(self, keys: Sequence[str]) -> int:
        """Deregister instances by ``service/id`` key; return how many existed."""
        if not keys:
            return 0
        async with translated("deregistering instances"):
            return int(
                await self._remove(
                    keys=self._table(INSTANCE), args=[INSTANCE, str(STREAM_MAXLEN), *keys]
                )
            )

    async def instances(self) -> list[Endpoint]:
        """Every registered instance."""
        async with translated("listing instances"):
            raw = await self._redis.hgetall(self._keys.instances)
        return sorted((Endpoint.from_json(v) for v in raw.values()), key=lambda e: e.key)

    async def put_node(self, node_id: str, record: dict[str, Any], *, ttl: float) -> None:
        """Register or re-assert a node with a lease of ``ttl`` seconds."""
        argv = [
            NODE,
            str(int(ttl * 1000)),
            str(STREAM_MAXLEN),
            node_id,
            json.dumps(record, sort_keys=True),
        ]
        async with translated("registering the node"):
            await self._upsert(keys=self._table(NODE), args=argv)

    async def remove_node(self, node_id: str) -> None:
        """Deregister a node."""
        async with translated("deregistering the node"):
            await self._remove(keys=self._table(NODE), args=[NODE, str(STREAM_MAXLEN), node_id])

    async def nodes(self) -> dict[str, dict[str, Any]]:
        """Every registered node's record, by id."""
        async with translated("listing nodes"):
            raw = await self._redis.hgetall(self._keys.nodes)
        return {str(k): json.loads(v) for k, v in sorted(raw.items())}

    async def prune(self, *, fence: str | None = None, asked_at: int | None = None) -> list[str]:
        """Remove expired instances and nodes; return the keys removed. With ``fence``, only
        while the leader lease is held by ``fence`` (checked in the same script).

        ``asked_at`` is when the prune was decided, in ms on the Redis server's clock (by
        default: now, read from the server); a prune that runs more than a second after it
        removes nothing (see ``_PRUNE``)."""
        removed: list[str] = []
        async with translated("pruning expired leases"):
            if asked_at is None:
                seconds, micros = await self._redis.time()
                asked_at = seconds * 1000 + micros // 1000
            for kind in (INSTANCE, NODE):
                removed += await self._prune(
                    keys=[*self._table(kind), self._keys.leader],
                    args=[kind, str(STREAM_MAXLEN), str(asked_at), fence or ""],
                )
        return removed
