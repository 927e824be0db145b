"""Shoal's own rows: the gateway alone, and the whole mesh path, in front of the benchmark backend.

Each row starts a private embedded Redis (a helper on the load generator's core, not counted),
stores a catch-all VirtualService (``hosts: ["*"]``) routing to a service ``bench``, registers
the backend nginx as that service's one instance (a registry record with a long lease: no agent
runs it), then starts the Shoal processes under test pinned to the server core and waits for
their ports. The processes are the real ones a user runs (``shoal gateway``, ``shoal node``,
``shoal controller``).

- ``shoal-gateway``: the backend is registered as an instance outside the mesh, so the gateway
  forwards to it directly: the gateway's own cost.
- ``shoal-mesh``: the backend is registered as an instance of node ``bench``, so the gateway
  forwards over mTLS to that node's router, which forwards to it: the path every request to a
  Shoal-run instance takes. Gateway and node run on the server core (both counted, as one
  process tree); the controller (the CA) is a helper on the other core.
- ``shoal-router``: the node router alone, called over mTLS by haproxy holding a certificate
  from the mesh CA (on the load generator's core), as a gateway would call it (HTTP/1.1 only).
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
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
from bench.servers import HAPROXY_DEFAULTS
from bench.tls import TLSFiles
from shoal.identity.spiffe import gateway_id
from shoal.platform.ca.admin import issue_local
from shoal.platform.ca.signer import CAFiles
from shoal.platform.ca.tokens import JoinTokens
from shoal.platform.control.client import Client
from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import parse_text
from shoal.store.connection import connect
from shoal.store.embedded import EmbeddedRedis
from shoal.store.keys import Keys
from shoal.store.pki import PKIStore
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


async def _configure(url: str, backend_port: int, *, mesh: bool, protocol: str = "http") -> str:
    """Store the route and the backend's record; return a join token (two uses)."""
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
            mtls=mesh,
            protocol=protocol,  # type: ignore[arg-type]
        )
        await Registry(redis, Keys()).put_instances([backend], ttl=24 * 3600)
        return await JoinTokens(PKIStore(redis, Keys())).create(uses=2)
    finally:
        await redis.aclose()


def _store(
    workdir: Path, backend_port: int, *, mesh: bool = False, protocol: str = "http"
) -> tuple[EmbeddedRedis, str]:
    redis = EmbeddedRedis(state_dir=workdir / "shoal-state")
    redis.start()
    assert redis.process is not None
    pin_tree(redis.process.pid, BACKEND_CPU)
    return redis, asyncio.run(_configure(redis.url, backend_port, mesh=mesh, protocol=protocol))


NO_ACCESS_LOG = ["--access-log", "off"]
"""As the nginx and haproxy rows run: no access log (its cost is measured apart, see
bench/README.md)."""

KEEP = "SHOAL_BENCH_KEEP"
"""Set (by ``bench.run --keep``): the rows' own directories (store, logs) are kept too."""


def _workdir(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix=f"shoal-bench-{name}-"))


def _cleanup(server: RunningServer) -> RunningServer:
    """Remove the row's directory when it stops, unless asked to keep it."""
    workdir = server.workdir
    if workdir is not None and not os.environ.get(KEEP):
        server.on_stop.append(lambda: shutil.rmtree(workdir, ignore_errors=True))
    return server


def _start(
    name: str,
    commands: list[list[str]],
    ports: list[int],
    backend_port: int,
    *,
    mesh: bool,
    protocol: str = "http",
) -> RunningServer:
    """Start ``commands`` (``shoal`` argv each) as one process tree on the server core; with
    ``mesh``, also a controller (the CA) as a helper on the other core."""
    workdir = _workdir(name)
    redis, token = _store(workdir, backend_port, mesh=mesh, protocol=protocol)
    log = workdir / f"{name}.log"
    env = {
        "SHOAL_HOME": str(workdir / "shoal-state"),
        "PATH": "/usr/bin:/bin",
        "SHOAL_JOIN_TOKEN": token,
        "SHOAL_REDIS_URL": redis.url,  # never on a command line: it holds the password
    }
    shoal = [sys.executable, "-m", "shoal"]
    helpers = [redis.process]
    if mesh:
        helpers.append(
            spawn(
                [*shoal, "controller"],
                cpu=BACKEND_CPU,
                log_path=workdir / "controller.log",
                env=env,
            )
        )
    lines = [shlex.join([*shoal, *c]) for c in commands]
    script = " & ".join(lines) + " & wait"  # one tree: its CPU is what the row costs
    process = spawn(["sh", "-c", script], cpu=SERVER_CPU, log_path=log, env=env)
    try:
        wait_for_ports(process, ports, log_path=log)
    except ServerStartError:
        process.kill()
        for helper in helpers:
            if helper is not None:
                helper.kill()
        redis.stop()
        raise
    return _cleanup(
        RunningServer(
            name=name,
            process=process,
            workdir=workdir,
            helpers=[h for h in helpers if h is not None],
            h1_port=ports[0],
            h2c_port=ports[0],
            tls_port=ports[1] if len(ports) > 1 else None,
        )
    )


