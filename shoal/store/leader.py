"""The controller leader lease: one key holding the leading controller's id, with a TTL.

``leader`` (under the cluster prefix, see :class:`~shoal.store.keys.Keys`) is taken with
``SET NX PX`` and extended by its holder only, both in one script, so two controllers can never
both believe they hold it. Config writes and registry prunes fenced with a controller id
(:mod:`shoal.store.config`, :mod:`shoal.store.registry`) check this same key.
"""

from __future__ import annotations

from shoal.store.connection import Redis, translated
from shoal.store.keys import Keys

LEASE_MS = 5_000

# Extend the lease if we hold it, else take it if nobody does: 1 when we hold it afterwards.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""


class LeaderLease:
    """The leader lease as seen by one would-be holder, ``holder``."""

    def __init__(self, redis: Redis, keys: Keys, holder: str, *, ttl_ms: int = LEASE_MS) -> None:
        self.redis = redis
        self.keys = keys
        self.holder = holder
        self.ttl_ms = ttl_ms
        self._renew = redis.register_script(_RENEW)

    async def renew(self) -> bool:
        """Take the lease if it is free or extend it if ours, for ``ttl_ms``: whether we hold
        it now."""
        async with translated("renewing the leader lease"):
            held = await self._renew(keys=[self.keys.leader], args=[self.holder, self.ttl_ms])
        return bool(held)

    async def release(self) -> None:
        """Give the lease up if we still hold it, so another controller need not wait it out."""
        async with translated("releasing the leader lease"):
            if await self.redis.get(self.keys.leader) == self.holder:
                await self.redis.delete(self.keys.leader)
