"""``shoal up``: the embedded Redis, controller, node and gateway under one supervisor.

Each component is its own OS process (``python -m shoal controller|node|gateway``) whose
output goes to ``<state>/logs/<name>.log`` (cut at 10 MiB, the previous part kept as ``.1``);
one that dies is restarted with backoff. SIGINT or SIGTERM stops them in order — gateway, node
(which drains its instances), controller — and then Redis, which flushes its AOF on the way
out. None outlives ``shoal up``, even killed (:func:`~shoal.store.children.die_with_parent`);
``<state>/up.pid`` says which one runs, for ``shoal down`` and the next ``shoal up``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from shoal.errors import PlatformError
from shoal.mesh.access_log import MAX_BYTES, cut_file
from shoal.platform.runtime.reconcile import restart_delay
from shoal.store.children import die_with_parent
from shoal.store.embedded import EmbeddedRedis, recorded_pid

log = logging.getLogger(__name__)
CUT_LOGS_EVERY = 60.0  # seconds; a component's log is cut as an instance's (.runtime.log_files)


@dataclass(slots=True)
class Child:
    """One supervised component process."""

    name: str
    argv: list[str]
    log_path: Path
    env: dict[str, str]
    process: subprocess.Popen[bytes] | None = None
    failures: int = 0
    restart_at: float = 0.0
    started_at: float = 0.0

    def start(self) -> None:
        """Spawn the process, appending its output to its log file."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                env=self.env,
                start_new_session=True,  # Ctrl-C in the terminal reaches only 'shoal up'
                preexec_fn=die_with_parent(),  # no component outlives it, even on SIGKILL
            )
        self.started_at = time.monotonic()

    def stop(self, timeout: float) -> None:
        """SIGTERM, wait up to ``timeout``, then SIGKILL."""
        p = self.process
        if p is None or p.poll() is not None:
            return
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


@dataclass(slots=True)
class Supervisor:
    """Starts, watches and stops the platform's processes on this host."""

    state_dir: Path
    redis_url: str | None
    component_args: dict[str, list[str]]
    env: dict[str, str]
    embedded: EmbeddedRedis | None = None
    children: list[Child] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    stopped: threading.Event = field(default_factory=threading.Event)
    rng: random.Random = field(default_factory=random.Random)
    # Called once the store is up, before any component starts: extra environment for them.
    on_store: Callable[[str], dict[str, str]] | None = None
    prefix: str = "shoal:"  # the cluster's keys in the embedded Redis

    def start(self) -> str:
        """Start Redis (unless a URL was given) and every component; return the store URL."""
        url = self.redis_url
        if url is None:
            self.embedded = EmbeddedRedis(state_dir=self.state_dir, prefix=self.prefix)
            url = self.embedded.start()
        if self.on_store is not None:
            self.env = {**self.env, **self.on_store(url)}
        logs = self.state_dir / "logs"
        for name, extra in self.component_args.items():
            # The URL (with a password) goes in the environment: command lines are public. With
            # the embedded store each component kind has its own user (shoal.store.acl).
            own = url if self.embedded is None else self.embedded.url_for(name)
            argv = [sys.executable, "-m", "shoal", name, *extra]
            child = Child(name, argv, logs / f"{name}.log", {**self.env, "SHOAL_REDIS_URL": own})
            child.start()
            self.children.append(child)
        return url

    def watch(self, on_event: Callable[[str], None]) -> None:
        """Restart children that die, until :meth:`stop` is called; return once it is done
        (the children this thread started die with it: :func:`die_with_parent`)."""
        try:
            self._restart_dead(on_event)
        finally:
            self.stopped.wait()

    def _restart_dead(self, on_event: Callable[[str], None]) -> None:
        cut_at = 0.0  # when next to look at the components' log sizes
        while not self.stopping.wait(0.2):
            now = time.monotonic()
            if now >= cut_at:
                cut_at = now + CUT_LOGS_EVERY
                for child in self.children:
                    with contextlib.suppress(OSError):
                        if child.log_path.stat().st_size > MAX_BYTES:
                            cut_file(child.log_path)
            redis = self.embedded
            if redis is not None and (redis.process is None or redis.process.poll() is not None):
                if redis.process is not None:
                    on_event(
                        f"redis-server exited with code {redis.process.returncode}; restarting "
                        "it on the same port (its AOF has every acknowledged write)"
                    )
                    redis.process = None
                try:
                    redis.start()
                except PlatformError as e:
                    on_event(f"could not restart redis-server: {e}")
            for child in self.children:
                p = child.process
                if p is None or p.poll() is None:
                    if p is not None and child.failures and now - child.started_at > 30:
                        child.failures = 0
                    continue
                if child.restart_at == 0.0:
                    child.failures += 1
                    child.restart_at = now + restart_delay(child.failures, self.rng)
                    on_event(
                        f"{child.name} exited with code {p.returncode}; restarting "
                        f"(see {child.log_path})"
                    )
                elif now >= child.restart_at:
                    child.restart_at = 0.0
                    child.start()

    def stop(self) -> None:
        """Stop components in order (gateway, node, controller), then Redis."""
        self.stopping.set()
        order = {"gateway": 0, "node": 1, "controller": 2}
        for child in sorted(self.children, key=lambda c: order.get(c.name, 9)):
            with contextlib.suppress(Exception):
                child.stop(timeout=40.0 if child.name == "node" else 10.0)
        if self.embedded is not None:
            self.embedded.stop()
        self.stopped.set()


