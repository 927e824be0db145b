"""An instance of a service as the data plane sees it: where it listens and in what state."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from shoal.resources.model import PROTOCOLS, Protocol

InstanceState = Literal["starting", "ready", "draining", "unhealthy"]
STATES: tuple[InstanceState, ...] = ("starting", "ready", "draining", "unhealthy")


@dataclass(frozen=True, slots=True, kw_only=True)
class Endpoint:
    """One registered instance: identity, address, labels and lifecycle state."""

    id: str
    service: str
    revision: str
    node: str
    address: str
    port: int
    labels: tuple[tuple[str, str], ...] = ()
    weight: int = 1
    state: InstanceState = "starting"
    pid: int | None = None
    mtls: bool = False  # run by a Shoal node: reached only through its router, over mTLS
    protocol: Protocol = "http"  # what the instance speaks (its router talks to it in that)
    # Why its process last ended, for a person (``shoal status``, ``apply --wait``): how many
    # times the slot restarted it, a reason (``import_error``, ``crash_loop``, ``exited``,
    # ``not_ready``), its exit (``exit code 1``, ``signal SIGKILL``), its last output lines,
    # and while it waits to be started again (backing off), when (Unix time).
    restarts: int = 0
    reason: str | None = None
    exit: str | None = None
    output: str | None = None
    retry_at: float | None = None

    @property
    def key(self) -> str:
        """Registry key: ``service/id``."""
        return f"{self.service}/{self.id}"

    @property
    def revision_key(self) -> str:
        """``service/revision``: the revision this instance runs."""
        return f"{self.service}/{self.revision}"

    @property
    def authority(self) -> str:
        """``address:port`` for connecting."""
        return f"{self.address}:{self.port}"

    def to_json(self) -> str:
        """Serialise for the registry."""
        return json.dumps(
            {
                "id": self.id,
                "service": self.service,
                "revision": self.revision,
                "node": self.node,
                "address": self.address,
                "port": self.port,
                "labels": dict(self.labels),
                "weight": self.weight,
                "state": self.state,
                "pid": self.pid,
                "mtls": self.mtls,
                "protocol": self.protocol,
                **(
                    {
                        "restarts": self.restarts,
                        "reason": self.reason,
                        "exit": self.exit,
                        "output": self.output,
                        "retry_at": self.retry_at,
                    }
                    if self.restarts or self.reason
                    else {}
                ),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> Endpoint:
        """Parse a registry record written by :meth:`to_json`."""
        raw: dict[str, Any] = json.loads(text)
        state = raw["state"]
        if state not in STATES:
            raise ValueError(f"unknown instance state {state!r}")
        return cls(
            id=str(raw["id"]),
            service=str(raw["service"]),
            revision=str(raw["revision"]),
            node=str(raw["node"]),
            address=str(raw["address"]),
            port=int(raw["port"]),
            labels=tuple(sorted((str(k), str(v)) for k, v in raw.get("labels", {}).items())),
            weight=int(raw.get("weight", 1)),
            state=state,
            pid=raw.get("pid"),
            mtls=bool(raw.get("mtls", False)),
            protocol=raw.get("protocol", "http") if raw.get("protocol") in PROTOCOLS else "http",
            restarts=int(raw.get("restarts", 0)),
            reason=raw.get("reason"),
            exit=raw.get("exit"),
            output=raw.get("output"),
            retry_at=raw.get("retry_at"),
        )