def _gateway(port: int, tls_port: int, tls: TLSFiles, access_log: str = "off") -> list[str]:
    return [
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
        "--metrics-port",
        "0",
        "--access-log",
        access_log,
        "--workers",
        "1",  # one core: one process
    ]


def start_shoal_gateway(
    backend_port: int, tls: TLSFiles, access_log: str = "off", name: str = "shoal-gateway"
) -> RunningServer:
    """``shoal gateway`` (hypercorn, one process) forwarding straight to the backend (no CA
    runs: it listens without waiting for a mesh certificate), logging to ``access_log``."""
    port, tls_port = free_port(), free_port()
    command = [*_gateway(port, tls_port, tls, access_log), "--identity-wait", "0"]
    return _start(name, [command], [port, tls_port], backend_port, mesh=False)


def start_shoal_mesh(backend_port: int, tls: TLSFiles, protocol: str = "http") -> RunningServer:
    """``shoal gateway`` → mTLS → ``shoal node``'s router → the backend (speaking
    ``protocol``): the whole path."""
    port, tls_port, mesh_port = free_port(), free_port(), free_port()
    node = [
        "node",
        "--node-id",
        "bench",
        "--mesh-port",
        str(mesh_port),
        "--metrics-port",
        "0",
        *NO_ACCESS_LOG,
    ]
    server = _start(
        "shoal-mesh",
        [node, _gateway(port, tls_port, tls)],
        [port, tls_port, mesh_port],
        backend_port,
        mesh=True,
        protocol=protocol,
    )
    server.notes.append("gateway and node router on one core; gateway → router is mTLS")
    return server


_ROUTER_CLIENT = (
    HAPROXY_DEFAULTS
    + """
frontend fe
    bind 127.0.0.1:{h1}
    http-request set-header x-shoal-instance bench/nginx
    default_backend router

backend router
    http-reuse always
    server r1 127.0.0.1:{mesh} ssl crt {client} ca-file {bundle} verify required maxconn 1000
"""
)


def _wait_for_file(path: Path, process: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise ServerStartError(f"{path} did not appear (controller exit {process.poll()})")
        time.sleep(0.05)


def start_shoal_router(haproxy: str, backend_port: int) -> RunningServer:
    """``shoal node``'s router alone, called the way a gateway calls it: a client holding a
    mesh certificate (haproxy on the load generator's core, originating mTLS and naming the
    instance in ``x-shoal-instance``) → router (the server core) → the backend."""
    workdir = _workdir("shoal-router")
    redis, token = _store(workdir, backend_port, mesh=True)
    state = workdir / "shoal-state"
    env = {
        "SHOAL_HOME": str(state),
        "PATH": "/usr/bin:/bin",
        "SHOAL_JOIN_TOKEN": token,
        "SHOAL_REDIS_URL": redis.url,
    }
    shoal = [sys.executable, "-m", "shoal"]
    helpers: list[subprocess.Popen[bytes]] = [p for p in [redis.process] if p is not None]
    controller = spawn(
        [*shoal, "controller"],
        cpu=BACKEND_CPU,
        log_path=workdir / "controller.log",
        env=env,
    )
    helpers.append(controller)
    try:
        _wait_for_file(state / "ca" / "root.key", controller)
        cert, key, bundle = issue_local(
            CAFiles(state / "ca"),
            "cluster.local",
            str(gateway_id("cluster.local")),
            timedelta(hours=24),
            workdir / "client",
        )
        client = workdir / "client" / "client.pem"
        client.write_bytes(cert.read_bytes() + key.read_bytes())
        mesh, h1 = free_port(), free_port()
        node = [*shoal, "node", "--node-id", "bench", "--mesh-port", str(mesh)]
        node += ["--metrics-port", "0", *NO_ACCESS_LOG]
        log = workdir / "node.log"
        process = spawn(node, cpu=SERVER_CPU, log_path=log, env=env)
        wait_for_ports(process, [mesh], log_path=log)
        conf = workdir / "haproxy.cfg"
        conf.write_text(_ROUTER_CLIENT.format(h1=h1, mesh=mesh, client=client, bundle=bundle))
        front = spawn(
            [haproxy, "-db", "-f", str(conf)], cpu=BACKEND_CPU, log_path=workdir / "haproxy.log"
        )
        helpers.append(front)
        wait_for_ports(front, [h1], log_path=workdir / "haproxy.log")
    except BaseException:
        for helper in helpers:
            helper.kill()
        redis.stop()
        raise
    server = RunningServer(
        name="shoal-router", process=process, workdir=workdir, helpers=helpers, h1_port=h1
    )
    server.notes.append("router alone; its mTLS client is haproxy on the load generator's core")
    return _cleanup(server)
