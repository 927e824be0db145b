"""The agent's side of pre-warmed templates (:mod:`.template_process`): start one
per revision, ask it to fork instances, stop it.

:class:`Templates` is a registry keyed by revision, owned by the agent (which closes it when it
stops); a failure to start or use a template is a
:class:`~.template_protocol.TemplateError`, and the caller falls back to a fresh
interpreter.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Collection, Mapping
from pathlib import Path
from typing import Any

from shoal.platform.runtime.isolation import run_as
from shoal.platform.runtime.template_protocol import MAX_MESSAGE, TemplateError, elapsed_ms
from shoal.resources.model import Service

log = logging.getLogger(__name__)

START_TIMEOUT = 60.0  # seconds for a template to import everything and say it is ready
SPAWN_TIMEOUT = 10.0  # seconds for a fork request to be answered
CLOSE_TIMEOUT = 5.0  # seconds for a template to exit once its agent has hung up
RETRY_AFTER = 30.0  # seconds before a revision whose template failed gets another one


def fingerprint(service: Service) -> str:
    """What a revision's template depends on: a change (a revision re-applied under the same
    name with another app, workdir or env) means a new template."""
    doc = json.dumps([service.app, service.workdir, sorted(service.env)])
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


class Template:
    """One running template process and its control connection."""

    def __init__(
        self, process: asyncio.subprocess.Process, sock: socket.socket, *, digest: str, log: Path
    ) -> None:
        self.process = process
        self.fingerprint = digest  # what it was started from (see :func:`fingerprint`)
        self.log = log
        self._sock: socket.socket | None = sock
        self._lock = asyncio.Lock()

    @property
    def pid(self) -> int:
        """The template process's pid."""
        return self.process.pid

    @property
    def alive(self) -> bool:
        """Running and connected."""
        return self._sock is not None and self.process.returncode is None

    @classmethod
    async def start(
        cls, service: Service, *, env: Mapping[str, str], log: Path, user: int | None = None
    ) -> Template:
        """Start a template for ``service`` (an app), as ``user`` (None: the agent's own), and
        wait until it has imported everything; ``env`` is its environment (the revision's,
        without per-instance values)."""
        app, workdir = service.app, service.workdir
        if app is None:
            raise TemplateError(f"{service.key} is a command, not an app")
        sock, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = [
            sys.executable,
            "-m",
            "shoal.platform.runtime.template_process",
            app,
            "--control-fd",
            str(theirs.fileno()),
        ]
        if workdir:
            argv += ["--workdir", workdir]
        try:
            with theirs, log.open("ab") as out:
                process = await asyncio.create_subprocess_exec(
                    *argv,
                    env=dict(env),
                    cwd=workdir or None,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    start_new_session=True,
                    pass_fds=(theirs.fileno(),),
                    **run_as(user, workdir),
                )
        except OSError as e:
            sock.close()
            raise TemplateError(f"cannot start a template: {e}") from e
        sock.setblocking(False)
        try:
            async with asyncio.timeout(START_TIMEOUT):
                hello, fds = await _receive(sock)
            _close_all(fds)
            if hello.get("ready") is not True:
                raise TemplateError(f"unexpected greeting {hello!r}")
            return cls(process, sock, digest=fingerprint(service), log=log)
        except BaseException as e:
            sock.close()
            # A template that hung up is exiting (its log says why); anything else is stopped.
            await _end(process, grace=CLOSE_TIMEOUT if isinstance(e, TemplateError) else 0.0)
            if isinstance(e, TemplateError | OSError | TimeoutError):
                raise TemplateError(
                    f"template for {app} failed (exit code {process.returncode}); see {log}"
                ) from e
            raise

    async def spawn(self, *, port: int, env: Mapping[str, str], log: Path) -> tuple[int, int]:
        """Fork an instance serving ``port`` and writing to ``log``; its pid and a pidfd for it
        (the caller's)."""
        request = json.dumps({"port": port, "env": dict(env)}).encode()
        exchange = asyncio.ensure_future(self._exchange(request, log))
        try:
            return await asyncio.shield(exchange)
        except asyncio.CancelledError:
            # The template may have forked already: end that instance, it would have no owner.
            with contextlib.suppress(BaseException):
                _, pidfd = await exchange
                with contextlib.suppress(OSError):
                    signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                os.close(pidfd)
            raise

    async def _exchange(self, request: bytes, log: Path) -> tuple[int, int]:
        async with self._lock:
            if self._sock is None:
                raise TemplateError("the template is closed")
            try:
                async with asyncio.timeout(SPAWN_TIMEOUT):
                    with log.open("ab") as out:  # one message: never blocks (SEQPACKET)
                        socket.send_fds(self._sock, [request], [out.fileno()])
                    reply, fds = await _receive(self._sock)
            except (OSError, TimeoutError) as e:
                raise TemplateError(f"template {self.pid}: {e or 'no answer'}") from e
        if "error" in reply or len(fds) != 1 or not isinstance(reply.get("pid"), int):
            _close_all(fds)
            raise TemplateError(f"template {self.pid}: {reply.get('error') or reply!r}")
        return int(reply["pid"]), fds[0]

    async def close(self) -> None:
        """Hang up, so the template exits (its instances live on); kill it if it does not."""
        async with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None
        await _end(self.process, grace=CLOSE_TIMEOUT)


