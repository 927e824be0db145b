"""A node: the router and the agent of one host, in one process.

Its registry record announces the router's mesh address and, for the scheduler, the node's
labels (matched by a Service's ``node_selector``) and its capacity (the most instances it runs;
absent: unlimited). :func:`node_labels` and :func:`node_capacity` read them from the
``shoal node`` flags.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from shoal.errors import ManifestError, UserError
from shoal.http.limits import EdgeLimits
from shoal.mesh.access_log import OFF, open_access_log
from shoal.mesh.proxy_process import ProxyProcess
from shoal.mesh.router import Router
from shoal.mesh.tasks import finish, until_stopped
from shoal.platform.runtime.agent import Agent
from shoal.platform.runtime.isolation import DEFAULT_UIDS, UidRange, isolation
from shoal.platform.settings import DEFAULT_MESH_PORT
from shoal.resources.fields import labels as parse_labels
from shoal.resources.model import Service
from shoal.store.connection import Redis
from shoal.store.keys import Keys

log = logging.getLogger(__name__)

_RULE = "at most 63 letters, digits, '-', '_' or '.', beginning and ending with a letter or digit"


def node_labels(flags: Sequence[str]) -> dict[str, str]:
    """The labels of ``--label KEY=VALUE`` flags, validated as a Service's ``node_selector``
    is (Kubernetes label syntax: the key may have a DNS prefix and '/'; the value may be empty).

    A bad or repeated flag is a UserError naming it.
    """
    result: dict[str, str] = {}
    for flag in flags:
        key, sep, value = flag.partition("=")
        if not sep:
            raise UserError(f"--label {flag!r}: expected KEY=VALUE, e.g. --label zone=eu-1")
        for checked, what in (
            ({key: ""}, f"the key must be an optional DNS prefix and '/', then {_RULE}"),
            ({key: value}, f"the value must be empty or {_RULE}"),
        ):
            try:
                parse_labels(checked, "--label")
            except ManifestError:
                raise UserError(f"--label {flag!r}: {what}") from None
        if key in result:
            raise UserError(f"--label {flag!r}: label {key!r} is given twice")
        result[key] = value
    return result


def node_capacity(flag: str | None) -> int | None:
    """The ``--capacity`` flag: None (unlimited) when absent, else a whole number >= 1."""
    if flag is None:
        return None
    text = flag.strip()
    if not re.fullmatch(r"[0-9]+", text, re.ASCII) or int(text) < 1:
        raise UserError(
            f"--capacity {flag!r}: expected the most instances this node runs, a whole number "
            ">= 1 (omit it for no limit)"
        )
    return int(text)


def node_record(
    mesh: str, *, labels: Mapping[str, str] | None = None, capacity: int | None = None
) -> dict[str, Any]:
    """The registry record of a node (the agent adds pid and host): its router's mesh address,
    its labels and its capacity (left out when unlimited)."""
    record: dict[str, Any] = {"mesh": mesh}
    if labels:
        record["labels"] = dict(sorted(labels.items()))
    if capacity is not None:
        record["capacity"] = capacity
    return record


async def run_node(
    redis: Redis,
    url: str,
    keys: Keys,
    *,
    node_id: str,
    state_dir: Path,
    stop: asyncio.Event,
    trust_domain: str,
    host: str = "127.0.0.1",
    advertise: str | None = None,
    mesh_port: int = DEFAULT_MESH_PORT,
    drain_delay: float = 1.0,
    grace: float = 30.0,
    activation_timeout: float = 30.0,
    join_token: str | None = None,
    metrics_port: int | None = None,
    labels: Mapping[str, str] | None = None,
    capacity: int | None = None,
    limits: EdgeLimits | None = None,
    instance_uids: UidRange | None = DEFAULT_UIDS,
    access_log: str = OFF,
    access_log_sample: float = 1.0,
    otlp_endpoint: str | None = None,
    access_log_format: str = "json",
) -> None:
    """Serve the node's router and run its agent until ``stop``; then drain and deregister.

    The router's inbound listener binds ``host:mesh_port`` once the node holds its certificate
    (a controller must be running to sign it); the node record announces ``advertise`` (default
    ``host``) as the address other hosts reach it at, and ``labels`` and ``capacity`` to the
    scheduler. ``limits`` are the edge's (the gateway's ``--limit``): the router takes any
    request head the gateway admitted. Instances run as their service's uid from
    ``instance_uids`` (:mod:`.runtime.isolation`; None: as this process).
    """
    announced = advertise or host
    if announced in ("0.0.0.0", "::", ""):
        raise UserError(f"the router binds {host!r}: give --advertise, the address others use")
    component = f"router/{node_id}"
    isolated = await isolation(instance_uids, state_dir)
    for limit in isolated.limits:
        log.warning("isolation is limited: %s", limit)
    process = ProxyProcess(
        redis,
        url,
        keys,
        component=component,
        requester=f"node/{node_id}",
        join_token=join_token,
        activation_timeout=activation_timeout,
        metrics_port=metrics_port,  # loopback only
    )
    router = Router(
        process.state,
        process.credentials,
        node=node_id,
        trust_domain=trust_domain,
        activator=process.activator,
        head_limits=(limits or EdgeLimits()).head_limits(inner=True),
        tunnel_idle_timeout=(limits or EdgeLimits()).websocket_idle_timeout,
        callers=isolated.callers,
        access_log=open_access_log(
            access_log,
            component,
            sample=access_log_sample,
            otlp_endpoint=otlp_endpoint,
            line_format=access_log_format,
        ),
    )
    flushing: asyncio.Task[None] | None = None
    async with process.running():
        try:
            if router.access_log is not None:
                flushing = asyncio.create_task(router.access_log.run(stop))
            # The certificate needs a controller to sign it: stop may come first.
            port = await until_stopped(router.start(host, mesh_port), stop)
            if port is None or stop.is_set():
                return

            async def mesh_url(service: Service) -> str:
                port = await router.outbound(service.name, service.instance_labels())
                return f"http://127.0.0.1:{port}"

            agent = Agent(
                redis,
                url,
                keys,
                node_id=node_id,
                mesh_url=mesh_url,
                log_dir=state_dir / "logs" / "instances",
                node_record={
                    **node_record(f"{announced}:{port}", labels=labels, capacity=capacity),
                    "isolation": isolated.record(),
                },
                drain_delay=drain_delay,
                grace=grace,
                isolation=isolated,
            )
            await agent.run(stop)
        finally:
            # The router serves until the agent has drained: instances call out while they
            # drain. It stops before the store follower, which keeps its routes fresh meanwhile.
            await router.stop()
            if router.access_log is not None:
                if flushing is not None:
                    await finish([flushing], grace=1.0)
                router.access_log.close()  # with what the requests drained meanwhile logged
