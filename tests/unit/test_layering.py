"""Every import in ``shoal/`` points down a floor (or stays in its own package).

The floors, bottom up — the one list of them besides the README's architecture section:

0. ``errors``, ``resources``, ``http``, ``identity``: values and pure logic; they may use each
   other but nothing above them;
1. ``store``: Redis;
2. ``mesh``: the data plane;
3. ``gateway`` and ``platform``: siblings, neither imports the other;
4. ``cli``; 5. ``__main__``, which only runs it.
"""

from __future__ import annotations

import ast
from pathlib import Path

FLOORS: dict[str, int] = {
    "errors": 0,
    "resources": 0,
    "http": 0,
    "identity": 0,
    "store": 1,
    "mesh": 2,
    "gateway": 3,
    "platform": 3,
    "cli": 4,
    "__main__": 5,
}

SHOAL = Path(__file__).resolve().parents[2] / "shoal"


def package_of(module: str) -> str | None:
    """The top-level part of ``shoal.<part>...``, or None for a module outside Shoal."""
    parts = module.split(".")
    return parts[1] if parts[0] == "shoal" and len(parts) > 1 else None


def imported(source: str) -> list[tuple[int, str]]:
    """(line, module) of every absolute import of a ``shoal`` module in ``source``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "shoal":  # from shoal import cli → shoal.cli
                found += [(node.lineno, f"shoal.{alias.name}") for alias in node.names]
            else:
                found.append((node.lineno, node.module))
    return found


def violations(files: dict[str, str]) -> list[str]:
    """``file:line: a imports b`` for every import that points up a floor or sideways.

    ``files`` maps a path under ``shoal/`` (``mesh/proxy.py``) to its source.
    """
    found = []
    for path, source in sorted(files.items()):
        own = path.split("/")[0].removesuffix(".py")
        if own not in FLOORS:
            continue  # shoal/__init__.py
        for line, module in imported(source):
            target = package_of(module)
            if target is None or target == own:
                continue
            low, high = FLOORS[target], FLOORS[own]
            if low < high or low == high == 0:
                continue
            found.append(
                f"shoal/{path}:{line}: {own} (floor {high}) imports {module} (floor {low})"
            )
    return found


def test_every_import_points_down_a_floor() -> None:
    """No module of shoal/ imports a package on its own floor or above (floor 0 excepted)."""
    files = {str(p.relative_to(SHOAL)): p.read_text() for p in SHOAL.rglob("*.py")}
    assert violations(files) == []


def test_every_package_has_a_floor() -> None:
    """A new top-level package gets a floor before it gets code."""
    tops = {p.name.removesuffix(".py") for p in SHOAL.iterdir() if p.suffix == ".py" or p.is_dir()}
    assert tops - {"__init__", "__pycache__"} <= FLOORS.keys()


def test_an_upward_import_is_named_with_file_and_line() -> None:
    """The check fails on an upward or sideways import and says where it is."""
    files = {
        "store/registry.py": "import json\nfrom shoal.mesh.proxy_state import ProxyState\n",
        "gateway/app.py": "def f():\n    from shoal.platform.node import run_node\n",
        "mesh/proxy.py": "from shoal.store import keys\nfrom shoal.http.paths import normalize\n",
        "http/paths.py": "from shoal.resources.model import Service\n",
        "cli/main.py": "from shoal import platform\n",
    }
    assert violations(files) == [
        "shoal/gateway/app.py:2: gateway (floor 3) imports shoal.platform.node (floor 3)",
        "shoal/store/registry.py:2: store (floor 1) imports shoal.mesh.proxy_state (floor 2)",
    ]
