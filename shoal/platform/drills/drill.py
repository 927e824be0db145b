"""Failover drills: steady traffic through the gateway, a fault, and a report of what clients saw.

``shoal drill failover`` drives GETs at a fixed rate, injects a fault into some instances
(through the agents, by a ``Fault`` document per instance), keeps the traffic going through
detection and recovery, and reports client-visible errors by cause, latency before / during /
after, time to detection and to recovery, and how many requests the proxies retried.
``shoal drill redis`` does the same around a store outage. The report is computed by the pure
:func:`summarize` from the recorded requests and timestamps.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import os
import signal
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from shoal.errors import NotFoundError, StoreError, UserError
from shoal.http import grpc
from shoal.http.refusal import CAUSE_HEADER
from shoal.mesh.h2upstream import H2Upstreams
from shoal.mesh.load import percentile
from shoal.mesh.tasks import task_group
from shoal.mesh.upstream_connection import UpstreamError
from shoal.platform.control.client import Client
from shoal.platform.runtime.agent import FAULT
from shoal.platform.runtime.faults import Fault
from shoal.resources.endpoint import Endpoint
from shoal.resources.model import Service
from shoal.store.acks import live_reports
from shoal.store.config import Change
from shoal.store.events import Events


@dataclass(frozen=True, slots=True)
class Sample:
    """One request of the drill: when it was sent (drill clock), how long, how it ended."""

    at: float
    latency: float
    status: int
    cause: str | None


@dataclass(frozen=True, slots=True)
class Phase:
    """Latency figures of one phase of the drill."""

    requests: int
    p50_ms: float | None
    p99_ms: float | None


@dataclass(frozen=True, slots=True)
class Report:
    """What the drill observed."""

    fault: str
    targets: list[str]
    requests: int
    errors: dict[str, int]
    error_rate: float
    before: Phase
    during: Phase
    after: Phase
    detected_after: float | None
    recovered_after: float | None
    retried: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``-o json``."""
        return dataclasses.asdict(self)


def _phase(samples: Sequence[Sample]) -> Phase:
    latencies = [s.latency * 1000 for s in samples]
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return Phase(
        len(samples), None if p50 is None else round(p50, 1), None if p99 is None else round(p99, 1)
    )


def summarize(
    samples: Sequence[Sample],
    *,
    fault: str,
    targets: list[str],
    fault_at: float,
    detected_at: float | None,
    recovered_at: float | None,
    retried: int,
    notes: list[str] | None = None,
) -> Report:
    """The drill's report from what was recorded (times on the drill's clock)."""
    errors = Counter(s.cause or f"http_{s.status}" for s in samples if not 200 <= s.status < 400)
    end = recovered_at if recovered_at is not None else math.inf
    return Report(
        fault=fault,
        targets=targets,
        requests=len(samples),
        errors=dict(errors),
        error_rate=sum(errors.values()) / len(samples) if samples else 0.0,
        before=_phase([s for s in samples if s.at < fault_at]),
        during=_phase([s for s in samples if fault_at <= s.at < end]),
        after=_phase([s for s in samples if s.at >= end]),
        detected_after=None if detected_at is None else round(detected_at - fault_at, 2),
        recovered_after=None if recovered_at is None else round(recovered_at - fault_at, 2),
        retried=retried,
        notes=notes or [],
    )


GRPC_HEALTH = "/grpc.health.v1.Health/Check"
"""The gRPC method a drill calls by default: the standard health check."""
_EMPTY_MESSAGE = b"\x00\x00\x00\x00\x00"  # one uncompressed gRPC message of 0 bytes
_CALL_TIMEOUT = 30.0


