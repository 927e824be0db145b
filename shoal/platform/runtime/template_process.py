"""Pre-warmed template processes: an ``app:`` instance is forked, not started from scratch.

A fresh instance spends ~300 ms importing hypercorn, uvloop and the app's dependencies before it
serves. A template has imported them already and forks an instance on demand, which serves in
~10 ms. One template runs per service revision per agent; the agent starts it on first use and
keeps it, so a revision scaled to zero comes back fast.

The template process (``python -m shoal.platform.runtime.template_process MODULE:ATTR --control
PATH``):

1. binds its control socket at PATH (mode 0600) at once, so the agent can connect early;
2. imports the runtime (hypercorn, uvloop), then imports the app in a throwaway child that
   reports the modules it pulled in, and imports those itself — except the user's own code (the
   app's package and files under the workdir), which every instance imports for itself with its
   own environment (``SHOAL_INSTANCE``, ``PORT``), exactly as a fresh interpreter would. An app
   that cannot be imported fails here, once;
3. refuses to serve (exit 3) if it has more than one thread: forking one is unsafe;
4. accepts one connection, from its parent (checked with ``SO_PEERCRED``), removes PATH and
   serves requests until that peer goes away or SIGTERM/SIGINT, then exits without touching
   the instances it forked (their slots in the agent own and stop them).

Protocol, one ``SOCK_SEQPACKET`` message each way (JSON): the template says
``{"ready": true}`` once warm; then per request ``{"port": N, "env": {...}, "log": PATH}`` →
``{"pid": P}`` with a pidfd of the new process attached (``SCM_RIGHTS``, opened by the parent
before it could reap the child, so it can never name a recycled pid), or ``{"error": "..."}``.

The forked child calls ``setsid()`` before the reply is sent (so ``killpg(pid)`` reaches it at
once), points stdin at /dev/null and stdout/stderr at the log file, drops the template's signal
handlers and sockets, replaces its environment, re-seeds ``random`` and then runs what
``python -m shoal.platform.runtime.serve`` runs, returning through ``main`` so that it exits like
any interpreter (atexit handlers, non-daemon threads). The template has no event loop and no thread
when it forks: its accept loop is ``select.poll`` over blocking sockets, and signals arrive
through a wakeup socket. It reaps every child on SIGCHLD, so none stays a zombie.

The agent side is :mod:`.template_pool`; a failure to start or use a template is a
:class:`TemplateError`, and the caller falls back to a plain interpreter.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import logging
import os
import random
import select
import signal
import socket
import struct
import sys
import sysconfig
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from shoal.errors import PlatformError
from shoal.resources.model import Service

log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20  # bytes; a request carries the instance's whole environment
START_TIMEOUT = 60.0  # seconds for a template to import everything and say it is ready
SPAWN_TIMEOUT = 10.0  # seconds for a fork request to be answered
CLOSE_TIMEOUT = 5.0  # seconds for a template to exit once its agent has hung up
CONNECT_EVERY = 0.01  # seconds between attempts to reach a template's control socket
RETRY_AFTER = 30.0  # seconds before a revision whose template failed gets another one
EXIT_UNUSABLE = 3  # the template's exit code when it cannot serve (import error, threads)


class TemplateError(PlatformError):
    """A template could not be started or could not fork: start the instance without one."""


# ---------------------------------------------------------------------------------------------
# Pure decisions


def warmable(
    modules: Mapping[str, str | None], *, app: str, root: str, installed: Sequence[str]
) -> list[str]:
    """The modules (in import order) a template imports ahead of its instances.

    ``modules`` maps what importing ``app`` pulled in to its file (or None). Left out is the
    user's own code, which every instance imports for itself: the app's top-level package and
    modules under ``root`` (the workdir) that are not under one of the ``installed`` roots
    (stdlib, site-packages).
    """
    top = app.partition(":")[0].split(".")[0]

    def users(name: str, location: str | None) -> bool:
        if name in ("__main__", top) or name.startswith(top + "."):
            return True
        if location is None or any(_under(location, p) for p in installed):
            return False
        return _under(location, root)

    return [name for name, location in modules.items() if not users(name, location)]


def _under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


@dataclass(frozen=True, slots=True, kw_only=True)
class SpawnRequest:
    """One fork request: the instance's port, its whole environment and its log file."""

    port: int
    env: dict[str, str]
    log: str


def parse_request(data: bytes) -> SpawnRequest:
    """Decode a request message; ValueError names the bad field."""
    doc = json.loads(data)
    if not isinstance(doc, dict):
        raise ValueError(f"request: expected an object, got {type(doc).__name__}")
    port, env, logfile = doc.get("port"), doc.get("env"), doc.get("log")
    if not isinstance(port, int) or isinstance(port, bool) or not 0 < port < 65536:
        raise ValueError(f"port: expected a TCP port, got {port!r}")
    if not isinstance(env, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in env.items()
    ):
        raise ValueError("env: expected an object of strings")
    if not isinstance(logfile, str) or not os.path.isabs(logfile):
        raise ValueError(f"log: expected an absolute path, got {logfile!r}")
    return SpawnRequest(port=port, env=env, log=logfile)


