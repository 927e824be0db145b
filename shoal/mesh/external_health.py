"""Active health checks of the endpoints of STATIC ServiceEntries, by every proxy.

Envoy checks its clusters' hosts itself; so does each gateway and router here: every
:data:`PROBE_INTERVAL` seconds it opens a TCP connection to each STATIC endpoint (within
:data:`PROBE_TIMEOUT`). ``failure_threshold`` failures in a row (a DestinationRule's
``failureThreshold``, default 3) take the endpoint out of this proxy's rotation,
``healthy_threshold`` successes (``healthyThreshold``, default 1) bring it back — before any
request has to fail on it, which outlier detection needs. :class:`Tracker` is the pure part.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from typing import TYPE_CHECKING

from shoal.mesh.external import Probe

if TYPE_CHECKING:  # annotations only
    from shoal.mesh.proxy_state import ProxyState

__all__ = ["PROBE_INTERVAL", "Tracker", "probe_forever"]

PROBE_INTERVAL = 2.0  # seconds between rounds (as an instance's default health interval)
PROBE_TIMEOUT = 1.0  # seconds for one connection


class Tracker:
    """Consecutive results per endpoint, and which endpoints are down."""

    def __init__(self) -> None:
        self._runs: dict[str, tuple[bool, int]] = {}  # key -> (last result, how many in a row)
        self.down: set[str] = set()

    def observe(self, probe: Probe, ok: bool) -> bool:
        """Record one result; whether the endpoint's up/down status changed."""
        last, count = self._runs.get(probe.key, (ok, 0))
        count = count + 1 if last == ok else 1
        self._runs[probe.key] = ok, count
        if ok and probe.key in self.down and count >= probe.successes:
            self.down.discard(probe.key)
            return True
        if not ok and probe.key not in self.down and count >= probe.failures:
            self.down.add(probe.key)
            return True
        return False

    def keep(self, keys: Iterable[str]) -> bool:
        """Forget endpoints no longer probed; whether one of them was down."""
        kept = set(keys)
        for key in [k for k in self._runs if k not in kept]:
            del self._runs[key]
        gone = self.down - kept
        self.down -= gone
        return bool(gone)


async def _reachable(probe: Probe) -> bool:
    try:
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, writer = await asyncio.open_connection(probe.address, probe.port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


async def probe_forever(state: ProxyState) -> None:
    """Check the current snapshot's probes every :data:`PROBE_INTERVAL` seconds and tell
    ``state`` which endpoints are down whenever that changes (until cancelled)."""
    tracker = Tracker()
    while True:
        probes = state.snapshot.probes
        results = await asyncio.gather(*(_reachable(p) for p in probes))
        changed = tracker.keep(p.key for p in probes)
        for probe, ok in zip(probes, results, strict=True):
            changed = tracker.observe(probe, ok) or changed
        if changed:
            state.set_unreachable(frozenset(tracker.down))
        await asyncio.sleep(PROBE_INTERVAL)