class Traffic:
    """Steady GETs at ``rps`` through the gateway — or, given a ``grpc`` method's path, unary
    gRPC calls (an empty message, over h2c) — recording every outcome."""

    def __init__(
        self,
        url: str,
        host: str,
        rps: float,
        clock: Callable[[], float],
        grpc: str | None = None,
    ) -> None:
        self.url = url
        self.host = host
        self.rps = rps
        self.clock = clock
        self.grpc = grpc
        self.authority = urlsplit(url).netloc  # where gRPC calls go (host:port)
        self.samples: list[Sample] = []

    async def run(self, until: float) -> None:
        """Send requests on schedule until the drill clock reaches ``until``."""
        if self.grpc is not None:
            pool = H2Upstreams()
            try:
                await self._schedule(until, lambda: self._call(pool))
            finally:
                await pool.close()
            return
        timeout = aiohttp.ClientTimeout(total=_CALL_TIMEOUT)
        async with aiohttp.ClientSession(timeout=timeout) as session:
            await self._schedule(until, lambda: self._one(session))

    async def _schedule(self, until: float, one: Callable[[], Coroutine[Any, Any, None]]) -> None:
        async with task_group() as requests:
            start = self.clock()
            n = 0
            while (due := start + n / self.rps) < until:
                await asyncio.sleep(max(0.0, due - self.clock()))
                requests.create_task(one(), name=f"request {n}")
                n += 1

    async def _call(self, pool: H2Upstreams) -> None:
        """One unary gRPC call: OK is a success; any other status an error named by Shoal's
        ``x-shoal-cause``, else ``grpc_<code>``."""
        assert self.grpc is not None
        at = self.clock()
        fields = [(b"host", self.host.encode()), (b"content-type", b"application/grpc")]
        try:
            response = await pool.request(
                self.authority,
                "POST",
                self.grpc,
                fields,
                _EMPTY_MESSAGE,
                total_timeout=_CALL_TIMEOUT,
            )
            while await response.piece() is not None:
                pass
        except UpstreamError as e:
            self.samples.append(Sample(at, self.clock() - at, 0, f"client_{e.cause}"))
            return
        code = grpc.head_status(response.headers)
        if code is None:
            found = next((v for n, v in response.trailers if n == b"grpc-status"), b"")
            code = int(found) if found.isdigit() else 2  # no status at all: UNKNOWN
        status, cause = response.status, None
        if status == 200 and code != 0:
            status = 0
        if status != 200:
            said = next((v for n, v in response.headers if n == CAUSE_HEADER), None)
            cause = said.decode() if said else f"grpc_{code}"
        self.samples.append(Sample(at, self.clock() - at, status, cause))

    async def _one(self, session: aiohttp.ClientSession) -> None:
        at = self.clock()
        try:
            async with session.get(self.url, headers={"Host": self.host}) as r:
                await r.read()
                status, cause = r.status, r.headers.get("x-shoal-cause")
        except (aiohttp.ClientError, TimeoutError) as e:
            status, cause = 0, f"client_{type(e).__name__}"
        self.samples.append(Sample(at, self.clock() - at, status, cause))


Progress = Callable[[str, list[Sample]], None]
"""Told a drill's phase and the samples so far while it runs."""


class Telling:
    """Tells ``progress`` the drill's :attr:`phase` and samples, twice a second."""

    def __init__(self, progress: Progress, traffic: Traffic) -> None:
        self.progress = progress
        self.traffic = traffic
        self.phase = "warm-up"

    def now(self) -> None:
        """Tell now."""
        self.progress(self.phase, self.traffic.samples)

    def enter(self, phase: str) -> None:
        """The drill is in ``phase`` from now on: tell at once."""
        self.phase = phase
        self.now()

    async def run(self) -> None:
        """Tell until cancelled."""
        while True:
            self.now()
            await asyncio.sleep(0.5)


def _quiet(phase: str, samples: list[Sample]) -> None:
    pass


async def retried_total(client: Client) -> int:
    """Retries counted so far by every live proxy."""
    return sum(
        int(r.get("retries", 0)) for r in (await live_reports(client.redis, client.keys)).values()
    )


async def ejected(client: Client, keys: set[str]) -> bool:
    """Whether any live proxy currently ejects one of the instances ``keys``."""
    for report in (await live_reports(client.redis, client.keys)).values():
        for entries in report.get("ejections", {}).values():
            if any(e["instance"] in keys for e in entries):
                return True
    return False


async def inbound_counts(client: Client) -> Counter[str]:
    """Requests each instance has received so far, by instance key (the routers' counts)."""
    counts: Counter[str] = Counter()
    for report in (await live_reports(client.redis, client.keys)).values():
        counts.update(report.get("inbound") or {})
    return counts


def busiest(
    candidates: dict[str, list[Endpoint]], served: Counter[str], count: int
) -> tuple[list[Endpoint], int]:
    """The ``count`` instances to fault: of the revision whose instances served the most of
    ``served`` (requests by instance key during the warm-up), those that served most; and how
    many requests they had served. Instances that served nothing are never chosen: faulting
    them would prove nothing."""
    revision, endpoints = max(
        candidates.items(), key=lambda kv: (sum(served[e.key] for e in kv[1]), kv[0])
    )
    chosen = sorted((e for e in endpoints if served[e.key]), key=lambda e: -served[e.key])[:count]
    if len(chosen) < count:
        raise UserError(
            f"only {len(chosen)} instance(s) of {revision} served the drill's warm-up traffic, "
            f"{count} to fault: is the service's traffic routed elsewhere?"
        )
    return chosen, sum(served[e.key] for e in chosen)


