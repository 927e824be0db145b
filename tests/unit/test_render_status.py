"""``shoal status`` lists instances while they are few, and counts them when they are many."""

from __future__ import annotations

from shoal.cli import render
from shoal.platform.control.client import Status
from shoal.resources.endpoint import Endpoint


def _status(count: int) -> Status:
    instances = [
        Endpoint(
            id=f"i{i:05d}",
            service=f"s{i % 3}",
            revision="v1",
            node="n1",
            address="127.0.0.1",
            port=20000 + i,
            state="ready" if i % 7 else "starting",  # type: ignore[arg-type]
            reason=None if i % 7 else "not_ready",
        )
        for i in range(count)
    ]
    return Status(revision=3, nodes={"n1": {}}, services=[], instances=instances)


def _printed(st: Status, **kw: bool) -> str:
    with render.console.capture() as captured:
        render.status(st, **kw)
    return captured.get()


def test_few_instances_are_listed_each() -> None:
    text = _printed(_status(render.SUMMARY_OVER))
    assert "i00001" in text and "counted" not in text


def test_many_instances_are_counted_by_node_and_state() -> None:
    st = _status(render.SUMMARY_OVER * 3)  # 300: s0, s1, s2 have 100 each
    text = _printed(st)
    assert "i00001" not in text and "instances: 300, counted" in text
    starting = sum(1 for e in st.instances if e.state == "starting")
    counted = text[text.index("counted") :]
    node = next(line for line in counted.splitlines() if line.startswith("n1 "))
    assert node.split()[:3] == ["n1", "300", str(300 - starting)]
    s0 = sum(1 for e in st.instances if e.service == "s0" and e.state == "starting")
    row = next(line for line in text.splitlines() if line.startswith("s0/v1 "))
    assert f"{s0} starting" in row and f"{s0} not_ready" in row
    assert "i00001" in _printed(st, every=True)  # --instances
