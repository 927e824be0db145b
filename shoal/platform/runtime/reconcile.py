"""The agent's decisions, as pure functions: what to start and stop, and how long to back off.

The agent holds a desired count per revision (from its node's placement) and a list of the
instance slots it runs; :func:`plan` says which revisions need more slots and which slots to
stop. Surplus slots are stopped worst first: unhealthy, then starting, then the newest ready.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shoal.resources.endpoint import InstanceState

_STOP_ORDER: dict[InstanceState, int] = {"unhealthy": 0, "starting": 1, "ready": 2, "draining": 3}


@dataclass(frozen=True, slots=True, kw_only=True)
class Slot:
    """What the planner needs to know of one running instance slot."""

    id: str
    revision_key: str  # "service/revision"
    state: InstanceState
    started: float  # when the slot was created (seconds, any monotonic clock)


@dataclass(frozen=True, slots=True, kw_only=True)
class Plan:
    """What to do: start ``count`` new slots per revision, stop the slots named."""

    start: tuple[tuple[str, int], ...] = ()
    stop: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        """True when nothing needs doing."""
        return not self.start and not self.stop


def plan(desired: Mapping[str, int], slots: Sequence[Slot]) -> Plan:
    """Compare desired counts per revision with the live slots; draining slots do not count."""
    live: dict[str, list[Slot]] = {}
    for s in slots:
        if s.state != "draining":
            live.setdefault(s.revision_key, []).append(s)
    start: list[tuple[str, int]] = []
    stop: list[str] = []
    for rev in sorted(set(desired) | set(live)):
        want, have = max(0, desired.get(rev, 0)), live.get(rev, [])
        if len(have) < want:
            start.append((rev, want - len(have)))
        elif len(have) > want:
            worst_first = sorted(have, key=lambda s: (_STOP_ORDER[s.state], -s.started, s.id))
            stop += [s.id for s in worst_first[: len(have) - want]]
    return Plan(start=tuple(start), stop=tuple(stop))


def restart_delay(
    failures: int, rng: random.Random, *, base: float = 0.2, cap: float = 30.0
) -> float:
    """Exponential backoff with full jitter for the ``failures``-th consecutive crash (>= 1)."""
    ceiling = min(cap, base * 2.0 ** max(0, failures - 1))
    return ceiling / 2 + rng.uniform(0, ceiling / 2)
