"""``shoal rollout``: carries out a :class:`~.rollout.Rollout` against the store.

The state machine decides; this loop does what it says and feeds it observations:

- ``Prepare``: raise the new revision's ``scale.min`` to at least the number asked (so the
  autoscaler keeps it warm) and wait for a ready instance;
- ``SetWeights``: edit the VirtualService (as ``shoal weights`` does);
- ``Wait``: sleep, then observe the new revision's requests, errors and p99 latency since the
  previous observation, summed over every live proxy's report (their per-revision outcome
  counters and latency histograms);
- ``RollBack`` / ``Done``: restore the original weights or keep the final ones, and say why.

It runs in the CLI process: interrupting it leaves the weights of the step in force (printed),
which ``shoal weights`` can set back.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Mapping
from typing import Any

from shoal.errors import NotFoundError, UserError
from shoal.mesh.stats import LATENCY_BUCKETS, quantile
from shoal.platform.control.client import Client
from shoal.platform.control.rollout import (
    Action,
    Done,
    Observation,
    Prepare,
    RollBack,
    Rollout,
    SetWeights,
    Wait,
)
from shoal.resources.model import DestinationRule, Service, VirtualService
from shoal.resources.weights import (
    current_weights,
    find_rule,
    find_virtual_service,
    latest_ready,
    subset_revisions,
)
from shoal.store.acks import live_reports

POLL = 0.5  # seconds between observations while waiting


def outcome_totals(
    reports: Mapping[str, Mapping[str, Any]], revisions: list[str]
) -> dict[str, int]:
    """Per live proxy, requests and errors answered by ``revisions`` since it started, and
    their latency histogram (``<component>:le<i>``, bucket i of LATENCY_BUCKETS)."""
    totals = {}
    for component, report in reports.items():
        outcomes = report.get("outcomes") or {}
        requests = sum(int(outcomes.get(r, [0, 0])[0]) for r in revisions)
        errors = sum(int(outcomes.get(r, [0, 0])[1]) for r in revisions)
        totals[f"{component}:requests"] = requests
        totals[f"{component}:errors"] = errors
        latency = report.get("latency") or {}
        for i in range(len(LATENCY_BUCKETS)):
            totals[f"{component}:le{i}"] = sum(
                int((latency.get(r) or [0] * len(LATENCY_BUCKETS))[i]) for r in revisions
            )
    return totals


def latency_p99(before: Mapping[str, int], after: Mapping[str, int]) -> float | None:
    """The p99 latency (a bucket's upper bound) of the answers between two totals."""
    buckets = [delta(before, after, f"le{i}") for i in range(len(LATENCY_BUCKETS))]
    return quantile(buckets, 0.99)


def delta(before: Mapping[str, int], after: Mapping[str, int], kind: str) -> int:
    """What ``kind`` counters grew by between two totals (a restarted proxy counts from 0)."""
    out = 0
    for key, value in after.items():
        if key.endswith(f":{kind}"):
            previous = before.get(key, 0)
            out += value - previous if value >= previous else value
    return out


class RolloutRunner:
    """Drives one rollout of ``service`` to subset ``to``, reporting through ``say``."""

    def __init__(
        self,
        client: Client,
        rollout: Rollout,
        revisions: list[str],
        say: Callable[[str], None],
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client = client
        self.rollout = rollout
        self.revisions = revisions  # service/revision keys the new subset selects
        self.say = say
        self.clock = clock
        self._totals: dict[str, int] = {}

    async def _ready(self) -> int:
        instances = await self.client.registry.instances()
        return sum(1 for e in instances if e.state == "ready" and e.revision_key in self.revisions)

    async def _observe(self) -> Observation:
        totals = outcome_totals(
            await live_reports(self.client.redis, self.client.keys), self.revisions
        )
        requests = delta(self._totals, totals, "requests")
        errors = min(requests, delta(self._totals, totals, "errors"))
        p99 = latency_p99(self._totals, totals)
        self._totals = totals
        return Observation(
            requests=requests,
            errors=errors,
            ready=await self._ready(),
            p99=None if p99 is None or math.isinf(p99) else p99,
        )

    async def _prepare(self, action: Prepare) -> None:
        services = [s for s in await self.client.services() if s.key in self.revisions]
        for s in services:
            if s.scale.min < action.scale_to:
                await self.client.scale(
                    s.name,
                    min=action.scale_to,
                    max=max(s.scale.max, action.scale_to),
                    revision=s.revision,
                )
        self.say(f"warming {action.revision}: at least {action.scale_to} ready instance(s)")

    async def run(self) -> RollBack | Done:
        """Carry the rollout out to its end."""
        await self._observe()  # the baseline: only traffic from now on counts
        action: Action = self.rollout.start(self.clock())
        while True:
            if isinstance(action, Prepare):
                await self._prepare(action)
            elif isinstance(action, SetWeights):
                await self.client.set_weights(self.rollout.service, action.weights)
                await self._observe()  # judge the step on its own traffic
                self.say(
                    "weights " + " ".join(f"{k}={v}" for k, v in sorted(action.weights.items()))
                )
            elif isinstance(action, RollBack):
                await self.client.set_weights(self.rollout.service, action.weights)
                self.say(f"rolled back: {action.reason}")
                return action
            elif isinstance(action, Done):
                self.say(f"done: all traffic on {self.rollout.to_revision}")
                return action
            action = await self._next()

    async def _next(self) -> Action:
        """Observe every POLL until the machine asks for something other than waiting."""
        while True:
            await asyncio.sleep(POLL)
            action = self.rollout.on_tick(self.clock(), await self._observe())
            if not isinstance(action, Wait):
                return action


async def start_rollout(
    client: Client,
    service: str,
    to: str,
    say: Callable[[str], None],
    **settings: Any,
) -> RollBack | Done:
    """Build the rollout of ``service`` to subset ``to`` from the stored config and run it."""
    vss: list[VirtualService] = await client.virtual_services()
    rules: list[DestinationRule] = await client.destination_rules()
    services: list[Service] = await client.services()
    rule = find_rule(service, rules)
    vs = find_virtual_service(service, vss)
    if not any(s.name == service for s in services):
        raise NotFoundError(f"Service {service} not found")
    if vs is None:  # all to the latest ready revision: split from there, by revision names
        ready = {e.revision_key for e in await client.registry.instances() if e.state == "ready"}
        latest = latest_ready([s for s in services if s.name == service], ready)
        if latest is None:
            raise NotFoundError(f"Service {service} not found")
        weights = {latest.revision: 100}
    else:
        weights = current_weights(service, vs)
    revisions = subset_revisions(service, to, rule, services)
    if not revisions:
        raise UserError(f"subset {to} of {service} selects no Service revision")
    rollout = Rollout(service=service, weights=weights, to_revision=to, **settings)
    say(
        f"rollout of {service} to {to} ({', '.join(revisions)}): steps "
        + ", ".join(f"{s}%" for s in rollout.steps)
        + f", {rollout.interval:g}s each, max error rate {rollout.max_error_rate:.2%}"
    )
    return await RolloutRunner(client, rollout, revisions, say).run()
