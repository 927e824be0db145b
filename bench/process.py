"""Server processes: starting them pinned to a core, waiting for readiness, measuring, stopping.

Every server is started in its own session (``start_new_session=True``), so that it and all
its children form one process group that ``RunningServer.stop`` can signal at once: a server
never outlives the harness, even on Ctrl-C.

CPU time of a server is read from ``/proc``: for every live process of its tree, utime + stime
(the process's own threads) + cutime + cstime (its children that exited and were reaped).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

# The server under test gets core 1; the load generator (and the backend of proxy rows) core 0.
SERVER_CPU = 1
LOADGEN_CPU = 0
BACKEND_CPU = 0


class ServerStartError(RuntimeError):
    """A server process exited or never opened its port; the message carries its log tail."""


@dataclass(kw_only=True)
class RunningServer:
    """A started server under test, as every row's start function returns it.

    ``process`` is the root of the server's process tree; it must have been started in a new
    session (``spawn`` does that) so that ``stop`` can kill the whole group. Ports set to None
    mean "this protocol is not offered by this row": those measurements are skipped.
    ``h1_port`` and ``h2c_port`` may be the same port (a server that detects the h2 preface).
    ``helpers`` are extra processes the row needs (for example a Redis) that are stopped with
    the server but whose CPU time is not counted.
    """

    name: str
    process: subprocess.Popen[bytes]
    h1_port: int | None = None
    h2c_port: int | None = None
    tls_port: int | None = None
    workdir: Path | None = None
    helpers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    on_stop: list[Callable[[], None]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        """Process id of the root of the server's tree."""
        return self.process.pid

    def stop(self) -> None:
        """Kill the server's process group (TERM, then KILL after 3 s), then the helpers."""
        for proc in [self.process, *self.helpers]:
            kill_group(proc)
        for callback in self.on_stop:
            callback()


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (the kernel's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def spawn(
    argv: Sequence[str],
    *,
    cpu: int | None,
    log_path: Path,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[bytes]:
    """Start ``argv`` in a new session, pinned to ``cpu`` (``taskset -c``), output to a log.

    ``taskset`` execs the program, so the returned process id is the server's own.
    """
    full = ["taskset", "-c", str(cpu), *argv] if cpu is not None else list(argv)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            full,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=cwd,
            env=env,
            start_new_session=True,
        )


def kill_group(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """SIGTERM the process group led by ``proc``; SIGKILL it if still alive after ``grace``."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=wait)
            break
        except subprocess.TimeoutExpired:
            continue
    # Children that outlived a dead leader are still in the group: make sure they go too.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def log_tail(path: Path | None, lines: int = 15) -> str:
    """Last lines of a log file, for error messages."""
    if path is None or not path.exists():
        return ""
    text = path.read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def wait_for_ports(
    proc: subprocess.Popen[bytes],
    ports: Sequence[int],
    *,
    timeout: float = 15.0,
    log_path: Path | None = None,
) -> None:
    """Poll until every port accepts a connection; raise if the process dies or time runs out."""
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        if proc.poll() is not None:
            raise ServerStartError(
                f"process exited with {proc.returncode} before listening:\n{log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            raise ServerStartError(
                f"ports {pending} not open after {timeout}s:\n{log_tail(log_path)}"
            )
        try:
            with socket.create_connection(("127.0.0.1", pending[0]), timeout=0.5):
                pending.pop(0)
        except OSError:
            time.sleep(0.05)


def _read_stat(pid: int) -> tuple[int, int] | None:
    """(ppid, utime+stime+cutime+cstime in ticks) of a process, or None if it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name may contain spaces and parentheses: fields start after the last ')'.
    fields = raw[raw.rindex(")") + 2 :].split()
    ppid = int(fields[1])
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return ppid, utime + stime + cutime + cstime


def process_tree(root: int) -> list[int]:
    """Pids of ``root`` and all its live descendants."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_stat(int(entry))
        if stat is not None:
            parents.setdefault(stat[0], []).append(int(entry))
    tree, stack = [], [root]
    while stack:
        pid = stack.pop()
        tree.append(pid)
        stack.extend(parents.get(pid, []))
    return tree


def tree_cpu_seconds(root: int) -> float:
    """CPU seconds (user + system) used so far by ``root``'s process tree."""
    ticks = 0
    for pid in process_tree(root):
        stat = _read_stat(pid)
        if stat is not None:
            ticks += stat[1]
    return ticks / CLOCK_TICKS


def pin_tree(root: int, cpu: int) -> None:
    """Pin every thread of every process in ``root``'s tree to ``cpu``.

    Used after a row's start function returned, so that servers started without ``spawn``
    (or which spawn their own workers) still run on the server core.
    """
    for pid in process_tree(root):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{pid}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), {cpu})


def system_busy_seconds() -> float:
    """CPU seconds all cores have spent running processes since boot (from /proc/stat).

    Interrupt and softirq time are left out: loopback packet processing for the benchmark's
    own traffic lands there, and it belongs to no process, so it would read as foreign noise.
    """
    with open("/proc/stat") as stat:
        fields = stat.readline().split()
    # cpu user nice system idle iowait irq softirq steal ...
    user, nice, system = (int(x) for x in fields[1:4])
    return (user + nice + system) / CLOCK_TICKS


def children_cpu_seconds() -> float:
    """CPU seconds of this process's waited-for children (the load generators)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def wait_until_quiet(max_wait_s: float, threshold: float = 0.15, window_s: float = 0.5) -> bool:
    """Wait (up to ``max_wait_s``) for a ``window_s`` window in which the machine is nearly idle.

    "Nearly idle": all cores together busy less than ``threshold`` of one core. Meant to be
    called between runs, when the benchmark's own servers are idle, on a machine shared with
    other work. Returns whether such a window was seen.
    """
    deadline = time.monotonic() + max_wait_s
    while True:
        before = system_busy_seconds()
        time.sleep(window_s)
        if (system_busy_seconds() - before) / window_s < threshold:
            return True
        if time.monotonic() >= deadline:
            return False
