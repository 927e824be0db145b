"""Acks: each proxy records the config revision it has applied, with a liveness lease.

``shoal apply --wait`` reads them (:func:`lagging`) to say when every live component has caught
up, and which ones lag.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
from collections.abc import Callable
from typing import Any

from shoal.errors import StoreError
from shoal.store.connection import Redis, honour_cancellation, translated, wait_at_most
from shoal.store.keys import Keys

log = logging.getLogger(__name__)

ACK_TTL_MS = 5_000
ACK_EVERY = 1.0

_ACK = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + tonumber(ARGV[3]), ARGV[1])
if ARGV[4] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[4]) end
return 1
"""

_LIVE = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local live = redis.call('ZRANGEBYSCORE', KEYS[2], now, '+inf')
local out = {}
for _, c in ipairs(live) do
  table.insert(out, c)
  table.insert(out, redis.call('HGET', KEYS[1], c) or '0')
end
return out
"""


class Acks:
    """Publishes one component's applied revision (at once on change, and every ``every``
    seconds) and, every ``every`` seconds, the component's ``report`` (counters, ejections,
    load) as JSON: a report costs what the proxy holds (every cluster), so an ack on a change
    does not make one, and a change costs what changed."""

    def __init__(
        self,
        redis: Redis,
        keys: Keys,
        component: str,
        report: Callable[[], dict[str, Any]] | None = None,
        every: float = ACK_EVERY,
    ) -> None:
        self._keys = keys
        self.component = component
        self.report = report
        self.every = every
        self.revision = 0
        self._changed = asyncio.Event()
        self._ack = redis.register_script(_ACK)

    def applied(self, revision: int) -> None:
        """Note that ``revision`` is now in effect here."""
        if revision != self.revision:
            self.revision = revision
            self._changed.set()

    async def run(self) -> None:
        """Keep the ack and its lease fresh, until cancelled."""
        loop = asyncio.get_running_loop()
        reported, changed = -math.inf, False
        while True:
            self._changed.clear()
            report = ""
            if self.report is not None and (not changed or loop.time() - reported >= self.every):
                reported = loop.time()
                report = json.dumps(self.report())
            try:
                async with translated("recording the applied revision"):
                    await self._ack(
                        keys=[self._keys.acks, self._keys.ack_leases, self._keys.reports],
                        args=[self.component, self.revision, ACK_TTL_MS, report],
                    )
            except StoreError as e:
                log.debug("ack not recorded: %s", e)
            honour_cancellation()
            changed = await wait_at_most(self._changed, self.every)


async def live_acks(redis: Redis, keys: Keys) -> dict[str, int]:
    """Every live component and the revision it has applied."""
    async with translated("reading acks"):
        flat = await redis.eval(_LIVE, 2, keys.acks, keys.ack_leases)
    return {str(flat[i]): int(flat[i + 1]) for i in range(0, len(flat), 2)}


async def live_reports(redis: Redis, keys: Keys) -> dict[str, dict[str, Any]]:
    """The last report of every live component."""
    live = await live_acks(redis, keys)
    if not live:
        return {}
    async with translated("reading proxy reports"):
        raw = await redis.hmget(keys.reports, list(live))
    return {c: json.loads(r) for c, r in zip(live, raw, strict=True) if r}
