"""The agent's pure planner and restart backoff."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from shoal.platform.runtime.reconcile import Plan, Slot, plan, restart_delay


def slot(id: str, rev: str = "hello/v1", state: str = "ready", started: float = 0.0) -> Slot:
    """A slot for tests."""
    return Slot(id=id, revision_key=rev, state=state, started=started)  # type: ignore[arg-type]


def test_starts_missing_instances() -> None:
    """A revision with fewer slots than desired gets the difference started."""
    assert plan({"hello/v1": 3}, [slot("a")]) == Plan(start=(("hello/v1", 2),))


def test_stops_revisions_no_longer_desired() -> None:
    """Slots of a revision that is not desired any more are all stopped."""
    assert plan({}, [slot("a"), slot("b", "world/v1")]).stop == ("a", "b")


def test_stops_worst_first() -> None:
    """Surplus slots go unhealthy first, then starting, then the newest ready one."""
    slots = [
        slot("old", started=1),
        slot("new", started=5),
        slot("sick", state="unhealthy"),
        slot("boot", state="starting"),
    ]
    assert plan({"hello/v1": 1}, slots).stop == ("sick", "boot", "new")


def test_draining_slots_do_not_count() -> None:
    """A draining slot is on its way out: a replacement is started for it."""
    assert plan({"hello/v1": 1}, [slot("a", state="draining")]).start == (("hello/v1", 1),)


def test_nothing_to_do() -> None:
    """Matching counts give an empty plan."""
    assert plan({"hello/v1": 1}, [slot("a")]).empty


@given(
    st.dictionaries(st.sampled_from(["a/1", "b/1", "c/1"]), st.integers(0, 5)),
    st.lists(
        st.tuples(
            st.sampled_from(["a/1", "b/1", "c/1"]),
            st.sampled_from(["ready", "starting", "unhealthy", "draining"]),
        ),
        max_size=12,
    ),
)
def test_plan_reaches_desired_counts(desired: dict[str, int], raw: list[tuple[str, str]]) -> None:
    """Carrying out a plan leaves exactly the desired number of live slots per revision."""
    slots = [slot(f"s{i}", rev, state) for i, (rev, state) in enumerate(raw)]
    p = plan(desired, slots)
    after: dict[str, int] = {}
    for s in slots:
        if s.state != "draining" and s.id not in p.stop:
            after[s.revision_key] = after.get(s.revision_key, 0) + 1
    for rev, n in p.start:
        after[rev] = after.get(rev, 0) + n
    assert {k: v for k, v in after.items() if v} == {k: v for k, v in desired.items() if v}


@given(st.integers(1, 50), st.integers(0, 2**32))
def test_restart_delay_is_bounded_and_grows(failures: int, seed: int) -> None:
    """Backoff stays within [ceiling/2, ceiling] and the ceiling doubles up to the cap."""
    delay = restart_delay(failures, random.Random(seed), base=0.2, cap=30.0)
    ceiling = min(30.0, 0.2 * 2 ** (failures - 1))
    assert ceiling / 2 <= delay <= ceiling
