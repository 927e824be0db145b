"""The view an instance uid gets of the runtime: which directories are covered, what is shown
again under them, and nothing when every path is open to it."""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from shoal.platform.runtime.view import View, plan


@pytest.fixture
def root() -> Iterator[Path]:
    """A directory every uid may enter, as its ancestors are (pytest's own are 0700)."""
    made = Path(tempfile.mkdtemp())
    made.chmod(0o755)
    if any(not p.stat().st_mode & 0o001 for p in made.parents):
        pytest.skip(f"the temporary directory's ancestors are closed: {made}")
    yield made
    shutil.rmtree(made)


def tree(root: Path, mode: int) -> Path:
    """``root/box`` (``mode``) holding ``app/`` (0755) with a module, ``secret`` and ``home/``
    (0700), and a link ``here -> app``."""
    box = root / "box"
    (box / "app").mkdir(parents=True)
    (box / "app" / "mod.py").write_text("")
    (box / "secret").write_text("x")
    (box / "home").mkdir(mode=0o700)
    (box / "here").symlink_to("app")
    box.chmod(mode)
    return box


def test_nothing_to_do_when_every_path_is_open(root: Path) -> None:
    box = tree(root, 0o755)
    assert plan((str(box / "app"), str(box / "nosuch"))) == View()
    assert not plan((str(box / "app"),))


def test_a_closed_ancestor_is_covered_and_only_the_needed_path_shown(root: Path) -> None:
    """``box`` (0700) blocks the way to ``box/app``: box is covered, app alone shown again."""
    box = tree(root, 0o700)
    got = plan((str(box / "app"), str(box / "app" / "mod.py")))
    assert got == View(covers=(str(box),), binds=((str(box / "app"), True),))


def test_a_closed_needed_directory_shows_each_of_its_entries(root: Path) -> None:
    """A needed directory the uid cannot enter (a clone in ``mktemp -d``) is covered and its
    entries shown again one by one, each with its own permissions (``home`` stays 0700)."""
    box = tree(root, 0o700)
    got = plan((str(box),))
    assert got == View(
        covers=(str(box),),
        binds=(
            (str(box / "app"), True),
            (str(box / "home"), True),
            (str(box / "secret"), False),
        ),
        links=((str(box / "here"), "app"),),
    )


def test_the_outermost_closed_directory_is_covered_and_the_way_down_made(root: Path) -> None:
    """With ``root`` closed too, the cover is there; ``box`` and the needed path below are
    made on it (0755) and the needed path shown."""
    box = tree(root, 0o700)
    root.chmod(0o700)
    (box / "app" / "deep").mkdir()
    got = plan((str(box / "app" / "deep"), str(box / "app")))
    assert got == View(
        covers=(str(root),),
        dirs=(str(box),),
        binds=((str(box / "app"), True),),
    )
