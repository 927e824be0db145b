"""Hosts as Linux network namespaces, for tests that need separate network hosts.

:func:`network` builds N hosts: one network namespace each (loopback up), a veth pair from the
host to one Linux bridge in the root namespace, and an address per host in a private /24
(``10.213.X.0/24``, X chosen so that no other interface or route of this machine uses it). The
bridge itself holds ``.1``, so the test process reaches every host from the root namespace;
hosts get ``.2``, ``.3``, ...

Names are unique per test run: namespaces are ``shoal-<pid>-<suffix>-<host>`` (the pid of the
pytest process that owns them, so a later run can tell a leftover of a killed run from a live
one of a parallel xdist worker), interfaces ``shb<suffix>`` (bridge), ``shv<suffix><i>`` (root
end of host i's veth) and ``shp<suffix><i>`` (its end inside the namespace) — at most 10
characters, under Linux's 15.

Everything is torn down when the context ends, whether the test passed or not: every process
started with :meth:`Network.run` (SIGTERM to its process group, SIGKILL after a deadline), then
any other process still inside a namespace (a service instance whose supervisor was killed),
then the veths, the namespaces and the bridge. Needs root and ``ip netns``;
:func:`require_netns` skips the test with the reason when either is missing.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

log = logging.getLogger(__name__)

SUBNET_PREFIX = "10.213"
LOCK_FILE = Path("/tmp/shoal-netns.lock")  # serialises subnet choice between xdist workers
IP_TIMEOUT = 10.0  # seconds for one `ip` command
_NETNS_NAME = re.compile(r"^shoal-(\d+)-([0-9a-f]{6})-(\w+)$")


class NetnsError(Exception):
    """A namespace, link or process of the test network could not be set up or torn down."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run ``ip ARGS``; raise :class:`NetnsError` with its stderr when ``check`` and it fails."""
    try:
        done = subprocess.run(
            ["ip", *args], capture_output=True, text=True, timeout=IP_TIMEOUT, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise NetnsError(f"ip {' '.join(args)}: {e}") from None
    if check and done.returncode != 0:
        raise NetnsError(f"ip {' '.join(args)}: {done.stderr.strip() or done.returncode}")
    return done


@functools.cache
def netns_unavailable() -> str | None:
    """Why this machine cannot build namespace hosts, or None when it can (probed once)."""
    return _probe()


def _probe() -> str | None:
    if not sys.platform.startswith("linux"):
        return f"network namespaces need Linux (this is {sys.platform})"
    if os.geteuid() != 0:
        return "network namespaces need root (ip netns add); CI runs as root"
    if shutil.which("ip") is None:
        return "the 'ip' command (iproute2) is not installed"
    name = f"shoal-probe-{os.getpid()}-{secrets.token_hex(3)}"
    try:
        _ip("netns", "add", name)
    except NetnsError as e:
        return f"'ip netns add' does not work here: {e}"
    try:
        _ip("-n", name, "link", "add", "pv0", "type", "veth", "peer", "name", "pv1")
        _ip("-n", name, "link", "add", "pbr", "type", "bridge")
    except NetnsError as e:
        return f"veth pairs or bridges cannot be created here: {e}"
    finally:
        _ip("netns", "del", name, check=False)
    return None


def require_netns() -> None:
    """Skip the calling test, with the reason, when namespace hosts cannot be built here."""
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(reason)


@dataclass(frozen=True, slots=True)
class Host:
    """One simulated host: its namespace, its address and the two ends of its veth."""

    name: str
    netns: str
    address: str
    veth: str  # the end in the root namespace, a port of the bridge
    peer: str  # the end inside the namespace, holding ``address``


@dataclass(slots=True)
class Process:
    """A process started inside a host's namespace, in its own process group."""

    name: str
    host: Host
    argv: list[str]
    popen: subprocess.Popen[bytes]
    log: Path
    killed: bool = False  # it needed SIGKILL: it did not stop on SIGTERM in time

    @property
    def pid(self) -> int:
        """Its pid (also its process group id)."""
        return self.popen.pid

    def alive(self) -> bool:
        """True while it has not exited."""
        return self.popen.poll() is None

    def tail(self, lines: int = 30) -> str:
        """The last ``lines`` of its log, for failure messages."""
        try:
            text = self.log.read_text(errors="replace")
        except OSError as e:
            return f"(no log: {e})"
        return "\n".join(text.splitlines()[-lines:])


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _killpg(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _netns_pids(netns: str) -> list[int]:
    done = _ip("netns", "pids", netns, check=False)
    return [int(p) for p in done.stdout.split() if p.isdigit()]


def _kill_everything_in(netns: str, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process inside ``netns``; return the pids still there after ``timeout``."""
    deadline = time.monotonic() + timeout
    while pids := _netns_pids(netns):
        if time.monotonic() >= deadline:
            return pids
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.05)
    return []


@contextlib.contextmanager
def _locked() -> Iterator[None]:
    """Hold the machine-wide lock that serialises subnet choice and stale-run cleanup."""
    with open(LOCK_FILE, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def reap_stale() -> list[str]:
    """Remove the namespaces and bridges left by test runs whose pytest process is gone (a run
    killed with SIGKILL cannot clean up); return the namespaces removed. Call under the lock."""
    removed = []
    listing = _ip("netns", "list", check=False).stdout
    for line in listing.splitlines():
        name = line.split()[0] if line.split() else ""
        m = _NETNS_NAME.match(name)
        if m is None or _alive(int(m.group(1))):
            continue
        _kill_everything_in(name)
        _ip("netns", "del", name, check=False)
        _ip("link", "del", f"shb{m.group(2)}", check=False)
        removed.append(name)
    return removed


def _subnet_in_use(third: int) -> bool:
    prefix = f"{SUBNET_PREFIX}.{third}."
    addrs = _ip("-4", "-o", "addr", "show", check=False).stdout
    routes = _ip("-4", "route", "show", "table", "all", check=False).stdout
    return prefix in addrs or prefix in routes


class Network:
    """Namespace hosts on one bridge, and the processes started in them."""

    def __init__(self, names: Sequence[str], log_dir: Path) -> None:
        if not names or len(names) > 9 or len(set(names)) != len(names):
            raise ValueError(f"Network needs 1-9 distinct host names, got {list(names)!r}")
        self.names = list(names)
        self.log_dir = log_dir
        self.suffix = secrets.token_hex(3)
        self.bridge = f"shb{self.suffix}"
        self.subnet = ""  # "10.213.X", chosen in create()
        self.hosts: dict[str, Host] = {}
        self.processes: list[Process] = []
        self._created_bridge = False
        self._created_netns: list[str] = []
        self._created_veths: list[str] = []

    @property
    def bridge_address(self) -> str:
        """The root namespace's address on the bridge: where hosts see the test process."""
        return f"{self.subnet}.1"

    def create(self) -> None:
        """Build the bridge, the namespaces and their veths; record each piece as it is made,
        so that :meth:`close` removes exactly what exists even after a failure half-way."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with _locked():
            stale = reap_stale()
            if stale:
                log.warning("removed namespaces of dead test runs: %s", ", ".join(stale))
            third = self._free_subnet()
            self.subnet = f"{SUBNET_PREFIX}.{third}"
            # nf_call_iptables 0: bridged frames between hosts skip the machine's iptables
            # (a FORWARD policy of DROP, as Docker sets, would otherwise cut them).
            _ip("link", "add", self.bridge, "type", "bridge", "nf_call_iptables", "0")
            self._created_bridge = True
            _ip("addr", "add", f"{self.bridge_address}/24", "dev", self.bridge)
            _ip("link", "set", self.bridge, "up")
        for i, name in enumerate(self.names):
            host = Host(
                name=name,
                netns=f"shoal-{os.getpid()}-{self.suffix}-{name}",
                address=f"{self.subnet}.{i + 2}",
                veth=f"shv{self.suffix}{i}",
                peer=f"shp{self.suffix}{i}",
            )
            _ip("netns", "add", host.netns)
            self._created_netns.append(host.netns)
            _ip("link", "add", host.veth, "type", "veth", "peer", "name", host.peer)
            self._created_veths.append(host.veth)
            _ip("link", "set", host.peer, "netns", host.netns)
            _ip("link", "set", host.veth, "master", self.bridge)
            _ip("link", "set", host.veth, "up")
            _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", host.peer)
            _ip("-n", host.netns, "link", "set", host.peer, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            self.hosts[name] = host

    def _free_subnet(self) -> int:
        candidates = list(range(1, 255))
        secrets.SystemRandom().shuffle(candidates)
        for third in candidates[:64]:
            if not _subnet_in_use(third):
                return third
        raise NetnsError(f"no free {SUBNET_PREFIX}.X.0/24 subnet found")

    def command(self, host: str, argv: Sequence[str]) -> list[str]:
        """The argv that runs ``argv`` inside ``host``'s namespace."""
        return ["ip", "netns", "exec", self.hosts[host].netns, *argv]

    def run(
        self,
        host: str,
        name: str,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        cwd: Path | None = None,
    ) -> Process:
        """Start ``argv`` in ``host``'s namespace, in a new session (its own process group),
        stdout and stderr appended to ``<log_dir>/<host>-<name>.log``."""
        log_path = self.log_dir / f"{host}-{name}.log"
        with open(log_path, "ab") as out:
            popen = subprocess.Popen(
                self.command(host, argv),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=dict(env) if env is not None else None,
                cwd=cwd,
                start_new_session=True,
            )
        proc = Process(name=name, host=self.hosts[host], argv=list(argv), popen=popen, log=log_path)
        self.processes.append(proc)
        return proc

    def stop(self, *procs: Process, timeout: float = 15.0) -> None:
        """SIGTERM the process groups of ``procs`` together; SIGKILL those still running after
        ``timeout`` seconds. Each is waited for (no zombie, no ResourceWarning)."""
        # Only processes running now: a group id is not signalled again once its leader has
        # been reaped by an earlier call (the id could belong to someone else by then).
        running = [p for p in procs if p.alive()]
        for p in running:
            _killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for p in running:
            try:
                p.popen.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.killed = True
                _killpg(p.pid, signal.SIGKILL)
                p.popen.wait(timeout=IP_TIMEOUT)
            # Whatever else is left in its group (children that did not exit with it).
            _killpg(p.pid, signal.SIGKILL)
        for p in procs:
            p.popen.wait(timeout=IP_TIMEOUT)  # exited before this call: reap it

    def link_down(self, host: str) -> None:
        """Cut ``host`` off the network: its interface goes down inside its namespace."""
        h = self.hosts[host]
        _ip("-n", h.netns, "link", "set", h.peer, "down")

    def link_up(self, host: str) -> None:
        """Reconnect ``host``: its interface comes back up (the kernel restores its route)."""
        h = self.hosts[host]
        _ip("-n", h.netns, "link", "set", h.peer, "up")

    def close(self) -> list[str]:
        """Tear everything down; return what could not be removed (empty when all went)."""
        problems: list[str] = []
        for name in self.hosts:  # so processes can deregister cleanly on their way out
            with contextlib.suppress(NetnsError):
                self.link_up(name)
        self.stop(*[p for p in reversed(self.processes)], timeout=15.0)
        for netns in self._created_netns:
            left = _kill_everything_in(netns)
            if left:
                problems.append(f"processes {left} would not die in {netns}")
        for veth in self._created_veths:
            _ip("link", "del", veth, check=False)  # its peer goes with it
        for netns in self._created_netns:
            done = _ip("netns", "del", netns, check=False)
            if done.returncode != 0:
                problems.append(f"ip netns del {netns}: {done.stderr.strip()}")
        if self._created_bridge:
            done = _ip("link", "del", self.bridge, check=False)
            if done.returncode != 0:
                problems.append(f"ip link del {self.bridge}: {done.stderr.strip()}")
        return problems


@contextlib.contextmanager
def network(names: Sequence[str], log_dir: Path) -> Iterator[Network]:
    """Hosts ``names`` as namespaces on one bridge, removed with all their processes on exit."""
    net = Network(names, log_dir)
    try:
        net.create()
        yield net
    finally:
        problems = net.close()
        if problems:
            log.error("test network not fully removed: %s", "; ".join(problems))
    if problems:
        raise NetnsError("test network not fully removed: " + "; ".join(problems))
