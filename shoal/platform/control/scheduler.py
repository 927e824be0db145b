"""Placement of revisions' instances on nodes, as a pure function.

A node may carry labels and a capacity (the most instances it runs, of all revisions together;
none means unlimited); a revision may carry a node selector. A node is *eligible* for a revision
when its labels include every pair of the selector (an empty selector matches every node).

:func:`place` works in three steps:

1. **Keep.** Instances already placed stay where they are while the node is live and eligible
   (no needless moves). A node holding more than its capacity gives up the excess one instance
   at a time from the revision it holds most of (ties: the greatest revision key), so its mix
   stays balanced. A revision holding more than it wants gives up instances one at a time from
   the node holding most of it (ties: the node with more in all, then the greatest node id), so
   scaling down keeps replicas spread.
2. **Place.** The missing instances of each revision go, one at a time, to the eligible node
   with room that has the fewest instances of that revision, then the fewest in all (ties by
   node id), so replicas land on different nodes whenever there are enough. Revisions with the
   least eligible room go first, so a revision confined by its selector to a few nodes is not
   crowded out of them by one that could run anywhere. (A heuristic, not an optimal packing: it
   never moves an instance that is already running to make room.)
3. **Report.** Instances that fit nowhere are left unplaced and counted per revision in
   :attr:`Schedule.unplaced`; the controller tries again on every tick.

Without labels, capacities and selectors this is plain spreading over the live nodes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

Placements = dict[str, dict[str, int]]  # node id -> "service/revision" -> count


@dataclass(frozen=True, slots=True, kw_only=True)
class Node:
    """What placement needs to know of a live node: its labels and its capacity (None:
    unlimited)."""

    labels: Mapping[str, str] = field(default_factory=dict)
    capacity: int | None = None

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> Node:
        """The node described by a registry record (``"labels"``, ``"capacity"``).

        Records come from the store, where another Shoal version or a hand edit may have left
        anything: labels that are not a string map count as none, and a capacity that is not a
        whole number >= 0 counts as unlimited (a malformed field never stops scheduling).
        """
        raw_labels = record.get("labels")
        labels: dict[str, str] = {}
        if isinstance(raw_labels, Mapping) and all(
            isinstance(k, str) and isinstance(v, str) for k, v in raw_labels.items()
        ):
            labels = dict(raw_labels)
        raw_capacity = record.get("capacity")
        capacity = (
            raw_capacity
            if isinstance(raw_capacity, int)
            and not isinstance(raw_capacity, bool)
            and raw_capacity >= 0
            else None
        )
        return cls(labels=labels, capacity=capacity)

    def room(self, total: int) -> float:
        """How many more instances fit beside ``total`` (infinite without a capacity)."""
        return math.inf if self.capacity is None else self.capacity - total


@dataclass(frozen=True, slots=True, kw_only=True)
class Schedule:
    """The outcome of :func:`place`: instances per node, and what fitted nowhere."""

    placements: Placements
    unplaced: dict[str, int]  # "service/revision" -> instances wanted but not placed (> 0 only)


def eligible(node: Node, selector: Mapping[str, str]) -> bool:
    """Whether ``node``'s labels include every pair of ``selector``."""
    return all(node.labels.get(key) == value for key, value in selector.items())


def place(
    wanted: Mapping[str, int],
    nodes: Mapping[str, Node] | Iterable[str],
    current: Mapping[str, Mapping[str, int]] | None = None,
    selectors: Mapping[str, Mapping[str, str]] | None = None,
) -> Schedule:
    """Place ``wanted`` instances per revision on the live ``nodes``, keeping ``current`` where
    still valid, each revision only on nodes its selector (in ``selectors``; none: any node)
    matches and no node beyond its capacity.

    ``nodes`` is a mapping of node id to :class:`Node`, or bare ids (no labels, unlimited).
    """
    info = (
        {n: nodes[n] for n in nodes}
        if isinstance(nodes, Mapping)
        else {n: Node() for n in set(nodes)}
    )
    live = sorted(info)
    current = current or {}
    selectors = selectors or {}
    want = {rev: count for rev, count in sorted(wanted.items()) if count > 0}
    fits = {rev: [n for n in live if eligible(info[n], selectors.get(rev, {}))] for rev in want}

    # 1. Keep what is placed on live, eligible nodes; trim to capacity, then to what is wanted.
    out: Placements = {}
    for n in live:
        held = {
            rev: count
            for rev, count in current.get(n, {}).items()
            if rev in want and count > 0 and n in fits[rev]
        }
        while info[n].room(sum(held.values())) < 0:
            drop = max(held, key=lambda rev: (held[rev], rev))
            held[drop] -= 1
            if not held[drop]:
                del held[drop]
        out[n] = held
    for rev, count in want.items():
        for _ in range(sum(out[n].get(rev, 0) for n in live) - count):
            holders = [n for n in live if out[n].get(rev, 0)]
            drop = max(holders, key=lambda n: (out[n][rev], sum(out[n].values()), n))
            out[drop][rev] -= 1
            if not out[drop][rev]:
                del out[drop][rev]
    totals = {n: sum(out[n].values()) for n in live}

    # 2. Place the rest, the revisions with the least eligible room first.
    def eligible_room(rev: str) -> float:
        return sum(info[n].room(totals[n]) for n in fits[rev])

    unplaced: dict[str, int] = {}
    for rev in sorted(want, key=lambda rev: (eligible_room(rev), rev)):
        left = want[rev] - sum(out[n].get(rev, 0) for n in live)
        for _ in range(left):
            open_nodes = [n for n in fits[rev] if info[n].room(totals[n]) > 0]
            if not open_nodes:
                break
            node = min(open_nodes, key=lambda n: (out[n].get(rev, 0), totals[n], n))
            out[node][rev] = out[node].get(rev, 0) + 1
            totals[node] += 1
            left -= 1
        if left:
            unplaced[rev] = left
    return Schedule(placements=out, unplaced=unplaced)


def unplaced_reason(
    count: int, nodes: Mapping[str, Node], selector: Mapping[str, str] | None = None
) -> str:
    """Why ``count`` instances of a revision with ``selector`` are unplaced, in a few words."""
    matching = [n for n, node in nodes.items() if eligible(node, selector or {})]
    if not nodes:
        why = "no live node"
    elif not matching:
        pairs = ",".join(f"{k}={v}" for k, v in sorted((selector or {}).items()))
        why = f"no live node matches node_selector {pairs}"
    else:
        why = f"its {len(matching)} eligible node(s) are at capacity"
    return f"{count} unplaced: {why}"
