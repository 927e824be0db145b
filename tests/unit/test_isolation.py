"""Per-service uids: the range flag, the allocation, the table kept across restarts, and what a
node with or without them lets run as whom."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from shoal.errors import PlatformError, UserError
from shoal.platform.runtime.isolation import (
    Isolation,
    ServiceUids,
    UidRange,
    allocate,
    isolation,
    parse_range,
    runtime_unreachable,
)
from shoal.resources.model import Service


def test_parse_range_reads_first_last_and_off() -> None:
    """``FIRST-LAST`` inclusive (spaces allowed), ``off`` turns uids off."""
    assert parse_range("20000-29999") == UidRange(20000, 29999)
    assert parse_range(" 5 - 5 ") == UidRange(5, 5)
    assert parse_range("OFF") is None


@pytest.mark.parametrize("bad", ["", "20000", "0-10", "10-5", "a-b", "1-4294967295", "-1-5"])
def test_parse_range_refuses_what_is_not_a_range(bad: str) -> None:
    """Root (0), a reversed or open range and the kernel's "no uid" value are refused."""
    with pytest.raises(UserError, match="--instance-uids"):
        parse_range(bad)


def test_allocate_keeps_a_services_uid_and_skips_used_and_real_users() -> None:
    """A service keeps its uid; a new one gets the lowest free that no account has."""
    uids = UidRange(100, 104)
    assigned = {"a": 100, "b": 102}
    assert allocate(assigned, "b", uids, lambda uid: True) == 102
    assert allocate(assigned, "c", uids, lambda uid: uid == 101) == 103


def test_allocate_says_when_the_range_is_used_up() -> None:
    """No free uid is a PlatformError naming the range and the service."""
    with pytest.raises(PlatformError, match=r"100-101.*'c'"):
        allocate({"a": 100, "b": 101}, "c", UidRange(100, 101), lambda uid: False)


def test_service_uids_survive_a_restart_and_forget_uids_outside_the_range(
    tmp_path: Path,
) -> None:
    """The table is written on each new service and read back; an entry outside a narrowed
    range is dropped (that service gets a new uid)."""
    path = tmp_path / "uids.json"
    table = ServiceUids(path, UidRange(40000, 40009))
    first, second = table.uid("a"), table.uid("b")
    assert first != second
    assert ServiceUids(path, UidRange(40000, 40009)).uid("b") == second
    narrowed = ServiceUids(path, UidRange(first, first))
    assert narrowed.uid("a") == first
    with pytest.raises(PlatformError):
        narrowed.uid("b")


def test_isolation_runs_apps_as_the_platform_only_when_it_must(tmp_path: Path) -> None:
    """With uids, a command runs as its service's uid; an app too unless its runtime is out of
    reach (then it runs as the platform's, and its outbound listener admits that uid too)."""
    table = ServiceUids(tmp_path / "uids.json", UidRange(40000, 40009))
    app = Service(name="web", revision="v1", app="m:app")
    command = Service(name="job", revision="v1", command=("true",))
    full = Isolation(table, True, platform=7)
    assert full.user(app) == table.uid("web") and full.user(command) == table.uid("job")
    assert full.callers("web") == {table.uid("web")}
    apps_limited = Isolation(table, False, ("why",), platform=7)
    assert apps_limited.user(app) is None and apps_limited.user(command) == table.uid("job")
    assert apps_limited.callers("web") == {table.uid("web"), 7}
    off = Isolation(None, False, ("why",), platform=7)
    assert off.user(command) is None and off.callers("job") == {7}
    assert off.record() == {"uids": "", "limits": ["why"]}


async def test_isolation_off_says_so(tmp_path: Path) -> None:
    """``--instance-uids off`` is limited isolation, and says why."""
    got = await isolation(None, tmp_path)
    assert got.uids is None and "--instance-uids off" in got.limits[0]


@pytest.mark.skipif(os.geteuid() != 0, reason="only root can start a process as another uid")
async def test_runtime_out_of_reach_of_a_uid_is_named(tmp_path: Path) -> None:
    """An interpreter in a directory only root may enter cannot be run by an instance uid: the
    probe says what stopped it."""
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    python = private / "python3"
    shutil.copy(sys.executable, python)
    why = await runtime_unreachable(40000, str(python))
    assert why is not None and "ermission denied" in why, why