async def _receive(sock: socket.socket) -> tuple[dict[str, Any], list[int]]:
    """One message and the fds attached to it."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, fds, flags = _recvmsg(sock)
        except BlockingIOError:
            readable = loop.create_future()
            loop.add_reader(sock.fileno(), _resolve, readable)
            try:
                await readable
            finally:
                loop.remove_reader(sock.fileno())
            continue
        if not data:
            _close_all(fds)
            raise TemplateError("the template hung up")
        if flags & (socket.MSG_TRUNC | socket.MSG_CTRUNC):
            _close_all(fds)
            raise TemplateError("a truncated message from the template")
        try:
            doc = json.loads(data)
        except ValueError as e:
            _close_all(fds)
            raise TemplateError(f"an unreadable message from the template: {e}") from e
        if not isinstance(doc, dict):
            _close_all(fds)
            raise TemplateError(f"an unexpected message from the template: {doc!r}")
        return doc, fds


def _recvmsg(sock: socket.socket) -> tuple[bytes, list[int], int]:
    """One message, its fds (close-on-exec: ``socket.recv_fds`` drops the flag that says so)
    and its flags."""
    fds = array.array("i")
    data, ancillary, flags, _ = sock.recvmsg(
        MAX_MESSAGE, socket.CMSG_SPACE(fds.itemsize), socket.MSG_CMSG_CLOEXEC
    )
    for level, kind, payload in ancillary:
        if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
            fds.frombytes(payload[: len(payload) - len(payload) % fds.itemsize])
    return data, list(fds), flags


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():  # the reader may fire again before it is removed
        future.set_result(None)


def _close_all(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)


async def _end(process: asyncio.subprocess.Process, *, grace: float) -> None:
    """Give a template ``grace`` seconds to exit (it does when hung up on), then SIGKILL it
    and the probe child it may have (its process group: instances have their own)."""
    if grace > 0:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await process.wait()
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        await process.wait()


class Templates:
    """The templates of one agent: one per revision, started on first use, kept until
    :meth:`close`. A revision whose template failed is not given another for
    ``retry_after`` seconds."""

    def __init__(
        self, *, retry_after: float = RETRY_AFTER, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.retry_after = retry_after
        self.clock = clock
        self._live: dict[str, Template] = {}  # revision key -> its template
        self._locks: dict[str, asyncio.Lock] = {}
        self._failed: dict[str, tuple[str, float]] = {}  # fingerprint -> (why, when)
        self._closed = False

    def running(self) -> dict[str, Template]:
        """The live templates by revision key."""
        return {k: t for k, t in self._live.items() if t.alive}

    async def spawn(
        self,
        service: Service,
        *,
        template_env: Mapping[str, str],
        env: Mapping[str, str],
        port: int,
        log: Path,
        user: int | None = None,
    ) -> tuple[int, int]:
        """Fork an instance of ``service`` from its template (started as ``user`` with
        ``template_env`` if there is none yet): pid and pidfd. TemplateError when no template
        can do it."""
        template = await self.get(service, template_env, log_dir=log.parent, user=user)
        try:
            return await template.spawn(port=port, env=env, log=log)
        except TemplateError:
            if self._live.get(service.key) is template:
                del self._live[service.key]
            await template.close()
            raise

    async def get(
        self,
        service: Service,
        template_env: Mapping[str, str],
        *,
        log_dir: Path,
        user: int | None = None,
    ) -> Template:
        """The running template of ``service``'s revision, started as ``user`` if needed; its
        log goes to ``log_dir`` (which exists)."""
        key = service.key
        digest = fingerprint(service)
        async with self._locks.setdefault(key, asyncio.Lock()):
            if self._closed:
                raise TemplateError("the agent's templates are closed")
            current = self._live.pop(key, None)
            if current is not None and current.alive and current.fingerprint == digest:
                self._live[key] = current
                return current
            if current is not None:  # dead, or the revision's spec changed
                await current.close()
            failed = self._failed.get(digest)
            if failed is not None and self.clock() - failed[1] < self.retry_after:
                raise TemplateError(failed[0])
            started = time.monotonic()
            try:
                template = await Template.start(
                    service,
                    env=template_env,
                    user=user,
                    log=log_dir / f"template-{service.name}-{service.revision}.log",
                )
            except TemplateError as e:
                self._failed[digest] = (str(e), self.clock())
                raise
            self._failed.pop(digest, None)
            if self._closed:  # closed while it started
                await template.close()
                raise TemplateError("the agent's templates are closed")
            log.info("template for %s ready in %.0f ms", key, elapsed_ms(started))
            self._live[key] = template
            return template

    async def retire(self, keep: Collection[str]) -> None:
        """Stop the templates of revisions whose key is not in ``keep`` (deleted revisions);
        their instances live on until their slots stop them."""
        gone = [self._live.pop(key) for key in list(self._live) if key not in keep]
        await asyncio.gather(*(t.close() for t in gone))

    async def close(self) -> None:
        """Stop every template (not the instances forked from them). Idempotent."""
        self._closed = True
        live, self._live = list(self._live.values()), {}
        await asyncio.gather(*(t.close() for t in live))
