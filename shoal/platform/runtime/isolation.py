"""Who an instance runs as: one user per service, never root and never the platform's user.

Like Android's per-app uids, every service gets its own uid (group the same number, no
supplementary groups) from a range (``--instance-uids``, default :data:`DEFAULT_RANGE`),
assigned on first use and kept in ``$SHOAL_HOME/uids.json`` so it stays the service's across
restarts. A uid with an account in the passwd database is never handed out. The node can only
do this as root; when it cannot, or when an ``app:`` instance's runtime (this interpreter and
Shoal's packages, shown to it where they are in a closed directory by
:mod:`~shoal.platform.runtime.view`) cannot be run by such a uid, isolation is limited and
:class:`Isolation` says how (``limits``), for the node's log and ``shoal status``.

What the uid buys: ``$SHOAL_HOME`` (0700, the platform's) is unreadable to instances, so is the
node's environment (``/proc/PID/environ``), and the router's outbound listener of service S
serves only sockets owned by S's uid (:meth:`Isolation.callers`), so no process borrows another
service's identity.
"""

from __future__ import annotations

import asyncio
import functools
import json
import os
import pwd
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from shoal.errors import PlatformError, UserError
from shoal.platform.runtime.view import View, plan, runtime_paths
from shoal.resources.model import Service
from shoal.store.children import die_with_parent

__all__ = [
    "DEFAULT_RANGE",
    "DEFAULT_UIDS",
    "NO_HOME",
    "Isolation",
    "ServiceUids",
    "UidRange",
    "allocate",
    "isolation",
    "parse_range",
    "run_as",
]

DEFAULT_RANGE = "20000-29999"
NO_HOME = "/nonexistent"  # an instance's HOME when it runs as its own uid (as nobody's is)
PROBE_TIMEOUT = 30.0  # seconds for the probe that an instance uid can run the app runtime


@dataclass(frozen=True, slots=True)
class UidRange:
    """The uids instances may be given, both ends included."""

    first: int
    last: int

    def __str__(self) -> str:
        return f"{self.first}-{self.last}"


DEFAULT_UIDS = UidRange(20000, 29999)


def parse_range(text: str) -> UidRange | None:
    """``--instance-uids``: ``FIRST-LAST`` (inclusive, 1 <= FIRST <= LAST < 2**32 - 1), or
    ``off`` (None: instances run as the platform's user). A bad value is a UserError."""
    if text.strip().lower() == "off":
        return None
    match = re.fullmatch(r"\s*([0-9]+)\s*-\s*([0-9]+)\s*", text, re.ASCII)
    if match is None or not 1 <= int(match[1]) <= int(match[2]) < 2**32 - 1:
        raise UserError(
            f"--instance-uids {text!r}: expected FIRST-LAST, uids from 1 up (e.g. "
            f"{DEFAULT_RANGE}), or 'off'"
        )
    return UidRange(int(match[1]), int(match[2]))


def allocate(
    assigned: Mapping[str, int], service: str, uids: UidRange, taken: Callable[[int], bool]
) -> int:
    """``service``'s uid: the one it has, else the lowest in ``uids`` that no service has and
    ``taken`` (an account exists) does not claim. PlatformError when the range is used up."""
    if service in assigned:
        return assigned[service]
    used = set(assigned.values())
    for uid in range(uids.first, uids.last + 1):
        if uid not in used and not taken(uid):
            return uid
    raise PlatformError(f"no free uid left in --instance-uids {uids} for service {service!r}")


def has_account(uid: int) -> bool:
    """Whether the passwd database knows ``uid`` (a real user's, never an instance's)."""
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


class ServiceUids:
    """This node's service → uid table, kept in ``path`` (one JSON object, written whole)."""

    def __init__(self, path: Path, uids: UidRange) -> None:
        self.path = path
        self.range = uids
        self._assigned: dict[str, int] = {}
        if path.exists():
            doc = json.loads(path.read_text())
            self._assigned = {
                k: v for k, v in doc.items() if isinstance(v, int) and uids.first <= v <= uids.last
            }

    def uid(self, service: str) -> int:
        """``service``'s uid, assigned (and recorded) on first use."""
        if service not in self._assigned:
            self._assigned[service] = allocate(self._assigned, service, self.range, has_account)
            partial = self.path.with_suffix(".tmp")
            partial.write_text(json.dumps(self._assigned, sort_keys=True))
            partial.replace(self.path)
        return self._assigned[service]


