"""Bounded disk for instance logs (``<state>/logs/instances``), as kubelet bounds container logs.

A running instance's log (or a live template's) that grows past :data:`MAX_BYTES` is cut: its
content moves to ``<name>.1`` (replacing the previous one) and the file is emptied in place —
the process keeps writing to the same open file (opened for appending), so nothing has to
reopen it; what is written between the copy and the cut is lost, as with logrotate's
``copytruncate``. So a live log takes at most twice :data:`MAX_BYTES` (kubelet's
containerLogMaxSize 10 MiB, containerLogMaxFiles 5). The logs of instances that are gone stay
for ``shoal logs --all`` and a post-mortem: the newest :data:`KEEP_GONE`, none older than
:data:`MAX_AGE`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from shoal.mesh.access_log import MAX_BYTES, cut_file

log = logging.getLogger(__name__)

KEEP_GONE = 50
MAX_AGE = 24 * 3600.0
ROTATED = ".1"


@dataclass(frozen=True, slots=True)
class LogFile:
    """A file in the log directory: its name, size and last change (epoch seconds)."""

    name: str
    size: int
    mtime: float


@dataclass(frozen=True, slots=True)
class Tidy:
    """What to do: the live logs to cut, the files to remove."""

    cut: tuple[str, ...]
    remove: tuple[str, ...]


def plan(
    files: Iterable[LogFile],
    live: set[str],
    now: float,
    *,
    max_bytes: int = MAX_BYTES,
    keep_gone: int = KEEP_GONE,
    max_age: float = MAX_AGE,
) -> Tidy:
    """Which of ``files`` to cut and which to remove, given the names of the ``live`` logs
    (instances and templates that run): a rotated ``.1`` goes with its log."""
    files = list(files)
    cut = tuple(sorted(f.name for f in files if f.name in live and f.size > max_bytes))
    gone = sorted(
        (f for f in files if not f.name.endswith(ROTATED) and f.name not in live),
        key=lambda f: f.mtime,
        reverse=True,
    )
    stale = {f.name for i, f in enumerate(gone) if i >= keep_gone or now - f.mtime > max_age}
    names = {f.name for f in files}
    orphans = {
        f.name for f in files if f.name.endswith(ROTATED) and f.name[: -len(ROTATED)] not in names
    }
    remove = stale | {name + ROTATED for name in stale if name + ROTATED in names} | orphans
    return Tidy(cut=cut, remove=tuple(sorted(remove)))


def scan(directory: Path) -> list[LogFile]:
    """The files in ``directory`` (none if it does not exist)."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in directory.iterdir():
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                found.append(LogFile(path.name, stat.st_size, stat.st_mtime))
    return found


def tidy(directory: Path, live: set[str], now: float) -> Tidy:
    """Apply :func:`plan` to ``directory``; return what was done."""
    todo = plan(scan(directory), live, now)
    for name in todo.cut:
        with contextlib.suppress(OSError):
            cut_file(directory / name, ROTATED)
    for name in todo.remove:
        with contextlib.suppress(FileNotFoundError):
            (directory / name).unlink()
    if todo.cut or todo.remove:
        log.info(
            "logs: %d cut at their size limit, %d old ones removed", len(todo.cut), len(todo.remove)
        )
    return todo
