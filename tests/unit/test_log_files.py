"""Instance logs stay within bounds: live ones cut at a size, gone ones kept for a while."""

from __future__ import annotations

from pathlib import Path

from shoal.mesh.access_log import cut_file as cut
from shoal.platform.runtime.log_files import LogFile, plan

NOW = 1_000_000.0
DAY = 24 * 3600.0


def test_a_live_log_past_its_size_is_cut_and_a_small_one_is_not() -> None:
    files = [LogFile("a.log", 11, NOW), LogFile("b.log", 10, NOW), LogFile("c.log", 99, NOW)]
    todo = plan(files, {"a.log", "b.log"}, NOW, max_bytes=10)
    assert todo.cut == ("a.log",) and todo.remove == ()  # c.log is gone but recent


def test_gone_logs_beyond_the_newest_few_or_too_old_are_removed_with_their_rotated_part() -> None:
    files = [LogFile(f"g{i}.log", 1, NOW - i) for i in range(5)]
    files += [LogFile("g4.log.1", 1, NOW), LogFile("old.log", 1, NOW - DAY - 1)]
    files += [LogFile("live.log", 1, NOW - 2 * DAY), LogFile("stray.log.1", 1, NOW)]
    todo = plan(files, {"live.log"}, NOW, keep_gone=3, max_age=DAY)
    assert todo.remove == ("g3.log", "g4.log", "g4.log.1", "old.log", "stray.log.1")
    assert todo.cut == ()


def test_cutting_keeps_the_writer_appending_to_the_same_file(tmp_path: Path) -> None:
    """The writer's open file (opened for appending, as an instance's stdout is) goes on at
    the start of the emptied file; the old content is in ``.1``."""
    log = tmp_path / "x.log"
    with log.open("ab", buffering=0) as writer:
        writer.write(b"first\n")
        cut(log)
        writer.write(b"second\n")
    assert log.read_bytes() == b"second\n"
    assert (tmp_path / "x.log.1").read_bytes() == b"first\n"