async def choose_targets(
    client: Client, service: str, count: int, fault: Fault, named: Sequence[str] = ()
) -> dict[str, list[Endpoint]]:
    """The ready instances of ``service`` that can take ``fault``, by revision: only revisions
    that keep a ready instance after ``count`` of theirs are faulted (``named``: those instances
    by key or id, which must all be there)."""
    ready = [
        e for e in await client.registry.instances() if e.service == service and e.state == "ready"
    ]
    if named:
        picked = [e for e in ready if e.key in named or e.id in named]
        missing = set(named) - {e.key for e in picked} - {e.id for e in picked}
        if missing:
            raise NotFoundError(f"no ready instance {', '.join(sorted(missing))} of {service}")
        return {e.revision: [x for x in picked if x.revision == e.revision] for e in picked}
    # An instance some proxy still ejects (an earlier drill) would blur the detection time.
    ready = [e for e in ready if not await ejected(client, {e.key})] or ready
    if not ready:
        raise NotFoundError(f"no ready instance of {service}")
    if fault in ("error", "slow"):
        specs = {s.key: s for s in (await client.status()).services}
        apps = [
            e
            for e in ready
            if (spec := specs.get(f"{e.service}/{e.revision}"))
            and isinstance(spec, Service)
            and spec.app is not None
        ]
        if len(apps) < count:
            raise UserError(
                f"--fault {fault} needs instances of an app: service (Shoal's "
                "runtime injects it); use kill or hang for command: services"
            )
        ready = apps
    # Fault instances of one revision, and leave it at least one to fail over to: traffic
    # routed to a subset never spills into another (as in Istio).
    by_revision: dict[str, list[Endpoint]] = {}
    for e in ready:
        by_revision.setdefault(e.revision, []).append(e)
    enough = {r: found for r, found in by_revision.items() if len(found) > count}
    if not enough:
        most = max(len(found) for found in by_revision.values())
        raise UserError(
            f"{service} has at most {most} ready instances of a revision: faulting {count} "
            "would leave none to fail over to; scale it up first"
        )
    return enough


async def watch_until(
    cond: Callable[[], Awaitable[bool]],
    clock: Callable[[], float],
    until: float,
    every: float = 0.1,
) -> float | None:
    """Poll ``cond`` until it holds (return the drill time) or ``until`` passes (None)."""
    while clock() < until:
        if await cond():
            return clock()
        await asyncio.sleep(every)
    return None


async def failover(
    client: Client,
    *,
    gateway: str,
    service: str,
    fault: Fault,
    count: int,
    duration: float,
    rps: float,
    grpc_method: str = GRPC_HEALTH,
    instances: Sequence[str] = (),
    progress: Progress = _quiet,
) -> Report:
    """Run one failover drill and report on it: under GETs, or unary calls of ``grpc_method``
    for a ``protocol: grpc`` service. The faulted instances are the named ``instances``, else
    ``count`` of those that served the most of the warm-up's traffic. ``progress`` hears the
    phase and the samples so far, twice a second."""
    candidates = await choose_targets(client, service, count, fault, instances)
    origin = time.monotonic()

    def clock() -> float:
        return time.monotonic() - origin

    warmup = max(2.0, duration / 5)
    fault_ends = warmup + duration / 2 if fault != "kill" else None
    protocol = next(iter(candidates.values()))[0].protocol
    method = grpc_method if protocol == "grpc" else None
    traffic = Traffic(gateway.rstrip("/") + "/", service, rps, clock, grpc=method)
    targets: list[Endpoint] = []
    tell = Telling(progress, traffic)

    async def detected() -> bool:
        current = {e.key: e for e in await client.registry.instances()}
        gone = any(
            k not in current or current[k].state != "ready" or current[k].pid != t.pid
            for t in targets
            for k in [t.key]
        )
        return gone or await ejected(client, target_keys)

    async def recovered() -> bool:
        current = {e.key: e for e in await client.registry.instances()}
        return all(
            k in current
            and current[k].state == "ready"
            and (fault != "kill" or current[k].pid != t.pid)
            for t in targets
            for k in [t.key]
        )

    target_keys: set[str] = set()
    events = Events(client.redis, client.keys)  # what the dashboard shows of the drill
    async with task_group() as traffic_tasks:
        load = traffic_tasks.create_task(traffic.run(duration), name="traffic")
        telling = traffic_tasks.create_task(tell.run(), name="progress")
        retried_before = await retried_total(client)
        served_before = await inbound_counts(client)
        drill_id = uuid.uuid4().hex[:8]
        try:
            await asyncio.sleep(warmup)
            served = await inbound_counts(client) - served_before
            if instances:
                targets = [e for found in candidates.values() for e in found]
                targets_served = sum(served[e.key] for e in targets)
            else:
                targets, targets_served = busiest(candidates, served, count)
            target_keys = {e.key for e in targets}
            tell.enter(f"{fault} {', '.join(sorted(target_keys))}")
            await events.add(
                "drill",
                f"failover drill on {service}: {fault} {', '.join(sorted(target_keys))}",
                time.time(),
            )
            await client.config.write(
                [Change(FAULT, k, {"fault": fault, "id": drill_id}) for k in sorted(target_keys)]
            )
            fault_at = clock()
            detected_at = await watch_until(detected, clock, fault_ends or duration)
            tell.enter("detected" if detected_at is not None else "not detected")
            if fault_ends is not None:
                await asyncio.sleep(max(0.0, fault_ends - clock()))
            await client.config.write([Change(FAULT, k, None) for k in sorted(target_keys)])
            tell.enter("recovering")
            recovered_at = await watch_until(recovered, clock, duration)
            tell.enter("recovered" if recovered_at is not None else "not recovered")
        finally:
            if target_keys:
                await client.config.write([Change(FAULT, k, None) for k in sorted(target_keys)])
            else:  # no target: no drill
                load.cancel()
            await asyncio.wait([load])  # its error, if any, is the task group's to raise
            telling.cancel()
    tell.now()
    retried = await retried_total(client) - retried_before
    notes = [
        f"the faulted instances had served {targets_served} of the warm-up's "
        f"{sum(served.values())} requests to {service}"
    ]
    if fault_ends is not None:
        notes.append(f"fault held for {duration / 2:.0f}s, then undone")
    report = summarize(
        traffic.samples,
        fault=fault,
        targets=sorted(target_keys),
        fault_at=fault_at,
        detected_at=detected_at,
        recovered_at=recovered_at,
        retried=retried,
        notes=notes,
    )
    failed = sum(report.errors.values())
    await events.add(
        "drill",
        f"failover drill on {service} over: {report.requests} requests, {failed} failed, "
        + ("recovered" if recovered_at is not None else "not recovered"),
        time.time(),
    )
    return report


