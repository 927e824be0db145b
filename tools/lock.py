"""The dependency lock: what `make lock` writes and what `make test` checks.

`pyproject.toml` keeps version *ranges* (for people who install Shoal as a library); the lock
file `requirements.lock` pins every runtime, dev and build dependency to one version with its
hashes, and is what `make up`, `make test` and CI install. Its first line records a digest of
the ranges it was computed from, so a range edited without re-locking is caught before anything
is installed.

    python tools/lock.py write     re-resolve the ranges with uv and rewrite the lock, keeping
                                   locked versions that still fit (--upgrade: newest of all)
    python tools/lock.py check     exit 1 with one line if pyproject.toml and the lock disagree
    python tools/lock.py sync PY   install exactly the lock (and Shoal, editable) into PY's venv

Only the standard library is used, so `check` runs before anything is installed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
LOCK = ROOT / "requirements.lock"
DIGEST_PREFIX = "# pyproject-digest: "
RELOCK = "run `make lock` to re-lock"


def inputs(pyproject: dict[str, Any]) -> list[str]:
    """Every requirement the lock must satisfy: runtime, every extra, and the build backend."""
    project, build = pyproject["project"], pyproject["build-system"]
    found = list(project.get("dependencies", []))
    for extra in sorted(project.get("optional-dependencies", {}).values()):
        found.extend(extra)
    found.extend(build.get("requires", []))
    return found


def digest(requirements: list[str]) -> str:
    """A digest of the requirement list as written (order-independent)."""
    return hashlib.sha256(json.dumps(sorted(requirements)).encode()).hexdigest()


def locked_digest(text: str) -> str | None:
    """The digest recorded on the lock's first line, or None when there is none."""
    first = text.splitlines()[0] if text else ""
    return first.removeprefix(DIGEST_PREFIX) if first.startswith(DIGEST_PREFIX) else None


def pins(text: str) -> dict[str, str]:
    """Normalised name → version of every `name==version` line of a lock or of `pip freeze`."""
    found = {}
    for line in text.splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return found


def check() -> str | None:
    """Why pyproject.toml and the lock disagree, or None when they agree."""
    if not LOCK.exists():
        return f"{LOCK.name} is missing: {RELOCK}"
    wanted = digest(inputs(tomllib.loads(PYPROJECT.read_text())))
    recorded = locked_digest(LOCK.read_text())
    if recorded != wanted:
        return f"pyproject.toml's dependencies changed since {LOCK.name} was made: {RELOCK}"
    return None


def freeze(python: str) -> dict[str, str]:
    """What the environment of ``python`` holds (without pip itself, which the Makefile pins)."""
    out = subprocess.run(
        [python, "-m", "pip", "freeze", "--exclude-editable", "--all"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return {name: version for name, version in pins(out).items() if name != "pip"}


def sync(python: str) -> str | None:
    """Install exactly the lock into the environment of ``python``; why it failed, or None."""
    pip = [python, "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--require-hashes", "--no-deps", "-r", str(LOCK)], check=True)
    want = pins(LOCK.read_text())
    extra = sorted(freeze(python).keys() - want.keys())
    if extra:  # left over from an older lock
        subprocess.run([python, "-m", "pip", "uninstall", "--quiet", "--yes", *extra], check=True)
    # Shoal itself, editable, built by the locked setuptools with nothing fetched.
    subprocess.run([*pip, "--no-deps", "--no-build-isolation", "--editable", str(ROOT)], check=True)
    have = freeze(python)
    if have == want:
        return None
    diff = sorted(
        f"{name} {have.get(name, '-')} (lock: {want.get(name, '-')})"
        for name in have.keys() | want.keys()
        if have.get(name) != want.get(name)
    )
    return f"installed packages differ from {LOCK.name}: {', '.join(diff)}"


def write(upgrade: bool = False) -> None:
    """Resolve the ranges with uv and rewrite the lock: versions already locked are kept where
    they still satisfy the ranges (a new dependency brings in only itself and what it needs),
    unless ``upgrade`` (newest versions of everything)."""
    requirements = inputs(tomllib.loads(PYPROJECT.read_text()))
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "requirements.in"
        source.write_text("\n".join(requirements) + "\n")
        out = Path(tmp) / "requirements.lock"
        if LOCK.exists() and not upgrade:
            out.write_text(LOCK.read_text())  # uv prefers the pins in its output file
        subprocess.run(
            [
                os.environ.get("UV", "uv"),
                "pip",
                "compile",
                "--quiet",
                "--generate-hashes",
                "--no-header",
                "--python-version=3.11",
                "--python-platform=x86_64-unknown-linux-gnu",
                "--output-file",
                str(out),
                str(source),
            ],
            check=True,
        )
        body = out.read_text().replace(str(source), "pyproject.toml")
    header = (
        f"{DIGEST_PREFIX}{digest(requirements)}\n"
        "# Every runtime, dev and build dependency of Shoal, pinned with hashes.\n"
        "# Written by `make lock` (tools/lock.py: uv pip compile) from pyproject.toml.\n"
    )
    LOCK.write_text(header + body)


def main(argv: list[str]) -> int:
    """Run one command; problems are one line on stderr and exit code 1."""
    command = argv[1] if len(argv) > 1 else ""
    if command == "write":
        write(upgrade="--upgrade" in argv[2:])
        return 0
    if command == "check":
        problem = check()
    elif command == "sync" and len(argv) == 3:
        problem = check() or sync(argv[2])
    else:
        print(f"usage: {argv[0]} write [--upgrade] | check | sync PYTHON", file=sys.stderr)
        return 2
    if problem:
        print(problem, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
