"""A Shoal cluster on namespace hosts, driven through the CLI as an operator would, and steady
client traffic to measure what clients see.

Host A runs Redis, the controller and the gateway; hosts B and C run nodes. Every CLI call
(``shoal apply``, ``shoal status -o json``, ``shoal scale``) runs inside host A's namespace; the
test process itself reaches the gateway from the root namespace through the bridge's address.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from tests.support.netns import Network, Process
from tests.support.wait import eventually

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "hello-world"
REDIS_PORT = 6390  # fixed: each test has its own namespaces, so ports cannot collide
GATEWAY_PORT = 8080
MESH_PORT = 15006
CLI_TIMEOUT = 30.0
NODE_IDS = {"b": "hostB", "c": "hostC"}

Status = dict[str, Any]  # `shoal status -o json`


def service(name: str, app: str, *, min_scale: int = 1) -> str:
    """A Service manifest running the example's ``app`` (``app:hello`` or ``app:world``)."""
    return f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: {name}}}
spec:
  app: {app}
  workdir: {EXAMPLE}
  scale: {{min: {min_scale}}}
  health: {{path: /healthz}}
"""


def instances(st: Status, service: str, state: str | None = "ready") -> list[dict[str, Any]]:
    """The registered instances of ``service`` (in ``state``, unless None)."""
    return [
        i
        for i in st["instances"]
        if i["service"] == service and (state is None or i["state"] == state)
    ]


def shoal_env(home: Path) -> dict[str, str]:
    """The environment of a Shoal process on a host: this one's minus Shoal's own variables,
    with the host's state dir."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SHOAL_")}
    return {**env, "SHOAL_HOME": str(home), "PYTHONUNBUFFERED": "1"}


@dataclass
class MultiHost:
    """The running cluster: its network, store URL, state dirs and component processes."""

    net: Network
    redis_url: str
    homes: dict[str, Path]
    components: dict[str, Process] = field(default_factory=dict)

    @property
    def gateway_url(self) -> str:
        """The gateway's plaintext listener on host A."""
        return f"http://{self.net.hosts['a'].address}:{GATEWAY_PORT}"

    def env(self, host: str, **extra: str) -> dict[str, str]:
        """The environment of a Shoal process on ``host``: its state dir and the store URL
        (which holds the password: never on a command line)."""
        return {**shoal_env(self.homes[host]), "SHOAL_REDIS_URL": self.redis_url, **extra}

    def cli(self, *args: str) -> list[str]:
        """The argv of ``shoal ARGS`` inside host A."""
        return self.net.command("a", [sys.executable, "-m", "shoal", *args])

    def shoal(self, *args: str) -> str:
        """Run a CLI command on host A (blocking); its stdout, or AssertionError with stderr."""
        done = subprocess.run(
            self.cli(*args),
            capture_output=True,
            text=True,
            timeout=CLI_TIMEOUT,
            env=self.env("a"),
            cwd=self.homes["a"],
            check=False,
        )
        if done.returncode != 0:
            raise AssertionError(f"shoal {' '.join(args)} exit {done.returncode}: {done.stderr}")
        return done.stdout

    async def ashoal(self, *args: str) -> str:
        """:meth:`shoal`, without blocking the event loop."""
        proc = await asyncio.create_subprocess_exec(
            *self.cli(*args),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=self.env("a"),
            cwd=self.homes["a"],
        )
        try:
            async with asyncio.timeout(CLI_TIMEOUT):
                out, err = await proc.communicate()
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise AssertionError(f"shoal {' '.join(args)} took over {CLI_TIMEOUT}s") from None
        if proc.returncode != 0:
            raise AssertionError(f"shoal {' '.join(args)} exit {proc.returncode}: {err.decode()}")
        return out.decode()

    async def apply(self, name: str, text: str) -> None:
        """Write ``text`` to a manifest file and ``shoal apply -f`` it."""
        path = self.homes["a"] / f"{name}.yaml"
        path.write_text(text)
        await self.ashoal("apply", "-f", str(path))

    async def status(self) -> Status:
        """``shoal status -o json``."""
        result: Status = json.loads(await self.ashoal("status", "-o", "json"))
        return result

    async def wait_status(
        self, cond: Callable[[Status], bool], what: str, timeout: float = 30.0
    ) -> Status:
        """Poll ``shoal status`` until ``cond`` holds; AssertionError naming ``what`` (with the
        last status and the components' logs) after ``timeout`` seconds."""
        return await eventually(
            self.status,
            what,
            until=cond,
            timeout=timeout,
            interval=0.2,
            show=summary,
            detail=self.diagnostics,
        )

    def diagnostics(self, lines: int = 25) -> str:
        """The last lines of every component's log, and where the logs are."""
        parts = [f"logs: {self.net.log_dir} and {', '.join(map(str, self.homes.values()))}"]
        for name, proc in self.components.items():
            parts.append(f"--- {name} on {proc.host.name} ---\n{proc.tail(lines)}")
        return "\n".join(parts)


