"""Why an instance's process ended, in words a person can act on (pure).

:func:`crash_reason` names it (``import_error`` — the app's module could not be imported —,
``not_ready`` — it ran but never passed its readiness check in time —, ``crash_loop`` — it
keeps exiting before it is ever ready —, ``exited``), :func:`exit_text` says how it ended and
:func:`last_lines` keeps the end of its output (where the traceback is).
"""

from __future__ import annotations

import signal
from pathlib import Path

__all__ = ["crash_reason", "exit_text", "last_lines"]

IMPORT_FAILURES = (
    "ModuleNotFoundError",
    "ImportError",
    "No module named",
    "cannot import name",
    "AttributeError: module",  # the module imports, the app object named is not there
)
OUTPUT_LINES = 5
OUTPUT_BYTES = 1_000
_READ = 8_192  # bytes read from the end of the log


def exit_text(returncode: int | None) -> str | None:
    """``exit code N`` or ``signal NAME`` (None: unknown, e.g. a process a template forked)."""
    if returncode is None:
        return None
    if returncode < 0:
        try:
            return f"signal {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal {-returncode}"
    return f"exit code {returncode}"


def crash_reason(*, became_ready: bool, timed_out: bool, failures: int, output: str) -> str:
    """The reason for one run that ended: ``failures`` runs in a row ended before ready."""
    if not became_ready and any(marker in output for marker in IMPORT_FAILURES):
        return "import_error"
    if timed_out:
        return "not_ready"
    if not became_ready and failures >= 2:
        return "crash_loop"
    return "exited"


def last_lines(log: Path) -> str:
    """The last :data:`OUTPUT_LINES` non-empty lines of ``log`` (at most :data:`OUTPUT_BYTES`);
    "" if it cannot be read."""
    try:
        with log.open("rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - _READ))
            data = f.read()
    except OSError:
        return ""
    lines = [line for line in data.decode("utf-8", "replace").splitlines() if line.strip()]
    return "\n".join(lines[-OUTPUT_LINES:])[-OUTPUT_BYTES:]