def fingerprint(service: Service) -> str:
    """What a revision's template depends on: a change (a revision re-applied under the same
    name with another app, workdir or env) means a new template."""
    doc = json.dumps([service.app, service.workdir, sorted(service.env)])
    return hashlib.sha256(doc.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------------------------
# The template process


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point; returns in the template when it is done, and in every forked
    instance after that instance has served (``serve.serve_forever``)."""
    parser = argparse.ArgumentParser(prog="shoal-template")
    parser.add_argument("app")
    parser.add_argument("--control", required=True)
    parser.add_argument("--workdir")
    args = parser.parse_args(argv)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s template %(levelname)s: %(message)s"))
    log.addHandler(handler)  # not the root logger: an instance configures that itself
    log.setLevel(logging.INFO)
    log.propagate = False
    comm = _rename("shoal-template")  # tells it from its instances in ps -o comm, top
    child = _template(args.app, args.control, args.workdir)
    if child is None:
        return
    _rename(comm)
    log.removeHandler(handler)
    # The forked instance, with the template's sockets closed: become what serve.main runs.
    from shoal.platform.runtime import serve

    os.environ.clear()
    os.environ.update(child.env)
    random.seed()  # also done by ``random`` at fork; any other RNG state is shared (see README)
    serve.serve_forever(serve.load_app(args.app), child.port)


def _template(app: str, control: str, workdir: str | None) -> SpawnRequest | None:
    """Warm up, then serve the agent; returns None to exit, or, in a forked child, its request."""
    listener = _listen(control)
    try:
        if workdir:
            sys.path.insert(0, workdir)
        from shoal.platform.runtime import serve  # hypercorn, h11, h2, wsproto …

        with contextlib.suppress(ImportError):
            import uvloop  # noqa: F401

        started = time.monotonic()
        count = _warm(app, root=workdir or os.getcwd(), load_app=serve.load_app)
        threads = _threads()
        if threads != 1:
            raise TemplateError(f"{threads} threads after importing {app}: forking is unsafe")
        log.info("warm in %.0f ms (%d modules imported ahead)", elapsed_ms(started), count)
        with _Signals() as signals:
            conn = _accept_agent(listener, signals)
            if conn is None:
                return None
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(control)
            with conn:
                return _Server(conn, signals).run()
    except TemplateError as e:
        log.error("%s", e)
        sys.exit(EXIT_UNUSABLE)
    finally:
        if listener.fileno() != -1:  # not yet handed over: only the template gets here
            listener.close()
            with contextlib.suppress(OSError):
                os.unlink(control)


def _rename(name: str) -> str:
    """Set this process's name (``/proc/self/comm``); the previous one."""
    try:
        with open("/proc/self/comm", "r+") as comm:
            old = comm.read().strip()
            comm.seek(0)
            comm.write(name[:15])
    except OSError:  # pragma: no cover - no /proc
        return name
    return old


def _listen(path: str) -> socket.socket:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    old = os.umask(0o177)  # the socket file is 0600 from the start
    try:
        listener.bind(path)
    finally:
        os.umask(old)
    listener.listen(1)
    return listener


def _warm(app: str, *, root: str, load_app: Callable[[str], Any]) -> int:
    """Import what importing ``app`` imports, minus the user's code; how many modules."""
    names = warmable(_imports_of(app, load_app), app=app, root=root, installed=_installed())
    count = 0
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # a shim or lazy alias; the instance imports it if it needs it
            log.debug("not warming %s: %s", name, e)
        else:
            count += 1
    return count


def _imports_of(app: str, load_app: Callable[[str], Any]) -> dict[str, str | None]:
    """Import ``app`` in a throwaway child: the modules that pulled in, with their files."""
    read_end, write_end = os.pipe()
    _flush()
    pid = os.fork()
    if pid == 0:  # the probe: reports and exits, never returns
        code = 1
        try:
            os.close(read_end)
            before = set(sys.modules)
            load_app(app)
            new = {n: _location(m) for n, m in list(sys.modules.items()) if n not in before}
            with os.fdopen(write_end, "w") as out:
                json.dump(new, out)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            _flush()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as report:
        data = report.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise TemplateError(f"importing {app} failed (exit code {code}); traceback above")
    found: dict[str, str | None] = json.loads(data)
    return found


def _location(module: ModuleType) -> str | None:
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        return os.path.abspath(file)
    path = getattr(module, "__path__", None)  # a namespace package
    first = next(iter(path), None) if path is not None else None
    return os.path.abspath(first) if isinstance(first, str) else None


def _installed() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})


def _threads() -> int:
    try:
        return len(os.listdir("/proc/self/task"))  # C threads too, not only Python's
    except OSError:  # pragma: no cover - no /proc
        import threading

        return threading.active_count()


