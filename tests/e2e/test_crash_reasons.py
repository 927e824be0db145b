"""A revision that cannot start, on a real ``shoal up``: ``apply --wait`` fails (exit 5) in one
line naming the revision and why (the app's import error, from its output), and ``shoal
status`` shows its instance's restarts, last exit and when it is started again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.e2e.test_up import Platform, ready_count
from tests.e2e.test_up import platform as platform
from tests.support.cluster import EXAMPLE
from tests.support.wait import eventually_sync


@pytest.mark.timeout(120)
def test_apply_wait_names_a_revision_that_cannot_start(platform: Platform, tmp_path: Path) -> None:
    eventually_sync(
        lambda: ready_count(platform), "5 ready instances", until=lambda n: n == 5, timeout=30
    )
    broken = tmp_path / "broken.yaml"
    broken.write_text(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: broken}\n"
        f"spec: {{app: 'nowhere:app', workdir: {EXAMPLE}, revision: v1}}\n"
    )
    result = platform.shoal("apply", "-f", str(broken), "--wait")
    assert result.returncode == 5, (result.stdout, result.stderr)
    message = result.stderr.strip()
    assert "\n" not in message and message.startswith("error: not ready: broken/v1: import_error")
    assert "No module named" in message, message
    status = platform.status()
    [instance] = [i for i in status["instances"] if i["service"] == "broken"]
    assert instance["restarts"] >= 1 and instance["reason"] == "import_error"
    assert "No module named" in instance["output"]

    def backing_off() -> tuple[dict[str, Any], str]:
        [i] = [i for i in platform.status()["instances"] if i["service"] == "broken"]
        return i, platform.shoal("status").stdout

    # Between two starts it says when the next one is (Kubernetes' CrashLoopBackOff).
    _, table = eventually_sync(
        backing_off,
        "a next start shown",
        until=lambda seen: seen[0]["retry_at"] is not None and "next start in" in seen[1],
    )
    assert "RESTARTS" in table and "import_error" in table
