"""The controller's instance counts follow each view's changes as a recount would."""

from __future__ import annotations

import random
from collections import Counter

from immutables import Map

from shoal.platform.control.counts import InstanceCounts
from shoal.resources.endpoint import Endpoint
from shoal.store.registry import INSTANCE
from shoal.store.watch import View


def test_counts_follow_changes_as_a_recount_would() -> None:
    rng = random.Random(3)
    counts = InstanceCounts()
    instances: Map[str, Endpoint] = Map()
    counts.follow(View(instances=instances))  # (loaded whole)
    for _ in range(500):
        changed = set()
        for _ in range(rng.randrange(1, 4)):
            i = rng.randrange(30)
            key = f"s{i % 3}/i{i}"
            if rng.random() < 0.3:
                instances = instances.delete(key) if key in instances else instances
            else:
                endpoint = Endpoint(
                    id=f"i{i}",
                    service=f"s{i % 3}",
                    revision=rng.choice(["v1", "v2"]),
                    node="n1",
                    address="127.0.0.1",
                    port=1,
                    state=rng.choice(["ready", "starting", "draining"]),  # type: ignore[arg-type]
                )
                instances = instances.set(key, endpoint)
            changed.add(key)
        counts.follow(View(instances=instances, changes={INSTANCE: frozenset(changed)}))
        assert counts.running == Counter(e.revision_key for e in instances.values())
        ready = Counter(e.revision_key for e in instances.values() if e.state == "ready")
        assert counts.ready == ready