def _redirect(logfile: str) -> None:
    """stdin from /dev/null, stdout and stderr appended to ``logfile``: as the agent does."""
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open(logfile, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(out, 2)
    os.close(null)
    os.close(out)


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()


def elapsed_ms(since: float) -> float:
    """Milliseconds since ``since`` (a ``time.monotonic()`` reading)."""
    return (time.monotonic() - since) * 1000


class _Signals:
    """SIGCHLD, SIGTERM and SIGINT as bytes on a socket that the accept loop polls."""

    WATCHED = (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT)

    def __enter__(self) -> _Signals:
        self.read, self.write = socket.socketpair()
        self.read.setblocking(False)
        self.write.setblocking(False)
        signal.set_wakeup_fd(self.write.fileno(), warn_on_full_buffer=False)
        for sig in self.WATCHED:
            signal.signal(sig, _ignore)  # a Python handler makes the C handler write the byte
        return self

    def pending(self) -> set[int]:
        """The signals that arrived since the last call."""
        try:
            return set(self.read.recv(256))
        except BlockingIOError:
            return set()

    def restore(self) -> None:
        """Back to a fresh interpreter's handlers (in a forked instance)."""
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)

    def __exit__(self, *exc: object) -> None:
        signal.set_wakeup_fd(-1)
        self.read.close()
        self.write.close()


def _ignore(signum: int, frame: object) -> None:
    """The work happens in the accept loop, which the wakeup byte wakes."""


def _accept_agent(listener: socket.socket, signals: _Signals) -> socket.socket | None:
    """The parent's connection; None when told to stop, or orphaned, before it came."""
    parent = os.getppid()
    poller = select.poll()
    poller.register(listener, select.POLLIN)
    poller.register(signals.read, select.POLLIN)
    while True:
        ready = {fd for fd, _ in poller.poll(1000)}
        if signals.pending() & {signal.SIGTERM, signal.SIGINT} or os.getppid() != parent:
            return None
        if listener.fileno() not in ready:
            continue
        conn, _ = listener.accept()
        creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
        peer, _, _ = struct.unpack("3i", creds)
        if peer == parent:
            conn.sendall(json.dumps({"ready": True}).encode())
            return conn
        log.warning("refused a control connection from pid %d (not the agent)", peer)
        conn.close()


class _Server:
    """The request loop: one fork per request, reaping on SIGCHLD, until the agent hangs up."""

    def __init__(self, conn: socket.socket, signals: _Signals) -> None:
        self.conn = conn
        self.signals = signals
        self.forked = 0

    def run(self) -> SpawnRequest | None:
        poller = select.poll()
        poller.register(self.conn, select.POLLIN)
        poller.register(self.signals.read, select.POLLIN)
        try:
            while True:
                ready = {fd for fd, _ in poller.poll()}
                pending = self.signals.pending()
                if signal.SIGCHLD in pending:
                    self._reap()
                if pending & {signal.SIGTERM, signal.SIGINT}:
                    log.info("stopping on a signal (%d instances forked)", self.forked)
                    return None
                if self.conn.fileno() not in ready:
                    continue
                try:
                    data, _, flags, _ = self.conn.recvmsg(MAX_MESSAGE)
                except OSError:
                    data = b""
                if not data:
                    log.info("the agent hung up; exiting (%d instances forked)", self.forked)
                    return None
                child = self._serve(data, truncated=bool(flags & socket.MSG_TRUNC))
                if child is not None:
                    return child
        except OSError as e:  # the agent went away mid-reply
            log.info("control socket: %s; exiting", e)
            return None
        finally:
            self._reap()

    def _serve(self, data: bytes, *, truncated: bool) -> SpawnRequest | None:
        try:
            if truncated:
                raise ValueError(f"request longer than {MAX_MESSAGE} bytes")
            request = parse_request(data)
        except ValueError as e:
            self.conn.sendall(json.dumps({"error": f"bad request: {e}"}).encode())
            return None
        try:
            pid = self._fork(request.log)
        except OSError as e:
            self.conn.sendall(json.dumps({"error": f"fork failed: {e}"}).encode())
            return None
        if pid == 0:
            return request
        self.forked += 1
        pidfd = os.pidfd_open(pid)  # before any reap: it names this process and no other
        try:
            socket.send_fds(self.conn, [json.dumps({"pid": pid}).encode()], [pidfd])
        finally:
            os.close(pidfd)
        return None

    def _fork(self, logfile: str) -> int:
        """Fork; the child has its own session before the parent returns its pid."""
        session_read, session_write = os.pipe()
        _flush()
        try:
            pid = os.fork()
        except OSError:
            os.close(session_read)
            os.close(session_write)
            raise
        if pid == 0:
            try:
                os.setsid()
                os.close(session_write)
                os.close(session_read)
                self.signals.restore()
                _redirect(logfile)
            except BaseException:  # never back into the template's loop
                traceback.print_exc()
                _flush()
                os._exit(1)
            return 0
        os.close(session_write)
        os.read(session_read, 1)  # EOF once the child has closed its end (or died)
        os.close(session_read)
        return pid

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            log.info("instance %d exited with code %d", pid, os.waitstatus_to_exitcode(status))


if __name__ == "__main__":
    main()
