"""What an instance's uid can see of the runtime it needs, wherever the platform was installed.

An instance runs as its service's own uid, which belongs to no group: it can enter a directory
only through its "other" permission bits. Shoal's Python and checkout are often somewhere such
a uid cannot enter (a clone inside ``mktemp -d``, 0700; a home directory, 0700). Rather than
change the user's permissions, the instance gets a private mount namespace (made as root, just
before it drops to its uid) in which each directory that blocks the way is covered by an empty
root-owned tmpfs (0755) holding only the paths the instance needs, bind-mounted at their own
paths from the real ones. Everything else under a covered directory disappears from the
instance's view; a needed path keeps its own permissions (``$SHOAL_HOME``, 0700, stays closed).
Mounts made there never propagate back (the namespace's mounts are private).

:func:`plan` decides (in the parent, from the filesystem); :meth:`View.enter` acts (in the
child, before exec). Without the privilege to make a mount namespace the child goes on without
one, and the node's probe reports what the uid cannot reach.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import sys
from dataclasses import dataclass
from pathlib import Path

__all__ = ["View", "plan", "runtime_paths"]

_CLONE_NEWNS = 0x00020000
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_libc = ctypes.CDLL(None, use_errno=True)


@dataclass(frozen=True, slots=True)
class View:
    """Directories to cover with an empty tmpfs and, under them, what to show again."""

    covers: tuple[str, ...] = ()  # shallowest first; none lies under another
    dirs: tuple[str, ...] = ()  # made (0755) on a cover, parents first
    binds: tuple[tuple[str, bool], ...] = ()  # (path, is a directory) shown from the real one
    links: tuple[tuple[str, str], ...] = ()  # (path, target): symbolic links made again

    def __bool__(self) -> bool:
        return bool(self.covers)

    def enter(self) -> None:
        """In a child running as root, before it drops its uid and execs: a private mount
        namespace with this view. Best effort: without the privilege, nothing changes."""
        if not self.covers or _libc.unshare(_CLONE_NEWNS) != 0:
            return
        _mount(None, "/", None, _MS_REC | _MS_PRIVATE)
        # Open the real paths before covering them (in this namespace: a bind's source must be).
        real = {path: os.open(path, os.O_PATH | os.O_CLOEXEC) for path, _ in self.binds}
        for cover in self.covers:
            _mount("tmpfs", cover, "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=755,size=1m")
        for path in self.dirs:
            os.mkdir(path, 0o755)
        for path, target in self.links:
            os.symlink(target, path)
        for path, is_dir in self.binds:
            if is_dir:
                os.mkdir(path, 0o755)
            else:
                os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o644))
            _mount(f"/proc/self/fd/{real[path]}", path, None, _MS_BIND | _MS_REC)
            os.close(real[path])
        with contextlib.suppress(OSError):
            os.chdir(os.getcwd())  # the working directory as this view shows it


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    def c(text: str | None) -> bytes | None:
        return None if text is None else os.fsencode(text)

    if _libc.mount(c(source), c(target), c(fstype), flags, c(data) if data else None) != 0:
        error = ctypes.get_errno()
        raise OSError(error, f"mount {target}: {os.strerror(error)}")


def runtime_paths() -> tuple[str, ...]:
    """What an instance of this platform needs to reach: this Python's installation, every
    directory it imports from, and Shoal's own package root."""
    shoal_root = str(Path(__file__).resolve().parents[3])
    return (sys.prefix, sys.base_prefix, shoal_root, *(p for p in sys.path if p))


def _enterable(mode: int) -> bool:
    """Whether a uid in no group of the owner's can pass through (or read) this path."""
    return not stat.S_ISDIR(mode) or bool(mode & stat.S_IXOTH)


def plan(paths: tuple[str, ...]) -> View:
    """The view under which a uid of no group reaches each of ``paths`` (those that exist) at
    its own path: every outermost directory such a uid cannot enter is covered; below it the
    way down is made again, and each needed path is shown from the real one, itself when that
    uid may enter it, else each of its entries (the covered directory's own mode is not)."""
    wanted = sorted({os.path.realpath(p) for p in paths if os.path.exists(p)})
    wanted = [p for p in wanted if not any(p.startswith(q.rstrip("/") + "/") for q in wanted)]
    covers: list[str] = []
    dirs: list[str] = []
    binds: list[tuple[str, bool]] = []
    links: list[tuple[str, str]] = []

    def under_cover(path: str) -> bool:
        return any(path == c or path.startswith(c.rstrip("/") + "/") for c in covers)

    def make_dir(path: str) -> None:
        if path not in dirs and path not in covers:
            dirs.append(path)

    for path in wanted:
        parts = Path(path).parts
        blocked = next(
            (
                str(Path(*parts[: i + 1]))
                for i in range(len(parts))
                if not _enterable(os.stat(Path(*parts[: i + 1])).st_mode)
            ),
            None,
        )
        if blocked is None:
            continue
        if not under_cover(blocked):
            covers.append(blocked)
        for i in range(len(Path(blocked).parts), len(parts)):
            make_dir(str(Path(*parts[: i + 1])))
        if path != blocked and _enterable(os.stat(path).st_mode):
            dirs.remove(path)
            binds.append((path, True))
            continue
        for entry in sorted(os.scandir(path), key=lambda e: e.name):
            if entry.is_symlink():
                links.append((entry.path, os.readlink(entry.path)))
            elif entry.is_dir() or entry.is_file():
                binds.append((entry.path, entry.is_dir()))
    return View(tuple(covers), tuple(dirs), tuple(binds), tuple(links))
