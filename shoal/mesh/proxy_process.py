"""What every proxy process (the gateway, a node's router) runs beside its listeners.

One :class:`ProxyProcess` wires, once for both kinds of process:

- the :class:`~shoal.mesh.proxy_state.ProxyState` its listeners route with;
- its :class:`~shoal.mesh.credentials.Credentials`, renewed in the background;
- the config follower and the ack loop (:func:`~shoal.mesh.follow.follow`), which keep the state
  in step with the store and publish its report;
- the :class:`~shoal.mesh.activation.Activator` that holds requests for services at zero, and
  its part of the report;
- the admin listener (Prometheus ``/metrics``, ``/healthz``, ``/readyz``), when a port is given.

``async with process.running():`` starts the background tasks and the metrics listener; they
belong to one :class:`~shoal.mesh.tasks.TaskScope`, so leaving the block stops them and waits
for them, and a task that fails ends the block with its error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Mapping
from typing import Any

from shoal.mesh.activation import Activator, asker
from shoal.mesh.credentials import Credentials
from shoal.mesh.external_health import probe_forever
from shoal.mesh.follow import follow
from shoal.mesh.metrics import MetricsServer, render_all
from shoal.mesh.proxy_state import ProxyState
from shoal.mesh.tasks import TaskScope
from shoal.store.acks import live_reports
from shoal.store.connection import Redis
from shoal.store.keys import Keys


class ProxyProcess:
    """The state, credentials, store follower, activator and metrics of one proxy process.

    ``component`` names the process in acks, reports, activation asks and metrics (``gateway``,
    ``router/<node>``); ``requester`` is who asks the CA for certificates (``gateway``,
    ``node/<node>``).
    """

    def __init__(
        self,
        redis: Redis,
        url: str,
        keys: Keys,
        *,
        component: str,
        requester: str,
        join_token: str | None = None,
        activation_timeout: float = 30.0,
        metrics_host: str = "127.0.0.1",
        metrics_port: int | None = None,
        siblings: str | None = None,
    ) -> None:
        self._redis = redis
        self._url = url
        self._keys = keys
        self.component = component
        self.state = ProxyState()
        # Certificates are asked for in the background: a proxy serves meanwhile, answering
        # 503 no_mesh_identity for instances behind a router until the CA has signed.
        self.credentials = Credentials(redis, keys, requester, join_token=join_token)
        self.activator = Activator(
            self.state, asker(redis, keys, component), timeout=activation_timeout
        )
        self.state.extra_reports.append(self.activator.report)
        self._siblings = siblings  # component prefix of the processes /metrics also shows
        self.metrics = MetricsServer(self._metrics, self._ready)
        self._metrics_at = (metrics_host, metrics_port) if metrics_port is not None else None

    async def _reports(self) -> dict[str, Mapping[str, Any]]:
        """This process's report, and the last ones of its live siblings (other workers)."""
        reports: dict[str, Mapping[str, Any]] = {}
        if self._siblings is not None:
            live = await live_reports(self._redis, self._keys)
            reports = {c: r for c, r in live.items() if c.startswith(self._siblings)}
        reports[self.component] = self.state.last_report
        return reports

    async def _metrics(self) -> str:
        return render_all(await self._reports())

    def _ready(self) -> str | None:
        """Why the process is not ready to route yet (None: it is)."""
        return None if self.state.applied else "the store's config is not applied yet"

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[ProxyProcess]:
        """Renew certificates, follow the store and serve ``/metrics`` for the block's life."""
        async with TaskScope() as scope:
            scope.start(self.credentials.run(), name=f"{self.component} credentials")
            scope.start(
                follow(
                    self.state, self._redis, self._url, self._keys, self.component, self.credentials
                ),
                name=f"{self.component} follower",
            )
            scope.start(probe_forever(self.state), name=f"{self.component} endpoint checks")
            try:
                if self._metrics_at is not None:
                    await self.metrics.start(*self._metrics_at)
                yield self
            finally:
                await self.metrics.stop()
