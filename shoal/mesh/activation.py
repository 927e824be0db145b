"""Activation: a request for a destination with no ready instance waits for one to start.

Knative's activator, inside every proxy. When a route's cluster has no ready instance but
Service revisions exist for it (scaled to zero, or every instance failing with ``scale.min: 0``),
the request is held instead of refused:

- it counts as in flight for the cluster's revisions (shared equally), which the proxy's load
  report carries to the autoscaler;
- the controller is asked at once to start an instance of each such revision (an ``Activation``
  document on the config stream, so the leader hears it within milliseconds, not at its next
  one-second tick);
- the request waits for the proxy's next snapshots (the change stream announces the instance
  the moment it is ready; no polling) and is routed again as soon as its cluster has an
  instance.

The wait is bounded: a full queue (``queue_limit`` per service) is 503
``activation_overflow``, a wait past
``timeout`` is 503 ``cold_start_timeout``, both with ``Retry-After``. Each activation's cold
start (first held request to its instance being routable) is recorded for reports.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Collection, Iterable

from shoal.http.refusal import ACTIVATION_OVERFLOW, COLD_START_TIMEOUT, Refusal
from shoal.mesh.proxy_state import Decision, ProxyState, Route
from shoal.resources.endpoint import Endpoint
from shoal.store.config import Change, ConfigStore
from shoal.store.connection import Redis
from shoal.store.keys import Keys

log = logging.getLogger(__name__)

ACTIVATION = "Activation"  # the config kind that asks the controller for an instance
ASK_AGAIN = 2.0  # seconds: ask again while still waiting (a lost ask, a controller restart)
RECENT = 20  # cold starts kept for reports


FAILING = frozenset({"import_error", "crash_loop"})
"""How an instance's last run ended that means its next one will not fare better."""


def crash_looping(instances: Iterable[Endpoint], revisions: Collection[str]) -> Endpoint | None:
    """An instance showing that none of ``revisions`` can serve now: each revision has
    instances and every one of them is failing to start (``FAILING``); None otherwise (a
    request may wait for one to start)."""
    found: dict[str, list[Endpoint]] = {key: [] for key in revisions}
    for instance in instances:
        if instance.revision_key in found:
            found[instance.revision_key].append(instance)
    if not found or not all(found.values()):
        return None
    failing = [
        i for group in found.values() for i in group if i.state != "ready" and i.reason in FAILING
    ]
    if len(failing) < sum(len(group) for group in found.values()):
        return None
    return failing[0]


class Activator:
    """Holds requests for clusters without a ready instance, per proxy process."""

    def __init__(
        self,
        proxy_state: ProxyState,
        ask: Callable[[str], Awaitable[None]],
        *,
        timeout: float = 30.0,
        queue_limit: int = 1000,
        ask_again: float = ASK_AGAIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.proxy_state = proxy_state
        self.ask = ask  # ask the controller for an instance of ``service/revision``
        self.timeout = timeout
        self.queue_limit = queue_limit
        self.ask_again = ask_again
        self.clock = clock
        self.held: dict[str, int] = {}  # service -> requests waiting
        self.activations = 0
        self.cold_starts: deque[float] = deque(maxlen=RECENT)  # seconds, newest last
        self._asked: dict[str, float] = {}  # revision -> when last asked
        self._since: dict[str, float] = {}  # revision -> first hold of the current activation

    async def hold(self, route: Route, decide: Callable[[], Decision]) -> Decision:
        """Wait until the request's destination has a ready instance; return its new route
        (``decide`` again on the new snapshot), or the refusal to answer with (or the answer
        the route gives itself, if the routing changed meanwhile)."""
        cluster = route.cluster
        service = cluster.service
        if self.held.get(service, 0) >= self.queue_limit:
            return Refusal(
                503,
                ACTIVATION_OVERFLOW,
                f"{self.queue_limit} requests already wait for {service} to start",
                retry_after=1,
            )
        revisions = cluster.revisions
        share = 1.0 / len(revisions)
        started = self.clock()
        self.held[service] = self.held.get(service, 0) + 1
        for rev in revisions:
            self.proxy_state.load.change(rev, share, started)
            self._since.setdefault(rev, started)
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline:
                while True:
                    changed = self.proxy_state.changed
                    decided = decide()
                    if not isinstance(decided, Route) or decided.cluster.endpoints:
                        self._activated(revisions, decided)
                        return decided
                    await self._ask(decided.cluster.revisions or revisions)
                    with contextlib.suppress(TimeoutError):  # only this wait's own deadline
                        async with asyncio.timeout(self.ask_again):
                            await changed.wait()
        except TimeoutError:
            if not deadline.expired():
                raise  # not ours: an enclosing deadline
            return Refusal(
                503,
                COLD_START_TIMEOUT,
                f"no instance of {service} became ready within {self.timeout:g}s",
                retry_after=max(1, round(self.timeout / 10)),
            )
        finally:
            self.held[service] -= 1
            now = self.clock()
            for rev in revisions:
                self.proxy_state.load.change(rev, -share, now)
                if not self.held[service]:
                    self._since.pop(rev, None)  # a timed-out activation ends with its waiters

    async def _ask(self, revisions: tuple[str, ...]) -> None:
        now = self.clock()
        for rev in revisions:
            if now - self._asked.get(rev, -self.ask_again) >= self.ask_again:
                self._asked[rev] = now
                try:
                    await self.ask(rev)
                except Exception as e:  # the load report still reaches the autoscaler
                    log.warning("could not ask for an instance of %s: %s", rev, e)

    def _activated(self, revisions: tuple[str, ...], decided: Decision) -> None:
        if not isinstance(decided, Route):
            return
        now = self.clock()
        for rev in revisions:
            since = self._since.pop(rev, None)
            self._asked.pop(rev, None)
            if since is not None:
                self.activations += 1
                self.cold_starts.append(now - since)
                log.info("%s activated: cold start %.0f ms", rev, (now - since) * 1000)

    def report(self) -> dict[str, object]:
        """Requests held per service and the recent cold starts (ms)."""
        return {
            "held": {s: n for s, n in self.held.items() if n},
            "activations": self.activations,
            "cold_starts_ms": [round(c * 1000, 1) for c in self.cold_starts],
        }


def asker(redis: Redis, keys: Keys, component: str) -> Callable[[str], Awaitable[None]]:
    """How a proxy asks the controller for an instance: an ``Activation`` document per
    revision, written on the config stream the leader follows."""
    store = ConfigStore(redis, keys)

    async def ask(revision: str) -> None:
        await store.write([Change(ACTIVATION, revision, {"by": component, "at": time.time()})])

    return ask
