"""Operator events the dashboard shows beside the ones it sees happen: what a person started
(a failover drill, its end and outcome).

``events`` (under the cluster prefix) is a list of JSON objects ``{"time", "kind", "text"}``,
newest first, capped at :data:`KEPT`: adding one is one ``LPUSH`` and one ``LTRIM`` in a
transaction.
"""

from __future__ import annotations

import json
from typing import Any

from shoal.store.connection import Redis, translated
from shoal.store.keys import Keys

KEPT = 100


class Events:
    """The operator events of one cluster."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def add(self, kind: str, text: str, now: float) -> None:
        """Record an event of ``kind`` at ``now`` (epoch seconds)."""
        event = json.dumps({"time": now, "kind": kind, "text": text})
        async with translated("recording an event"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.lpush(self.keys.events, event)
                pipe.ltrim(self.keys.events, 0, KEPT - 1)
                await pipe.execute()

    async def recent(self, count: int = 50) -> list[dict[str, Any]]:
        """The latest ``count`` events, newest first."""
        async with translated("reading events"):
            raw: list[str] = await self.redis.lrange(self.keys.events, 0, count - 1)  # type: ignore[assignment]
        return [json.loads(line) for line in raw]
