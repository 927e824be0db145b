"""Why an instance's process ended (shoal.platform.runtime.crash)."""

from __future__ import annotations

from pathlib import Path

from shoal.platform.runtime.crash import crash_reason, exit_text, last_lines


def test_exit_text() -> None:
    assert exit_text(1) == "exit code 1"
    assert exit_text(-9) == "signal SIGKILL"
    assert exit_text(None) is None


def test_crash_reason() -> None:
    """An import failure before ready is ``import_error`` at once; a run killed for not getting
    ready is ``not_ready``; exits before ready are a ``crash_loop`` from the second on; an exit
    after being ready is ``exited``."""
    traceback = "Traceback...\nModuleNotFoundError: No module named 'nowhere'"
    assert crash_reason(became_ready=False, timed_out=False, failures=1, output=traceback) == (
        "import_error"
    )
    missing = "AttributeError: module 'app' has no attribute 'nowhere'"
    assert crash_reason(became_ready=False, timed_out=False, failures=1, output=missing) == (
        "import_error"
    )
    assert crash_reason(became_ready=False, timed_out=True, failures=1, output="") == "not_ready"
    assert crash_reason(became_ready=False, timed_out=False, failures=1, output="") == "exited"
    assert crash_reason(became_ready=False, timed_out=False, failures=2, output="") == "crash_loop"
    assert crash_reason(became_ready=True, timed_out=False, failures=0, output=traceback) == (
        "exited"
    )


def test_last_lines(tmp_path: Path) -> None:
    log = tmp_path / "x.log"
    log.write_text("\n".join(f"line {i}" for i in range(100)) + "\n\n")
    assert last_lines(log).splitlines() == [f"line {i}" for i in range(95, 100)]
    assert last_lines(tmp_path / "missing.log") == ""
