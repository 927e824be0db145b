"""One instance slot on a node: spawn the process, wait for health, restart crashes, drain.

Theory of operation — a slot cycles through these states, and every change is reported through
``on_change`` so the agent writes it to the registry at once:

    starting ──health ok──► ready ──process exits──► unhealthy ──backoff──► starting …
        │                     │
        └──── stop() ─────────┴──► draining ──(proxies told; SIGTERM; grace; SIGKILL)──► gone

A slot keeps its id across restarts; each restart gets a new loopback port.

An ``app:`` instance is forked from its revision's pre-warmed template
(:mod:`.template_process`) when one can be had, else started as a fresh interpreter
(``python -m shoal.platform.runtime.serve``), as a ``command:`` instance always is. Either way
the slot holds a :class:`~.instance_process.Started`: a pid whose process group it signals, and
an exit it can await.
``SHOAL_TEMPLATES=0`` in the agent's environment turns templates off.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path

from shoal.mesh.tasks import until_stopped
from shoal.platform.runtime.crash import crash_reason, exit_text, last_lines
from shoal.platform.runtime.health import HealthState, HealthThresholds
from shoal.platform.runtime.health import thresholds as health_thresholds
from shoal.platform.runtime.instance_process import Forked, Spawned, Started
from shoal.platform.runtime.isolation import NO_HOME, run_as
from shoal.platform.runtime.probe import check
from shoal.platform.runtime.reconcile import restart_delay
from shoal.platform.runtime.template_pool import Templates
from shoal.platform.runtime.template_protocol import TemplateError
from shoal.resources.endpoint import Endpoint, InstanceState
from shoal.resources.model import Service
from shoal.store.embedded import free_port

log = logging.getLogger(__name__)

READY_TIMEOUT = 60.0
PROBE_FIRST = 0.005  # seconds between readiness probes at first (a forked app takes ~10 ms)
PROBE_EVERY = 0.1  # ... growing with the time waited, up to this


def probe_delay(waited: float) -> float:
    """Seconds until the next readiness probe, ``waited`` seconds after the start: a tenth of
    the time waited (so readiness is seen at most ~10% late), within [PROBE_FIRST,
    PROBE_EVERY]. A refused connect is cheap, but a slow starter is not probed 200 times/s."""
    return min(PROBE_EVERY, max(PROBE_FIRST, waited / 10))


def templates_enabled(env: Mapping[str, str] = os.environ) -> bool:
    """False when ``SHOAL_TEMPLATES`` is ``0`` (or false/no/off): start every instance fresh."""
    return env.get("SHOAL_TEMPLATES", "1").strip().lower() not in ("0", "false", "no", "off")


INHERITED = frozenset({"PATH", "HOME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "PYTHONPATH"})
"""What an instance inherits from the node's environment (and ``LC_*``): never the platform's
own settings (``SHOAL_HOME``, the store URL and its password, a join token)."""


PLATFORM_BIN = os.path.dirname(sys.executable)
"""Put first on an instance's ``PATH``: a ``command:`` of ``python3`` runs the Python Shoal runs
on, with the packages it was installed with (as an ``app:`` instance does)."""


def inherited_env(env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """The part of ``env`` an instance inherits: :data:`INHERITED` and the locale, with
    :data:`PLATFORM_BIN` first on ``PATH``."""
    inherited = {k: v for k, v in env.items() if k in INHERITED or k.startswith("LC_")}
    path = [p for p in inherited.get("PATH", "/usr/bin:/bin").split(":") if p != PLATFORM_BIN]
    inherited["PATH"] = ":".join([PLATFORM_BIN, *path])
    return inherited


def template_env(service: Service, user: int | None = None) -> dict[str, str]:
    """The environment of a revision's template, run as ``user`` (None: the platform's): what
    all its instances on this node share. A forked instance gets its own whole environment
    (``PORT``, ``SHOAL_INSTANCE``, ``SHOAL_MESH_URL``) before it imports the app's own code."""
    return {
        **inherited_env(),
        **({} if user is None else {"HOME": NO_HOME}),
        **dict(service.env),
        "SHOAL_SERVICE": service.name,
        "SHOAL_REVISION": service.revision,
    }