async def _registry(client: Client) -> dict[str, Endpoint] | None:
    """The registry now, or None while the store does not answer."""
    try:
        return {e.key: e for e in await client.registry.instances()}
    except StoreError:
        return None


async def redis_outage(
    client: Client,
    *,
    gateway: str,
    service: str,
    redis_pid: int,
    mode: str,
    down: float,
    duration: float,
    rps: float,
    progress: Progress = _quiet,
) -> Report:
    """Take the store away under traffic (``stop``: SIGSTOP for ``down`` seconds; ``kill``:
    SIGKILL, and the supervisor restarts it) and report what clients and the registry saw;
    ``progress`` hears how it goes."""
    before = await _registry(client) or {}
    origin = time.monotonic()

    def clock() -> float:
        return time.monotonic() - origin

    warmup = max(2.0, duration / 5)
    traffic = Traffic(gateway.rstrip("/") + "/", service, rps, clock)
    if mode == "kill":
        down = 0.0
    tell = Telling(progress, traffic)
    async with task_group() as traffic_tasks:
        load = traffic_tasks.create_task(
            traffic.run(max(duration, warmup + down + 5)), name="traffic"
        )
        telling = traffic_tasks.create_task(tell.run(), name="progress")
        await asyncio.sleep(warmup)
        fault_at = clock()
        if mode == "kill":
            tell.enter("store killed")
            os.kill(redis_pid, signal.SIGKILL)
        else:
            tell.enter(f"store stopped for {down:g}s")
            os.kill(redis_pid, signal.SIGSTOP)
            try:
                await asyncio.sleep(down)
            finally:
                os.kill(redis_pid, signal.SIGCONT)
        tell.enter("waiting for the registry")
        returned_at: float | None = None
        complete_at: float | None = None
        missing: set[str] = set()
        deadline = clock() + 60
        while clock() < deadline:
            now = await _registry(client)
            if now is not None:
                returned_at = returned_at or clock()
                gone = {k for k in before if k not in now}
                missing |= gone
                if not gone and all(now[k].state == "ready" for k in before):
                    complete_at = clock()
                    break
            await asyncio.sleep(0.1)
        tell.enter("registry complete" if complete_at is not None else "registry incomplete")
        await load
        telling.cancel()
    tell.now()
    notes = [f"store {'killed' if mode == 'kill' else f'stopped for {down:.0f}s'}"]
    if returned_at is not None and complete_at is not None:
        notes.append(
            f"registry complete {complete_at - returned_at:.2f}s after the store answered again"
        )
    notes.append(
        "no instance was pruned"
        if not missing
        else f"{len(missing)} instances were missing after the store returned: "
        + ", ".join(sorted(missing))
    )
    return summarize(
        traffic.samples,
        fault=f"redis-{mode}",
        targets=[f"redis-server pid {redis_pid}"],
        fault_at=fault_at,
        detected_at=None,
        recovered_at=complete_at,
        retried=0,
        notes=notes,
    )
