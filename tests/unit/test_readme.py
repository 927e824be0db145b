"""The README's manifests are valid: every YAML block that declares an ``apiVersion`` parses
as ``shoal apply`` would parse it (a user pastes them)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from shoal.resources.manifest import parse_text

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
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


@pytest.mark.parametrize("readme", ["README.md", "bench/README.md", "deploy/multihost/README.md"])
def test_every_relative_link_in_a_readme_is_in_the_repository(readme: str) -> None:
    """A link to a file goes to one in the checkout (never outside it, as ``../shared`` was)."""
    path = ROOT / readme
    links = re.findall(r"\]\(([^)#\s]+)", path.read_text())
    local = [link for link in links if "://" not in link and not link.startswith("mailto:")]
    for link in local:
        target = (path.parent / link).resolve()
        assert target.is_relative_to(ROOT) and target.exists(), f"{readme}: {link}"
