"""The ``shoal`` command. Thin: parse flags, call one function, render.

Errors are one line on stderr and a non-zero exit code (the ``ShoalError`` tree's), never a
traceback. The commands live in one module per concern; importing them registers them on
:data:`app`, in the order ``shoal --help`` lists them.
"""

from __future__ import annotations

import sys

import typer
from typer._click import exceptions as usage  # typer's own Click (pinned: see .help)

from shoal.cli import components, config, drills, help, logs, security, top  # noqa: F401
from shoal.cli.common import app
from shoal.errors import ShoalError

__all__ = ["app", "main"]

help.install()


def main() -> None:
    """Console-script entry point."""
    try:
        code = app(standalone_mode=False)
    except KeyboardInterrupt:
        sys.exit(130)
    except usage.NoArgsIsHelpError as e:
        if e.format_message().strip():  # (typer's rich help is printed as it is made)
            print(e.format_message())
        sys.exit(0)
    except usage.ClickException as e:  # a usage error: one line, as every other error
        ctx = getattr(e, "ctx", None)
        hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
        message = e.format_message().rstrip(".")
        print(f"error: {message[:1].lower()}{message[1:]}{hint}", file=sys.stderr)
        sys.exit(e.exit_code)
    except typer.Abort:
        sys.exit(1)
    except ShoalError as e:  # a command that did not say it itself
        print(f"error: {e}", file=sys.stderr)
        sys.exit(e.exit_code)
    sys.exit(code if isinstance(code, int) else 0)
