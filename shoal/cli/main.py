"""The ``shoal`` command. Thin: parse flags, call one function, render.

Errors are one line on stderr and a non-zero exit code (the ``ShoalError`` tree's), never a
traceback. The commands live in one module per concern; importing them registers them on
:data:`app`, in the order ``shoal --help`` lists them.
"""

from __future__ import annotations

import sys

from shoal.cli import components, config, drills, logs, security  # noqa: F401  (registration)
from shoal.cli.common import app

__all__ = ["app", "main"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)
