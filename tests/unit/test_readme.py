"""The README's manifests are valid: every YAML block that declares an ``apiVersion`` parses
as ``shoal apply`` would parse it (a user pastes them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shoal.resources.manifest import parse_text

README = Path(__file__).resolve().parents[2] / "README.md"
BLOCKS = [
    block
    for block in re.findall(r"```yaml\n(.*?)```", README.read_text(), re.S)
    if "apiVersion:" in block
]


def test_the_readme_has_manifests() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize("block", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_each_readme_manifest_parses(block: str) -> None:
    assert parse_text(block, file="README.md")
