"""Placement of revisions' instances on nodes, as a pure function.

Each revision wants ``count`` instances; they are spread across the live nodes one at a time,
each to the node with the fewest instances of that revision, then the fewest in all (ties by
node id), so replicas of one revision land on different nodes whenever there are enough.
Instances already placed stay where they are when the node is still live (no needless moves).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

Placements = dict[str, dict[str, int]]  # node id -> "service/revision" -> count


def place(
    wanted: Mapping[str, int],
    nodes: Iterable[str],
    current: Mapping[str, Mapping[str, int]] | None = None,
) -> Placements:
    """Spread ``wanted`` instances per revision over ``nodes``, keeping ``current`` where valid."""
    live = sorted(set(nodes))
    out: Placements = {n: {} for n in live}
    if not live:
        return out
    totals = dict.fromkeys(live, 0)
    # Keep what is already placed on live nodes, up to what is still wanted.
    for rev, count in sorted(wanted.items()):
        left = count
        for node in live:
            keep = min(left, (current or {}).get(node, {}).get(rev, 0))
            if keep:
                out[node][rev] = keep
                totals[node] += keep
                left -= keep
        for _ in range(left):
            node = min(live, key=lambda n: (out[n].get(rev, 0), totals[n], n))
            out[node][rev] = out[node].get(rev, 0) + 1
            totals[node] += 1
    return out
