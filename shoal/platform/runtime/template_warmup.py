"""What a template imports ahead of its instances, and how it finds out.

The app is imported once in a throwaway child that reports the modules it pulled in; the
template then imports those itself — except the user's own code (the app's package and files
under the workdir), which every instance imports for itself with its own environment
(``SHOAL_INSTANCE``, ``PORT``), exactly as a fresh interpreter would. :func:`warmable` is the
pure decision; :func:`warm` carries it out. An app that cannot be imported fails here, once.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import sysconfig
import traceback
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from shoal.platform.runtime.template_protocol import TemplateError
from shoal.platform.runtime.template_server import flush_stdio, log

__all__ = ["warm", "warmable"]


def warmable(
    modules: Mapping[str, str | None], *, app: str, root: str, installed: Sequence[str]
) -> list[str]:
    """The modules (in import order) a template imports ahead of its instances.

    ``modules`` maps what importing ``app`` pulled in to its file (or None). Left out is the
    user's own code, which every instance imports for itself: the app's top-level package and
    modules under ``root`` (the workdir) that are not under one of the ``installed`` roots
    (stdlib, site-packages).
    """
    top = app.partition(":")[0].split(".")[0]

    def users(name: str, location: str | None) -> bool:
        if name in ("__main__", top) or name.startswith(top + "."):
            return True
        if location is None or any(_under(location, p) for p in installed):
            return False
        return _under(location, root)

    return [name for name, location in modules.items() if not users(name, location)]


def _under(path: str, directory: str) -> bool:
    return path.startswith(directory.rstrip("/") + "/")


def warm(app: str, *, root: str, load_app: Callable[[str], Any]) -> int:
    """Import what importing ``app`` imports, minus the user's code; how many modules."""
    names = warmable(_imports_of(app, load_app), app=app, root=root, installed=_installed())
    count = 0
    for name in names:
        try:
            importlib.import_module(name)
        except Exception as e:  # a shim or lazy alias; the instance imports it if it needs it
            log.debug("not warming %s: %s", name, e)
        else:
            count += 1
    return count


def _imports_of(app: str, load_app: Callable[[str], Any]) -> dict[str, str | None]:
    """Import ``app`` in a throwaway child: the modules that pulled in, with their files."""
    read_end, write_end = os.pipe()
    flush_stdio()
    pid = os.fork()
    if pid == 0:  # the probe: reports and exits, never returns
        code = 1
        try:
            os.close(read_end)
            before = set(sys.modules)
            load_app(app)
            new = {n: _location(m) for n, m in list(sys.modules.items()) if n not in before}
            with os.fdopen(write_end, "w") as out:
                json.dump(new, out)
            code = 0
        except BaseException:
            traceback.print_exc()
        finally:
            flush_stdio()
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end) as report:
        data = report.read()
    _, status = os.waitpid(pid, 0)
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        raise TemplateError(f"importing {app} failed (exit code {code}); traceback above")
    found: dict[str, str | None] = json.loads(data)
    return found


def _location(module: ModuleType) -> str | None:
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        return os.path.abspath(file)
    path = getattr(module, "__path__", None)  # a namespace package
    first = next(iter(path), None) if path is not None else None
    return os.path.abspath(first) if isinstance(first, str) else None


def _installed() -> list[str]:
    paths = sysconfig.get_paths()
    return sorted({paths[k] for k in ("stdlib", "platstdlib", "purelib", "platlib")})
