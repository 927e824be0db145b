"""Finding, and if need be installing, the external programs the benchmark drives.

Every tool comes from a Debian package. When one is missing and we are root, the packages are
installed with ``apt-get`` (after one ``apt-get update``); otherwise the reason is recorded and the
rows that need the tool are skipped by the caller.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field

# Tool name -> Debian package providing it.
PACKAGES: dict[str, str] = {
    "nginx": "nginx",
    "haproxy": "haproxy",
    "h2load": "nghttp2-client",
    "wrk": "wrk",
    "taskset": "util-linux",
}

# Debian puts daemons in /usr/sbin, which is not on every PATH.
_EXTRA_DIRS = ("/usr/sbin", "/sbin", "/usr/local/sbin")


@dataclass(kw_only=True)
class Toolbox:
    """Where each tool lives (absolute path), and why the missing ones are missing."""

    paths: dict[str, str] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)

    def has(self, *names: str) -> bool:
        """True when every named tool was found."""
        return all(name in self.paths for name in names)

    def path(self, name: str) -> str:
        """Absolute path of a tool that must exist (KeyError otherwise)."""
        return self.paths[name]

    def why_missing(self, *names: str) -> str:
        """One line saying which of the named tools are missing and why."""
        return "; ".join(
            f"{n}: {self.missing.get(n, 'not found')}" for n in names if not self.has(n)
        )


def which(name: str) -> str | None:
    """``shutil.which`` that also looks in the sbin directories."""
    found = shutil.which(name)
    if found:
        return found
    for directory in _EXTRA_DIRS:
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def _apt_install(packages: list[str], log: list[str]) -> str | None:
    """Install Debian packages; return None on success or a one-line reason on failure."""
    if os.geteuid() != 0:
        return (
            "not root, cannot apt-get install (install them yourself: " + " ".join(packages) + ")"
        )
    if shutil.which("apt-get") is None:
        return "apt-get not available on this system"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    steps = [
        ["apt-get", "update"],
        ["apt-get", "install", "-y", "--no-install-recommends", *packages],
    ]
    for argv in steps:
        print("[tools] running:", " ".join(argv), flush=True)
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
        log.append(proc.stdout[-2000:] + proc.stderr[-2000:])
        if proc.returncode != 0:
            tail = (proc.stderr.strip() or proc.stdout.strip()).splitlines()[-1:]
            return f"`{' '.join(argv)}` failed (exit {proc.returncode}): {' '.join(tail)}"
    return None


def _version(name: str, path: str) -> str:
    """Best-effort one-line version string of a tool (empty if it cannot tell)."""
    argv = {
        "nginx": [path, "-v"],
        "haproxy": [path, "-v"],
        "h2load": [path, "--version"],
        "wrk": [path, "--version"],
        "taskset": [path, "--version"],
    }[name]
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return ""
    text = (proc.stdout + proc.stderr).strip()
    first = text.splitlines()[0] if text else ""
    match = re.search(r"\d+\.\d+(\.\d+)?", first)
    return match.group(0) if match else first


def ensure_tools(names: list[str] | None = None, *, install: bool = True) -> Toolbox:
    """Locate the tools, installing the missing ones with apt-get when allowed.

    Prints what it does. Never raises for a missing tool: the returned ``Toolbox`` says which
    are missing and why, so that the caller can skip only the rows that need them.
    """
    wanted = names or list(PACKAGES)
    box = Toolbox()
    absent = [n for n in wanted if which(n) is None]
    if absent:
        packages = sorted({PACKAGES[n] for n in absent})
        print(f"[tools] missing: {', '.join(absent)} (Debian packages: {', '.join(packages)})")
        reason: str | None = "installation disabled (--no-install)"
        if install:
            log: list[str] = []
            reason = _apt_install(packages, log)
            if reason is None:
                print("[tools] installed:", ", ".join(packages))
        if reason is not None:
            print(f"[tools] could not install: {reason}")
            for n in absent:
                box.missing[n] = reason
    for n in wanted:
        path = which(n)
        if path is None:
            box.missing.setdefault(n, "not found after installation")
            continue
        box.paths[n] = path
        box.versions[n] = _version(n, path)
    return box
