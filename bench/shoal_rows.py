"""Shoal's own rows: the gateway and the node-router hop, in front of the benchmark backend.

Each row starts a private embedded Redis (a helper on the load generator's core, not counted),
stores a catch-all VirtualService (``hosts: ["*"]``) routing to a service ``bench``, registers
the backend nginx as that service's one instance (a registry record with a long lease: no agent
runs it), then starts the Shoal process under test pinned to the server core and waits for its
ports. The process is the real one a user runs (``shoal gateway`` / ``shoal node``).
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
from pathlib import Path

from bench.process import (
    BACKEND_CPU,
    SERVER_CPU,
    RunningServer,
    ServerStartError,
    free_port,
    pin_tree,
    spawn,
    wait_for_ports,
)
from bench.tls import TLSFiles
from shoal.mesh.endpoint import Endpoint
from shoal.platform.client import Client
from shoal.platform.resources import parse_text
from shoal.store.connection import connect
from shoal.store.embedded import EmbeddedRedis
from shoal.store.keys import Keys
from shoal.store.registry import Registry

ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bench}
spec:
  hosts: ["*"]
  http:
  - route: [{destination: {host: bench}}]
"""


async def _configure(url: str, backend_port: int) -> None:
    redis = connect(url)
    try:
        await Client(redis, Keys()).apply(parse_text(ROUTE))
        backend = Endpoint(
            id="nginx",
            service="bench",
            revision="v1",
            node="bench",
            address="127.0.0.1",
            port=backend_port,
            state="ready",
        )
        await Registry(redis, Keys()).put_instances([backend], ttl=24 * 3600)
    finally:
        await redis.aclose()


def _store(workdir: Path, backend_port: int) -> EmbeddedRedis:
    redis = EmbeddedRedis(state_dir=workdir / "shoal-state")
    redis.start()
    assert redis.process is not None
    pin_tree(redis.process.pid, BACKEND_CPU)
    asyncio.run(_configure(redis.url, backend_port))
    return redis


def _start(name: str, extra: list[str], ports: list[int], backend_port: int) -> RunningServer:
    workdir = Path(tempfile.mkdtemp(prefix=f"shoal-bench-{name}-"))
    redis = _store(workdir, backend_port)
    log = workdir / f"{name}.log"
    argv = [sys.executable, "-m", "shoal", *extra, "--redis", redis.url]
    env = {"SHOAL_HOME": str(workdir / "shoal-state"), "PATH": "/usr/bin:/bin"}
    process = spawn(argv, cpu=SERVER_CPU, log_path=log, env=env)
    try:
        wait_for_ports(process, ports, log_path=log)
    except ServerStartError:
        process.kill()
        redis.stop()
        raise
    assert redis.process is not None
    return RunningServer(
        name=name,
        process=process,
        workdir=workdir,
        helpers=[redis.process],
        h1_port=ports[0],
        h2c_port=ports[0] if name == "shoal-gateway" else None,
        tls_port=ports[1] if len(ports) > 1 else None,
    )


def start_shoal_gateway(backend_port: int, tls: TLSFiles) -> RunningServer:
    """Start ``shoal gateway`` (hypercorn, one process) routing everything to the backend."""
    port, tls_port = free_port(), free_port()
    return _start(
        "shoal-gateway",
        [
            "gateway",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--tls-port",
            str(tls_port),
            "--cert",
            str(tls.cert),
            "--key",
            str(tls.key),
        ],
        [port, tls_port],
        backend_port,
    )


def start_shoal_router(backend_port: int) -> RunningServer:
    """Start ``shoal node`` and measure its router's listener (HTTP/1.1, plaintext for now)."""
    port = free_port()
    server = _start(
        "shoal-router",
        ["node", "--node-id", "bench", "--mesh-port", str(port)],
        [port],
        backend_port,
    )
    server.notes.append("router listener is HTTP/1.1 plaintext (mTLS between routers: issue 4)")
    return server