def connected_to(pid: int, port: int) -> bool:
    """Whether process ``pid`` holds an established TCP connection to ``port`` (its socket
    descriptors looked up in its namespace's TCP tables in /proc)."""
    sockets = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(OSError):  # closed meanwhile
                sockets.add(os.readlink(f"/proc/{pid}/fd/{fd}"))
        rows = [
            line.split()
            for table in ("tcp", "tcp6")
            for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]
        ]
    except OSError:  # it has exited
        return False
    return any(
        row[3] == "01"  # ESTABLISHED
        and int(row[2].rsplit(":", 1)[1], 16) == port
        and f"socket:[{row[9]}]" in sockets
        for row in rows
    )


def summary(st: Status) -> str:
    """Nodes and instances of a status, on one line."""
    if not st:
        return "(none)"
    inst = [f"{i['service']}/{i['id']}@{i['node']}:{i['state']}" for i in st.get("instances", [])]
    return f"nodes={sorted(st.get('nodes', {}))} instances={inst}"


@dataclass(frozen=True, slots=True)
class Answer:
    """What the client saw for one request."""

    sent: float  # time.monotonic() when it was sent
    latency: float
    status: int | None  # None: no HTTP response at all
    instance: str  # x-instance: the instance that answered
    cause: str  # x-shoal-cause, or the client-side exception

    @property
    def ok(self) -> bool:
        """A 200 from an instance."""
        return self.status == 200 and bool(self.instance)


class Traffic:
    """Open-loop GETs at a fixed rate through the gateway, each answer recorded.

    Requests are sent on schedule whether or not earlier ones have returned (a stalled
    upstream shows up as latency and errors, not as a slower sender).
    """

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        host: str,
        *,
        rps: float,
        timeout: float = 10.0,
    ) -> None:
        self.session = session
        self.url = url
        self.host = host
        self.rps = rps
        self.timeout = timeout
        self.answers: list[Answer] = []

    async def run(self, stop: asyncio.Event) -> None:
        """Send until ``stop`` is set; return once every request sent has its answer."""
        async with asyncio.TaskGroup() as tg:
            start = time.monotonic()
            sent = 0
            while not stop.is_set():
                tg.create_task(self._one())
                sent += 1
                delay = start + sent / self.rps - time.monotonic()
                if delay > 0:
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(delay):
                            await stop.wait()

    async def _one(self) -> None:
        t0 = time.monotonic()
        try:
            async with self.session.get(
                self.url,
                headers={"Host": self.host},
                timeout=aiohttp.ClientTimeout(total=self.timeout),
            ) as r:
                await r.read()
                answer = Answer(
                    sent=t0,
                    latency=time.monotonic() - t0,
                    status=r.status,
                    instance=r.headers.get("x-instance", ""),
                    cause=r.headers.get("x-shoal-cause", ""),
                )
        except (aiohttp.ClientError, TimeoutError) as e:
            answer = Answer(
                sent=t0, latency=time.monotonic() - t0, status=None, instance="", cause=repr(e)
            )
        self.answers.append(answer)

    def account(self, numbers: dict[str, Any]) -> str:
        """Add the traffic's totals to ``numbers``; return why it failed ('' when no request
        did)."""
        errors = self.errors()
        numbers["requests"] = len(self.answers)
        numbers["errors"] = len(errors)
        numbers["max_latency_s"] = round(max(a.latency for a in self.answers), 3)
        numbers["slow_over_0.4s"] = sum(a.latency > 0.4 for a in self.answers)
        if not errors:
            return ""
        causes = Counter((e.status, e.cause) for e in errors).most_common(5)
        return f"{len(errors)} of {len(self.answers)} requests failed: {causes}; numbers: {numbers}"

    def errors(self) -> list[Answer]:
        """Every answer that was not a 200 from an instance."""
        return [a for a in self.answers if not a.ok]


def start_shoal(mh: MultiHost) -> None:
    """Controller and gateway on A, nodes hostB and hostC on B and C, all on ``mh.redis_url``
    and admitted with one join token."""
    net, homes = mh.net, mh.homes
    token = mh.shoal("token", "create", "--uses", "3").strip()  # two nodes and the gateway
    py = [sys.executable, "-m", "shoal"]
    mh.components["controller"] = net.run(
        "a",
        "controller",
        [*py, "controller"],
        env=mh.env("a"),
        cwd=homes["a"],
    )
    for h, node_id in NODE_IDS.items():
        mh.components[node_id] = net.run(
            h,
            node_id,
            [
                *py,
                "node",
                "--node-id",
                node_id,
                "--host",
                net.hosts[h].address,
                "--mesh-port",
                str(MESH_PORT),
            ],
            env=mh.env(h, SHOAL_JOIN_TOKEN=token),
            cwd=homes[h],
        )
    mh.components["gateway"] = net.run(
        "a",
        "gateway",
        [
            *py,
            "gateway",
            "--host",
            net.hosts["a"].address,
            "--port",
            str(GATEWAY_PORT),
            "--workers",
            "1",  # these tests follow one gateway process (workers: tests/e2e/test_up.py)
        ],
        env=mh.env("a", SHOAL_JOIN_TOKEN=token),
        cwd=homes["a"],
    )