def run_as(user: int | None, cwd: str | None = None) -> dict[str, Any]:
    """Keywords for ``create_subprocess_exec`` that start a process as ``user``, with the group
    of the same number and no other, in a view of the filesystem where it reaches this runtime
    and ``cwd`` (:mod:`~shoal.platform.runtime.view`); none (as this process) for None. (A
    ``preexec_fn``: uvloop takes no ``user``/``group`` keywords.) Either way the process gets
    SIGTERM if this one dies (:func:`~shoal.store.children.die_with_parent`)."""
    dies = die_with_parent()
    if user is None:
        return {"preexec_fn": dies}
    view = plan(runtime_paths() + ((cwd,) if cwd else ()))
    return {"preexec_fn": functools.partial(_become, user, view, dies)}


def _become(uid: int, view: View, then: Callable[[], None]) -> None:
    """In the child, before exec: enter ``view``, drop every group, take ``uid``'s group and
    uid, then call ``then`` (a change of uid clears the parent-death signal)."""
    view.enter()
    os.setgroups([])
    os.setgid(uid)
    os.setuid(uid)
    then()


@dataclass(frozen=True, slots=True)
class Isolation:
    """How this node separates instances from the platform and from each other."""

    uids: ServiceUids | None  # None: every instance runs as the platform's user
    apps: bool  # ``app:`` instances get their service's uid too (their runtime is reachable)
    limits: tuple[str, ...] = ()  # why isolation is limited, each a sentence; () when it is not
    platform: int = os.getuid()

    def user(self, service: Service) -> int | None:
        """The uid ``service``'s instances run as; None: the platform's own."""
        if self.uids is None or (service.app is not None and not self.apps):
            return None
        return self.uids.uid(service.name)

    def callers(self, service: str) -> frozenset[int]:
        """The uids whose sockets ``service``'s outbound listener serves."""
        if self.uids is None:
            return frozenset({self.platform})
        own = self.uids.uid(service)
        return frozenset({own} if self.apps else {own, self.platform})

    def record(self) -> dict[str, Any]:
        """What the node's registry record says of it (``shoal status`` shows it)."""
        return {
            "uids": str(self.uids.range) if self.uids is not None else "",
            "limits": list(self.limits),
        }


async def isolation(uids: UidRange | None, state_dir: Path) -> Isolation:
    """This node's isolation: per-service uids from ``uids`` when it runs as root (and ``app:``
    instances too when such a uid can run their runtime), else limited, saying why."""
    me = os.geteuid()
    if uids is None:
        return Isolation(
            None, False, (f"instances run as the platform's user (uid {me}): --instance-uids off",)
        )
    if me != 0:
        return Isolation(
            None,
            False,
            (
                f"instances run as the platform's user (uid {me}): only root can give each "
                "service its own uid",
            ),
        )
    table = ServiceUids(state_dir / "uids.json", uids)
    unusable = await runtime_unreachable(table.range.first)
    if unusable is None:
        return Isolation(table, True)
    return Isolation(
        table,
        False,
        (
            f"app: instances run as the platform's user (uid {me}): uid {uids.first} cannot "
            f"run {sys.executable} ({unusable}); instances see a runtime in a closed directory "
            "through a mount namespace, which needs CAP_SYS_ADMIN: without it, put Shoal (its "
            "Python and checkout) where every user can enter (command: instances have their "
            "own uids)",
        ),
    )


async def runtime_unreachable(uid: int, python: str = sys.executable) -> str | None:
    """None if ``uid`` can run an ``app:`` instance's runtime (``python``, this interpreter,
    importing Shoal's), else what stops it (the last line of the error)."""
    try:
        process = await asyncio.create_subprocess_exec(
            python,
            "-c",
            "import shoal.platform.runtime.serve",
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": NO_HOME},
            cwd="/",
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
            **run_as(uid),
        )
        async with asyncio.timeout(PROBE_TIMEOUT):
            _, err = await process.communicate()
    except (OSError, subprocess.SubprocessError) as e:
        return getattr(e, "strerror", None) or str(e)
    except TimeoutError:
        process.kill()
        await process.wait()
        return "no answer"
    if process.returncode == 0:
        return None
    lines = err.decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else f"exit code {process.returncode}"
