"""Control-plane scale on a running Shoal: the live columns of issue #20's table.

``python -m bench.scale`` runs this for each size N: a fresh ``shoal up`` (no example,
one gateway worker, access logs off) in a temporary ``$SHOAL_HOME``; N synthetic instances of a
node ``synthetic`` registered through Shoal's own registry (on that node's lease, renewed every
second as an agent renews it; each instance points at one hypercorn hello backend, outside the
mesh, so that the gateway forwards to it itself); N/10 services, each with a VirtualService
(90/10 between two subsets) and a DestinationRule, plus VirtualServices of other hosts up to
``3 N / 20`` in all (3,000 at 20,000). Then it measures:

- ``routed p50/p99 ms``: a registry change (an instance of service ``probe`` registered, then
  removed) until the gateway routes by it (200, then 503), polled every millisecond;
- ``acked p50/p99 ms``: ``apply`` of one VirtualService until every proxy (gateway, node) and
  the controller acknowledge its revision;
- ``gw/node/ctl ms per change``: CPU of each component per registry change (500 changes of
  instance states, 10 ms apart) and per VirtualService apply (50), the idle rate (5 s)
  taken off: the kernel counts CPU in 10 ms ticks, so these are ±0.2 ms;
- ``idle redis cmd/s``, ``redis cpu %`` and ``aof KB/s`` over 5 s with only heartbeats;
- ``gw/node RSS MB``;
- ``GET p50/p99 ms under churn``: sequential GETs through the gateway for 5 s while 100 registry
  changes a second happen;
- ``GET p99 ms (reloads)``: the same while every component's Redis connections are cut, 5
  times: each proxy loads the store again and builds its snapshot whole (every change is
  applied in place: this is when a snapshot is still built whole);
- ``gw restart to routing s``: the gateway killed (SIGKILL) until, restarted by ``shoal up``
  and the whole store loaded again, it routes;
- ``status s``: the wall time of ``shoal status``.

Timings are this machine's (2 cores, everything on it): compare sizes, not absolute values.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp

from bench.process import free_port, wait_for_ports
from bench.tls import make_self_signed
from shoal.platform.control.client import Client
from shoal.resources.endpoint import Endpoint
from shoal.resources.manifest import parse_text
from shoal.store.acks import live_acks
from shoal.store.connection import Redis, connect
from shoal.store.embedded import recorded_url
from shoal.store.keys import Keys
from shoal.store.registry import Registry

NODE = "synthetic"
PER_SERVICE = 10
REPO = Path(__file__).resolve().parent.parent
_ROUTE = """
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {{name: {name}}}
spec:
  hosts: [{host}]
  http:
  - route:
    - {{destination: {{host: {service}, subset: v1}}, weight: {w1}}}
    - {{destination: {{host: {service}, subset: v2}}, weight: {w2}}}
"""
_RULE = """
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {{name: {service}}}
spec:
  host: {service}
  subsets:
  - {{name: v1, labels: {{version: v1}}}}
  - {{name: v2, labels: {{version: v2}}}}
