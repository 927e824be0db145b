"""The gRPC and WebSocket examples through a real ``shoal up``, as the README's quickstart says:
``shoal apply -f`` each example's directory, call it with the client next to it, and run a
failover drill on the gRPC one under a steady load of calls."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.e2e.test_up import Platform, platform  # noqa: F401  (the fixture)
from tests.support.wait import eventually_sync

EXAMPLES = Path(__file__).resolve().parents[2] / "deploy" / "examples"


def ready(p: Platform, service: str) -> int:
    return sum(
        1 for i in p.status()["instances"] if i["service"] == service and i["state"] == "ready"
    )


@pytest.mark.timeout(240)
def test_grpc_and_websocket_examples_through_shoal_up(platform: Platform) -> None:  # noqa: F811
    for example in ("grpc-echo", "websocket-echo"):
        applied = platform.shoal("apply", "-f", str(EXAMPLES / example), "--wait")
        assert applied.returncode == 0, applied.stderr
    eventually_sync(
        lambda: (ready(platform, "grpc-echo"), ready(platform, "ws-echo")),
        "the examples' instances ready",
        until=(2, 1).__eq__,
        timeout=60,
    )
    client = [sys.executable, str(EXAMPLES / "grpc-echo" / "client.py")]
    target = f"127.0.0.1:{platform.port}"
    calls = subprocess.run([*client, target], capture_output=True, text=True, timeout=60)
    assert calls.returncode == 0 and "echo: hello {'revision': 'v1'}" in calls.stdout, calls
    assert "status: NOT_FOUND asked to fail" in calls.stdout, calls.stdout
    ws = subprocess.run(
        [sys.executable, str(EXAMPLES / "websocket-echo" / "client.py"),
         f"ws://127.0.0.1:{platform.port}/", "hi", "0x00ff"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert ws.stdout.splitlines() == ["echo: hi", "echo: b'\\x00\\xff'"], ws

    load = subprocess.Popen([*client, target, "--rpcs", "1000"], stdout=subprocess.PIPE, text=True)
    drill = platform.shoal(
        "drill", "failover", "grpc-echo", "--fault", "kill", "--duration", "8s", "--rps", "50"
    )
    out, _ = load.communicate(timeout=120)
    assert drill.returncode == 0 and "client-visible errors none" in drill.stdout, drill
    assert "1000 rpcs, 0 failed" in out, out
