"""The gRPC and WebSocket examples in deploy/examples/ work as their READMEs say: applied as
they are, and called through the gateway with the clients next to them."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from shoal.platform.drills.drill import failover
from shoal.resources.manifest import load_files
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import ready, running_cluster

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


async def client(script: Path, *args: str) -> str:
    """Run an example's client with this Python; its output (it must succeed)."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(script),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    async with asyncio.timeout(60):
        out, _ = await process.communicate()
    assert process.returncode == 0, out.decode()
    return out.decode()


@pytest.mark.timeout(120)
async def test_the_grpc_and_websocket_examples(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """grpc-echo (a grpcio server run as ``python3`` from PATH: Shoal's own Python) answers a
    unary call with trailing metadata, a server stream and an error status; ws-echo (a
    Starlette app) echoes text and binary messages."""
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        resources = load_files([str(EXAMPLES / "grpc-echo"), str(EXAMPLES / "websocket-echo")])
        await cluster.client.apply(resources)
        await cluster.instances(
            lambda f: len(ready(f, "grpc-echo")) == 2 and bool(ready(f, "ws-echo")), timeout=60
        )
        grpc_out = await client(
            EXAMPLES / "grpc-echo" / "client.py", f"127.0.0.1:{cluster.gateway_port}"
        )
        ws_out = await client(
            EXAMPLES / "websocket-echo" / "client.py",
            f"ws://127.0.0.1:{cluster.gateway_port}/",
            "hello ✓",
            "0x00ff",
        )
    assert "echo: hello {'revision': 'v1'}" in grpc_out, grpc_out
    assert [line for line in grpc_out.splitlines() if line.startswith("stream:")] == [
        f"stream: {i}" for i in range(10)
    ], grpc_out
    assert "status: NOT_FOUND asked to fail" in grpc_out, grpc_out
    assert ws_out.splitlines() == ["echo: hello ✓", "echo: b'\\x00\\xff'"], ws_out


@pytest.mark.timeout(120)
@pytest.mark.parametrize("fault", ["kill", "hang"])
async def test_a_failover_drill_on_the_grpc_example_fails_no_rpc(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path, fault: str
) -> None:
    """``shoal drill failover grpc-echo`` (its traffic: health-check RPCs over h2c) while the
    example's client makes unary calls the whole time: neither sees a failed RPC — a call cut
    by the kill is made again on the other instance (the example's route opts in to retries;
    the call's message, of no declared length, was kept for it). (A stopped
    gRPC server still accepts TCP connections, so its TCP readiness probe never notices the
    hang: the balancer sends it nothing once a call is stuck there, and it recovers.)"""
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await cluster.client.apply(load_files([str(EXAMPLES / "grpc-echo")]))
        await cluster.instances(lambda f: len(ready(f, "grpc-echo")) == 2, timeout=60)
        calls = asyncio.create_task(
            client(
                EXAMPLES / "grpc-echo" / "client.py",
                f"127.0.0.1:{cluster.gateway_port}",
                "--rpcs",
                "600",
            )
        )
        report = await failover(
            cluster.client,
            gateway=cluster.gateway_url,
            service="grpc-echo",
            fault=fault,  # type: ignore[arg-type]
            count=1,
            duration=8.0,
            rps=50,
        )
        out = await calls
    assert report.requests >= 350 and report.errors == {}, report
    assert report.recovered_after is not None, report
    assert "600 rpcs, 0 failed" in out, out


@pytest.mark.timeout(120)
async def test_a_hung_grpc_server_fails_its_grpc_health_check(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """grpc-echo says ``health: {grpc: true}``: a stopped server (which still accepts TCP
    connections, so a TCP probe passes) fails the gRPC health check and goes unhealthy; it is
    ready again once it runs."""
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await cluster.client.apply(load_files([str(EXAMPLES / "grpc-echo")]))
        found = await cluster.instances(lambda f: len(ready(f, "grpc-echo")) == 2, timeout=60)
        target = ready(found, "grpc-echo")[0]
        assert target.pid is not None
        os.kill(target.pid, signal.SIGSTOP)
        try:
            await cluster.instances(
                lambda f: any(e.key == target.key and e.state == "unhealthy" for e in f),
                timeout=30,
            )
        finally:
            os.kill(target.pid, signal.SIGCONT)
        await cluster.instances(
            lambda f: any(e.key == target.key and e.state == "ready" for e in f), timeout=30
        )
