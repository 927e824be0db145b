"""The autoscaler's last decisions, published by the leading controller for ``shoal status``.

``autoscaler`` (under the cluster prefix, see :class:`~shoal.store.keys.Keys`) is a hash:
``service/revision`` → that revision's last decision as JSON (desired, ready, panicking,
reason). Each publication replaces the whole hash in one transaction, so a reader never sees
a revision the controller stopped deciding for, nor a half-written set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from shoal.store.connection import Redis, translated
from shoal.store.keys import Keys


class AutoscalerDecisions:
    """Typed access to the published autoscaler decisions of one cluster."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self.redis = redis
        self.keys = keys

    async def publish(self, decisions: Mapping[str, Mapping[str, Any]]) -> None:
        """Replace the published decisions with ``decisions`` (by ``service/revision``)."""
        mapping: dict[Any, Any] = {k: json.dumps(d) for k, d in decisions.items()}
        async with translated("publishing autoscaler decisions"):
            async with self.redis.pipeline(transaction=True) as pipe:
                pipe.delete(self.keys.autoscaler)
                if mapping:
                    pipe.hset(self.keys.autoscaler, mapping=mapping)
                await pipe.execute()

    async def read(self) -> dict[str, dict[str, Any]]:
        """The decisions last published (empty before any), by ``service/revision``."""
        async with translated("reading the autoscaler's decisions"):
            raw: dict[str, str] = await self.redis.hgetall(self.keys.autoscaler)  # type: ignore[assignment]
        return {key: json.loads(value) for key, value in raw.items()}
