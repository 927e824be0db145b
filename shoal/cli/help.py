"""Help that reads like kubectl's.

A command's description is rewrapped to the terminal; its ``Example:`` lines are listed as they
are, under ``Examples:``. typer 0.29 labels every parameter with its Python type (``<str>``,
``<bool>``, ``<list[str]>``) and writes required arguments in braces (``{kind}``); here an
argument is its name in capitals (``KIND``, ``[NAME]``, ``FILES...``) and an option that takes
a value shows its metavar, or its name in capitals (``--output FORMAT``, ``--redis REDIS``); a
flag shows nothing. Installed once, when the CLI is imported (typer is pinned in
requirements.lock; tests/e2e/test_cli.py reads the help of every command).
"""

from __future__ import annotations

import inspect
from typing import Any

from typer.core import TyperArgument, TyperCommand, TyperOption

EXAMPLE = "Example: "


def _argument_name(self: TyperArgument) -> str:
    return str(self.metavar or self.name or "").upper()


def _argument_usage(self: TyperArgument) -> str:
    name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
    return name if self.nargs == 1 else f"{name}..."


def _argument_type(self: TyperArgument, ctx: Any) -> str | None:
    return None  # the name says it


def _option_value(self: TyperOption, ctx: Any) -> str | None:
    if self.is_flag or self.count:
        return None
    return self.metavar or str(self.name or "").upper()


def _help_text(self: TyperCommand, ctx: Any, formatter: Any) -> None:
    text = inspect.cleandoc(self.help or "").partition("\f")[0]
    lines = text.splitlines()
    examples = [line.removeprefix(EXAMPLE) for line in lines if line.startswith(EXAMPLE)]
    prose = "\n".join(line for line in lines if not line.startswith(EXAMPLE)).strip()
    if prose:
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text(prose)
    if examples:
        formatter.write_paragraph()
        with formatter.indentation():
            formatter.write_text("Examples:")
            with formatter.indentation():
                for example in examples:
                    formatter.write(f"{' ' * formatter.current_indent}{example}\n")


def install() -> None:
    """Make typer's help and usage lines read as above."""
    TyperArgument.display_name_raw = property(_argument_name)  # type: ignore[assignment,method-assign]
    TyperArgument._usage_display_name = _argument_usage  # type: ignore[method-assign]
    TyperArgument.display_type_rich = _argument_type  # type: ignore[method-assign,assignment]
    TyperOption.display_type_rich = _option_value  # type: ignore[method-assign]
    TyperCommand.format_help_text = _help_text  # type: ignore[method-assign,assignment]