def wait_listening(port: int, timeout: float, stopping: Callable[[], bool]) -> bool:
    """Whether something accepts connections on 127.0.0.1:``port`` within ``timeout`` seconds
    (False also when ``stopping()`` turns true meanwhile)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not stopping():
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.5):
            return True
        time.sleep(0.1)
    return False


def wait_previous(state_dir: Path, ports: dict[str, tuple[str, int]], timeout: float) -> None:
    """After a ``shoal up`` that was killed (its components got SIGTERM as it died): wait up to
    ``timeout`` seconds for them to stop — its Redis gone, the ``ports`` free — then return, or
    raise PlatformError saying what still holds on."""
    deadline = time.monotonic() + timeout
    while True:
        late = time.monotonic() >= deadline
        redis = recorded_pid(state_dir)
        if redis is None:
            try:
                check_ports(ports)
                return
            except PlatformError:
                if late:
                    raise
        elif late:
            raise PlatformError(f"the Redis of a previous 'shoal up' (pid {redis}) still runs")
        time.sleep(0.2)


def check_ports(ports: dict[str, tuple[str, int]]) -> None:
    """Raise PlatformError naming every ``what: (host, port)`` that cannot be bound now, so
    ``shoal up`` stops before starting anything rather than restarting a child forever."""
    taken = []
    for what, (host, port) in ports.items():
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError as e:
                taken.append(f"{what} port {port} ({e.strerror})")
    if taken:
        raise PlatformError(f"cannot listen: {', '.join(taken)}; is another Shoal running?")


UP_FILE = "up.pid"
"""``<state>/up.pid``: the pid and start time of the ``shoal up`` running for that state dir."""


def _start_time(pid: int) -> str | None:
    """When process ``pid`` started (clock ticks after boot: a recycled pid has another), or
    None when there is no such process, or it has exited (a zombie its parent has not reaped)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()  # fields 1-2 end at the last ")"
    return None if fields[0] == "Z" else fields[19]  # fields 3 and 22: state, start time


def running_up(state_dir: Path) -> int | None:
    """The pid of the ``shoal up`` running for ``state_dir``, or None."""
    try:
        pid, started = (state_dir / UP_FILE).read_text().split()
    except (OSError, ValueError):
        return None
    return int(pid) if _start_time(int(pid)) == started else None


def record_up(state_dir: Path) -> bool:
    """Say that this process is the ``shoal up`` of ``state_dir``; return whether a previous
    one ended without saying it stopped (killed: its children may still be stopping)."""
    path = state_dir / UP_FILE
    crashed = path.exists()
    path.write_text(f"{os.getpid()} {_start_time(os.getpid())}\n")
    return crashed


def forget_up(state_dir: Path) -> None:
    """This ``shoal up`` has stopped everything it started."""
    if running_up(state_dir) == os.getpid():
        (state_dir / UP_FILE).unlink()


def wait_stopped(pid: int, timeout: float) -> bool:
    """Whether process ``pid`` (not a child of this one) is gone within ``timeout`` seconds."""
    started = _start_time(pid)
    deadline = time.monotonic() + timeout
    while started is not None and _start_time(pid) == started:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.1)
    return True
