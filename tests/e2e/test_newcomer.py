"""The README's "Your first service" transcript, replayed command by command against a fresh
``shoal up`` as a newcomer types it: each ``$`` line (with its ``>`` continuation lines) runs in
bash at the top of a scratch checkout; what it prints (stdout and stderr) must match the lines
that follow — runs of spaces count as one, ``...`` in a line stands for any text, and a line
that is only ``...`` for any number of lines."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.e2e.test_up import Platform, listen_ports

README = Path(__file__).resolve().parents[2] / "README.md"
VENV = Path(__file__).resolve().parents[2] / ".venv"


def transcript(readme: str) -> list[tuple[str, list[str]]]:
    """The (command, expected lines) of the ``console`` blocks under "Your first service"."""
    section = readme.split("## Your first service", 1)[1].split("\n## ", 1)[0]
    steps: list[tuple[str, list[str]]] = []
    for block in re.findall(r"```console\n(.*?)```", section, re.S):
        for line in block.splitlines():
            if line.startswith("$ "):
                steps.append((line[2:], []))
            elif line == ">" or line.startswith("> "):
                command, expected = steps[-1]
                steps[-1] = (command + "\n" + line[2:], expected)
            else:
                steps[-1][1].append(line)
    return steps


def _squeeze(line: str) -> str:
    return " ".join(line.split())


def matches(expected: list[str], seen: list[str]) -> bool:
    """Whether the ``seen`` lines match the ``expected`` ones (see the module)."""
    pattern = "".join(
        r"(?:[^\n]*\n)*?"
        if line == "..."
        else ".*".join(map(re.escape, _squeeze(line).split("..."))) + r"\n"
        for line in expected
    )
    text = "".join(_squeeze(line) + "\n" for line in seen)
    return re.fullmatch(pattern, text) is not None


def test_the_matcher() -> None:
    assert matches(["a ... c", "..."], ["a   b c", "x", "y"])
    assert matches(["revision ..."], ["revision 12"])
    assert not matches(["500"], ["200"])
    assert not matches(["a"], ["a", "b"])
    assert matches(["...", "shop v2 ... x", "..."], ["h", "shop v2 id vm x", "t"])


def test_transcript_parses() -> None:
    steps = transcript(README.read_text())
    assert len(steps) > 10 and steps[0][0] == "mkdir -p shop"
    assert steps[1][0].startswith("cat > shop/app.py <<'EOF'\n") and steps[1][0].endswith("\nEOF")


@pytest.mark.timeout(240)
def test_the_readme_newcomer_transcript_runs_as_written(tmp_path: Path) -> None:
    platform = Platform(home=tmp_path / "home", port=listen_ports(), mesh_port=listen_ports())
    work = tmp_path / "checkout"
    work.mkdir()
    (work / ".venv").symlink_to(VENV)
    platform.start()
    try:
        env = {**platform.env, "PATH": os.environ["PATH"]}
        for command, expected in transcript(README.read_text()):
            ran = command.replace("localhost:8080", f"localhost:{platform.port}")
            done = subprocess.run(
                ["bash", "-c", ran],
                cwd=work,
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=60,
            )
            seen = done.stdout.splitlines()
            assert matches(expected, seen), (
                f"$ {command}\nexpected:\n{expected}\nsaw:\n{done.stdout}"
            )
    finally:
        platform.stop()