class InstanceSlot:
    """Runs one instance of ``service`` until stopped; restarts it when it crashes."""

    def __init__(
        self,
        service: Service,
        *,
        node: str,
        mesh_url: Callable[[], Awaitable[str]],
        log_dir: Path,
        on_change: Callable[[], None],
        rng: random.Random,
        thresholds: HealthThresholds | None = None,
        templates: Templates | None = None,
        user: int | None = None,
    ) -> None:
        self.service = service
        self.user = user  # the uid its processes run as (None: the platform's)
        self._templates = templates  # the agent's; None: always a fresh interpreter
        self.thresholds = thresholds or health_thresholds(service.health, None)
        self.id = uuid.uuid4().hex[:8]
        self.node = node
        self._mesh_url = mesh_url  # the outbound listener's URL, once the router has one
        self.mesh_url = ""
        self.log_dir = log_dir
        self.on_change = on_change
        self.rng = rng
        self.created = time.monotonic()
        self.state: InstanceState = "starting"
        self.port = 0
        self.pid: int | None = None
        self._process: Started | None = None
        self._stopping = asyncio.Event()
        self.log = log_dir / f"{service.name}-{service.revision}-{self.id}.log"
        self._timed_out = False  # the last run was killed for not getting ready in time
        # How its process last ended (see shoal.platform.runtime.crash), for the registry.
        self.restarts = 0
        self.reason: str | None = None
        self.retry_at: float | None = None  # when the next start is due, while backing off
        self.exit: str | None = None
        self.output: str | None = None

    @property
    def revision_key(self) -> str:
        """``service/revision`` of what this slot runs."""
        return self.service.key

    def endpoint(self) -> Endpoint | None:
        """The registry record of this slot, or None before its first port is chosen."""
        if not self.port:
            return None
        return Endpoint(
            id=self.id,
            service=self.service.name,
            revision=self.service.revision,
            node=self.node,
            address="127.0.0.1",
            port=self.port,
            labels=tuple(sorted(self.service.instance_labels().items())),
            weight=self.service.weight,
            state=self.state,
            pid=self.pid,
            mtls=True,
            protocol=self.service.protocol,
            restarts=self.restarts,
            reason=self.reason,
            exit=self.exit,
            output=self.output,
            retry_at=self.retry_at,
        )

    def _set(self, state: InstanceState) -> None:
        if state != self.state:
            self.state = state
            self.on_change()

    def _argv(self) -> list[str]:
        s = self.service
        if s.app is not None:
            argv = [
                sys.executable,
                "-m",
                "shoal.platform.runtime.serve",
                s.app,
                "--port",
                str(self.port),
            ]
            return argv + (["--workdir", s.workdir] if s.workdir else [])
        assert s.command is not None
        port = str(self.port)
        return [a.replace("${PORT}", port).replace("$PORT", port) for a in s.command]

    def _env(self) -> dict[str, str]:
        return {
            **template_env(self.service, self.user),
            "PORT": str(self.port),
            "SHOAL_INSTANCE": self.id,
            "SHOAL_MESH_URL": self.mesh_url,
        }

    async def run(self) -> None:
        """Keep an instance running until :meth:`stop`; returns once stopped."""

        async def outbound_url() -> str:
            return await self._mesh_url()

        mesh_url = await until_stopped(outbound_url(), self._stopping)
        if mesh_url is None or self._stopping.is_set():
            return
        self.mesh_url = mesh_url
        failures = 0
        while not self._stopping.is_set():
            healthy = await self._run_once()
            if self._stopping.is_set():
                break
            failures = 0 if healthy else failures + 1
            delay = restart_delay(max(1, failures), self.rng)
            self.retry_at = time.time() + delay
            self._ended(healthy, failures)
            self._set("unhealthy")
            log.warning(
                "%s/%s exited (%s, %s); restarting in %.2fs",
                self.service.key,
                self.id,
                self.exit or "exit status unknown",
                self.reason,
                delay,
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._stopping.wait()

    def _ended(self, became_ready: bool, failures: int) -> None:
        """Record how the last run ended (published with the next state change)."""
        self.restarts += 1
        self.exit = exit_text(self._process.returncode if self._process is not None else None)
        self.output = last_lines(self.log) or None
        self.reason = crash_reason(
            became_ready=became_ready,
            timed_out=self._timed_out,
            failures=failures,
            output=self.output or "",
        )

    async def _run_once(self) -> bool:
        """Start the process, mark it ready when healthy, wait for it to exit.

        Returns whether it had become ready (a crash loop before ready backs off harder).
        """
        self.port = free_port()
        self.retry_at = None
        self.log_dir.mkdir(parents=True, exist_ok=True)
        logfile = self.log
        self._timed_out, self._process = False, None
        process = await self._fork(logfile)
        if process is None:
            process = await self._spawn(logfile)
        if process is None:
            return False
        self._process = process
        self.pid = process.pid
        self._set("starting")
        self.on_change()  # the new port and pid
        exited = asyncio.ensure_future(process.wait())
        stopping = asyncio.ensure_future(self._stopping.wait())
        checks: asyncio.Future[None] | None = None
        try:
            ready = await self._wait_ready(exited)
            if ready:
                self._set("ready")
                checks = asyncio.ensure_future(self._health_checks())
            await asyncio.wait([exited, stopping], return_when=asyncio.FIRST_COMPLETED)
            return ready
        finally:
            helpers = [t for t in (checks, stopping, exited) if t is not None]
            for task in helpers:
                # While stopping, the process is being ended (by stop(), or by _wait_ready for
                # one spawned as stop() began): wait for its exit, so no child outlives its slot.
                if task is not exited or not self._stopping.is_set():
                    task.cancel()
            for result in await asyncio.gather(*helpers, return_exceptions=True):
                if isinstance(result, Exception):  # a bug in the health checks: say so
                    log.error("%s/%s: %r", self.service.key, self.id, result, exc_info=result)
            process.close()

    async def _fork(self, logfile: Path) -> Started | None:
        """An ``app:`` instance forked from the revision's template, or None (start it fresh)."""
        templates = self._templates
        if self.service.app is None or templates is None or not templates_enabled():
            return None
        try:
            pid, pidfd = await templates.spawn(
                self.service,
                template_env=template_env(self.service, self.user),
                env=self._env(),
                port=self.port,
                log=logfile,
                user=self.user,
            )
        except TemplateError as e:
            log.warning("%s/%s: starting without a template: %s", self.service.key, self.id, e)
            return None
        return Forked(pid, pidfd)

    async def _spawn(self, logfile: Path) -> Started | None:
        """A fresh process: the runtime for an ``app:`` instance, the command otherwise."""
        with logfile.open("ab") as out:
            try:
                process = await asyncio.create_subprocess_exec(
                    *self._argv(),
                    env=self._env(),
                    cwd=self.service.workdir or None,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    **run_as(self.user, self.service.workdir),
                )
            except OSError as e:
                log.error("%s: cannot start %s: %s", self.service.key, self._argv()[0], e)
                return None
        return Spawned(process)

    async def _health_checks(self) -> None:
        """Probe the running instance; flip it between ready and unhealthy by the thresholds."""
        loop = asyncio.get_running_loop()
        state = HealthState(self.thresholds, now=loop.time(), rng=self.rng)
        while True:
            await asyncio.sleep(max(0.0, state.next_deadline() - loop.time()))
            state.thresholds = self.thresholds  # as the DestinationRule says now
            ok = await check(
                "127.0.0.1", self.port, self.service.health, timeout=self.thresholds.timeout
            )
            transition = state.on_result(ok, loop.time(), self.rng)
            if transition is not None and self.state != "draining":
                log.warning(
                    "%s/%s is %s after %d probes",
                    self.service.key,
                    self.id,
                    transition.state,
                    transition.streak,
                )
                self._set(transition.state)

    async def _wait_ready(self, exited: asyncio.Future[None]) -> bool:
        health = self.service.health
        started = time.monotonic()
        deadline = started + READY_TIMEOUT
        while time.monotonic() < deadline and not exited.done() and not self._stopping.is_set():
            if await check("127.0.0.1", self.port, health, timeout=health.timeout):
                return True
            await asyncio.sleep(probe_delay(time.monotonic() - started))
        if not exited.done():
            self._timed_out = not self._stopping.is_set()
            self._signal(signal.SIGKILL)
        return False

    def _signal(self, sig: signal.Signals) -> None:
        if self._process is not None and self._process.running:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self._process.pid, sig)

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the instance's process group (drills)."""
        self._signal(sig)

    async def stop(self, *, drain_delay: float, grace: float) -> None:
        """Drain: announce draining, let proxies stop sending, SIGTERM, wait, SIGKILL."""
        self._stopping.set()
        self._set("draining")
        if self._process is not None and self._process.running:
            await asyncio.sleep(drain_delay)
            self._signal(signal.SIGTERM)
            try:
                async with asyncio.timeout(grace):
                    await self._process.wait()
            except TimeoutError:
                self._signal(signal.SIGKILL)
                await self._process.wait()