"""


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _components(up: int) -> dict[str, int]:
    """The pids of ``shoal up``'s gateway, node, controller and Redis."""
    found: dict[str, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            status = (entry / "status").read_text()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        ppid = next(int(x.split()[1]) for x in status.splitlines() if x.startswith("PPid:"))
        if ppid != up:
            continue
        for name in ("gateway", "node", "controller", "redis-server"):
            if f" {name} " in f" {cmdline} " or (name == "redis-server" and name in cmdline):
                found.setdefault(name, int(entry.name))
    return found


def _endpoint(i: int, service: str, port: int, state: str = "ready") -> Endpoint:
    revision = "v2" if i % PER_SERVICE == PER_SERVICE - 1 else "v1"
    return Endpoint(
        id=f"x{i:06d}",
        service=service,
        revision=revision,
        node=NODE,
        address="127.0.0.1",
        port=port,
        labels=(("version", revision),),
        state=state,  # type: ignore[arg-type]
    )


class Cluster:
    """A ``shoal up`` under test, its store, and the synthetic node's heartbeat."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port, self.mesh = free_port(), free_port()
        self.env = {**os.environ, "SHOAL_HOME": str(home)}
        self.up: subprocess.Popen[bytes] | None = None
        self.redis: Redis | None = None

    def start(self) -> None:
        argv = [sys.executable, "-m", "shoal", "up", "--no-example", "--port", str(self.port)]
        # (no admin ports: up takes three in a row from one, which a free port does not promise)
        argv += ["--mesh-port", str(self.mesh), "--metrics-port", "0"]
        argv += ["--gateway-workers", "1", "--dashboard-port", "0", "--access-log", "off"]
        argv += ["--instance-uids", "off"]
        log = (self.home / "up.log").open("wb")
        self.up = subprocess.Popen(
            argv, env=self.env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
        wait_for_ports(self.up, [self.port], log_path=self.home / "up.log", timeout=60)

    async def connect(self) -> tuple[Redis, Keys]:
        url = recorded_url(self.home)
        if url is None:
            raise RuntimeError(f"no store recorded under {self.home}")
        self.redis = connect(url)
        return self.redis, Keys()

    def pids(self) -> dict[str, int]:
        assert self.up is not None
        return _components(self.up.pid)

    def stop(self) -> None:
        if self.up is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.up.pid, signal.SIGTERM)
        try:
            self.up.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.up.pid, signal.SIGKILL)


async def _until(
    check: Callable[[], Awaitable[bool]], timeout: float = 30.0, every: float = 0.001
) -> float:
    """Seconds until ``check`` holds (polled every ``every`` s)."""
    started = time.perf_counter()
    while not await check():
        if time.perf_counter() - started > timeout:
            raise TimeoutError("the condition did not hold in time")
        await asyncio.sleep(every)
    return time.perf_counter() - started


async def _status(session: aiohttp.ClientSession, base: str, host: str) -> int:
    async with session.get(f"{base}/", headers={"Host": host}) as r:
        await r.read()
        return r.status


async def measure(n: int, backend: int, home: Path) -> dict[str, float]:
    """Every live column for ``n`` instances."""
    services = max(1, n // PER_SERVICE)
    cluster = Cluster(home)
    cluster.start()
    heartbeat: asyncio.Task[None] | None = None
    try:
        redis, keys = await cluster.connect()
        registry, client = Registry(redis, keys), Client(redis, keys)
        docs = [_RULE.format(service=f"s{i}") for i in range(services)]
        docs += [
            _ROUTE.format(name=f"v{i}", host=f"h{i}", service=f"s{i % services}", w1=90, w2=10)
            for i in range(max(services, 3 * n // 20))
        ]
        docs.append(_ROUTE.format(name="probe", host="probe", service="probe", w1=100, w2=0))
        docs.append(_RULE.format(service="probe"))
        for start in range(0, len(docs), 500):
            await client.apply(parse_text("---".join(docs[start : start + 500])))
        await registry.put_node(NODE, {"address": "127.0.0.1"}, ttl=5)
        everyone = [_endpoint(i, f"s{i // PER_SERVICE}", backend) for i in range(n)]
        for start in range(0, n, 2000):
            await registry.put_node_instances(NODE, everyone[start : start + 2000])

        async def beat() -> None:
            while True:
                await registry.put_node(NODE, {"address": "127.0.0.1"}, ttl=5)
                await asyncio.sleep(1.0)

        heartbeat = asyncio.create_task(beat())
        base = f"http://127.0.0.1:{cluster.port}"
        async with aiohttp.ClientSession() as session:
            last = f"h{max(services, 3 * n // 20) - 1}"
            await _until(lambda: _is(session, base, last, 200), timeout=120, every=0.05)
            await asyncio.sleep(3)  # (settled)
            pids = cluster.pids()
            row: dict[str, float] = {}
            row.update(await _idle(redis, pids))
            row["gw RSS MB"] = _rss_mb(pids["gateway"])
            row["node RSS MB"] = _rss_mb(pids["node"])
            routed = []
            probe = replace(_endpoint(0, "probe", backend), id="probe")
            for _ in range(10):
                await registry.put_node_instances(NODE, [probe])
                routed.append(await _until(lambda: _is(session, base, "probe", 200)))
                await registry.remove_instances([probe.key], node=NODE)
                routed.append(await _until(lambda: _is(session, base, "probe", 503)))
            row["routed p50 ms"] = statistics.median(routed) * 1000
            row["routed p99 ms"] = _percentile(routed, 0.99) * 1000
            row.update(await _per_change(registry, client, redis, keys, pids, everyone))
            row.update(await _churn(session, base, registry, everyone))
            row.update(await _reloads(session, base, redis))
            # Restart to routing: the gateway killed, restarted by shoal up's supervisor,
            # loading the whole store again, until it routes.
            os.kill(cluster.pids()["gateway"], signal.SIGKILL)
            started = time.perf_counter()
            await _until(lambda: _answers(session, base, "h0"), timeout=120, every=0.01)
            row["gw restart to routing s"] = time.perf_counter() - started
        started = time.perf_counter()
        status = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "shoal", "status", env=cluster.env, stdout=subprocess.DEVNULL
        )
        if await status.wait() != 0:
            raise RuntimeError("shoal status failed")
        row["status s"] = time.perf_counter() - started
        return row
    finally:
        if heartbeat is not None:
            heartbeat.cancel()
        if cluster.redis is not None:
            await cluster.redis.aclose()
        cluster.stop()


async def _is(session: aiohttp.ClientSession, base: str, host: str, status: int) -> bool:
    return await _status(session, base, host) == status


async def _answers(session: aiohttp.ClientSession, base: str, host: str) -> bool:
    """Whether the gateway routes ``host`` (200); False while nothing listens."""
    try:
        return await _is(session, base, host, 200)
    except aiohttp.ClientError:
        return False


async def _idle(redis: Redis, pids: dict[str, int]) -> dict[str, float]:
    """Redis commands/s, CPU and AOF growth over 5 s of heartbeats only."""

    async def info() -> dict[str, Any]:
        found: dict[str, Any] = {}
        for section in ("stats", "cpu", "persistence"):
            found.update(await redis.info(section))
        return found

    before, cpu = await info(), _cpu_seconds(pids["redis-server"])
    await asyncio.sleep(5)
    after, cpu_after = await info(), _cpu_seconds(pids["redis-server"])
    commands = after["total_commands_processed"] - before["total_commands_processed"] - 6
    aof = after.get("aof_current_size", 0) - before.get("aof_current_size", 0)
    return {
        "idle redis cmd/s": commands / 5,
        "redis cpu %": (cpu_after - cpu) / 5 * 100,
        "aof KB/s": aof / 5 / 1024,
    }


async def _per_change(
    registry: Registry,
    client: Client,
    redis: Redis,
    keys: Keys,
    pids: dict[str, int],
    everyone: list[Endpoint],
) -> dict[str, float]:
    """CPU ms per registry change and per VirtualService apply of each component, and how
    long an apply takes to be acknowledged by every component."""
    names = {"gw": "gateway", "node": "node", "ctl": "controller"}

    def cpu() -> dict[str, float]:
        return {short: _cpu_seconds(pids[name]) for short, name in names.items()}

    rng = random.Random(1)
    idle_from, idle_at = cpu(), time.perf_counter()
    await asyncio.sleep(5)
    idle = {k: (v - idle_from[k]) / (time.perf_counter() - idle_at) for k, v in cpu().items()}
    row: dict[str, float] = {}
    count = 500
    before, at = cpu(), time.perf_counter()
    for i in range(count):
        chosen = rng.choice(everyone)
        flipped = replace(chosen, state="draining" if i % 2 == 0 else "ready")
        await registry.put_node_instances(NODE, [flipped])
        await asyncio.sleep(0.01)
    await registry.put_node_instances(NODE, everyone)  # (all ready again)
    await asyncio.sleep(1)
    spent = time.perf_counter() - at
    for k, v in cpu().items():
        row[f"{k} ms/registry change"] = max(0.0, v - before[k] - idle[k] * spent) / count * 1000
    acked = []
    applies = 50
    before, at = cpu(), time.perf_counter()
    for i in range(applies):
        route = _ROUTE.format(name="v0", host="h0", service="s0", w1=50 + i, w2=50 - i)
        revision = (await client.apply(parse_text(route))).revision
        started = time.perf_counter()
        await _until(lambda r=revision: _acked(redis, keys, r), timeout=30)  # type: ignore[misc]
        acked.append(time.perf_counter() - started)
        await asyncio.sleep(0.1)
    spent = time.perf_counter() - at
    for k, v in cpu().items():
        row[f"{k} ms/VS apply"] = max(0.0, v - before[k] - idle[k] * spent) / applies * 1000
    row["acked p50 ms"] = statistics.median(acked) * 1000
    row["acked p99 ms"] = _percentile(acked, 0.99) * 1000
    return row


async def _acked(redis: Redis, keys: Keys, revision: int) -> bool:
    acks = await live_acks(redis, keys)
    return bool(acks) and all(applied >= revision for applied in acks.values())


async def _churn(
    session: aiohttp.ClientSession, base: str, registry: Registry, everyone: list[Endpoint]
) -> dict[str, float]:
    """GET latency through the gateway while 100 registry changes a second happen."""
    stop = asyncio.Event()
    rng = random.Random(2)

    async def churn() -> None:
        i = 0
        while not stop.is_set():
            chosen = rng.choice(everyone)
            flipped = replace(chosen, state="draining" if i % 2 == 0 else "ready")
            await registry.put_node_instances(NODE, [flipped])
            i += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(churn())
    latencies = []
    ended = time.perf_counter() + 5
    try:
        while time.perf_counter() < ended:
            started = time.perf_counter()
            await _status(session, base, "h0")
            latencies.append(time.perf_counter() - started)
    finally:
        stop.set()
        await task
    await registry.put_node_instances(NODE, everyone)
    return {
        "GET p50 ms (churn)": statistics.median(latencies) * 1000,
        "GET p99 ms (churn)": _percentile(latencies, 0.99) * 1000,
    }


async def _reloads(session: aiohttp.ClientSession, base: str, redis: Redis) -> dict[str, float]:
    """GET latency through the gateway while every component's Redis connections are cut, 5
    times half a second apart: each proxy then loads the store again and builds its snapshot
    whole (the one change that still does)."""
    done = asyncio.Event()

    async def cut() -> None:
        for _ in range(5):
            await redis.client_kill_filter(_type="normal", skipme=True)
            await asyncio.sleep(0.5)
        done.set()

    task = asyncio.create_task(cut())
    latencies = []
    while not done.is_set():
        started = time.perf_counter()
        await _status(session, base, "h0")
        latencies.append(time.perf_counter() - started)
    await task
    return {
        "GET p99 ms (reloads)": _percentile(latencies, 0.99) * 1000,
        "GET max ms (reloads)": max(latencies) * 1000,
    }


def run(sizes: list[int]) -> dict[int, dict[str, float]]:
    """Every live column for each size, each on a fresh ``shoal up``."""
    results: dict[int, dict[str, float]] = {}
    with tempfile.TemporaryDirectory(prefix="shoal-scale-") as tmp:
        tls = make_self_signed(Path(tmp))
        port = free_port()
        argv = [sys.executable, "-m", "bench.hello_app", "--port", str(port)]
        argv += ["--tls-port", str(free_port()), "--cert", str(tls.cert), "--key", str(tls.key)]
        backend = subprocess.Popen(argv, cwd=REPO, start_new_session=True)
        try:
            wait_for_ports(backend, [port])
            for n in sizes:
                home = Path(tmp) / f"home-{n}"
                home.mkdir()
                print(f"N = {n}: starting shoal up in {home}", flush=True)
                results[n] = asyncio.run(measure(n, port, home))
        finally:
            os.killpg(backend.pid, signal.SIGTERM)
            backend.wait(timeout=10)
    return results
