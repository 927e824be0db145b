"""``shoal top``'s frame: the services table with each revision's share and instances, the
events, and a hint when nothing is deployed."""

from __future__ import annotations

from typing import Any

from rich.console import Console

from shoal.cli.top import view


def frame(overview: dict[str, Any]) -> str:
    console = Console(record=True, width=120)
    console.print(view(overview))
    return console.export_text()


BASE: dict[str, Any] = {"revision": 3, "nodes": ["n1"], "proxies": ["gateway"], "events": []}


def test_services_revisions_and_events() -> None:
    hello = {
        "name": "hello",
        "rps": 49.8,
        "error_pct": 0.0,
        "p50_ms": 5.0,
        "p99_ms": 50.0,
        "revisions": [
            {"revision": "v1", "traffic": 90.0, "instances": [{"id": "a1", "health": "ok"}]},
            {"revision": "v2", "traffic": 10.0, "instances": [{"id": "b2", "health": "ejected"}]},
        ],
    }
    event = {"time": 0.0, "kind": "ejection", "text": "hello/b2 ejected (consecutive_5xx)"}
    text = frame({**BASE, "services": [hello], "events": [event]})
    lines = [line.split() for line in text.splitlines()]
    assert ["hello", "49.8", "0.0", "5", "ms", "50", "ms", "v1", "90%", "●", "a1"] in lines
    assert ["v2", "10%", "●", "b2"] in lines
    assert "hello/b2 ejected (consecutive_5xx)" in text
    assert "no service yet" not in text


def test_nothing_deployed_says_what_to_do() -> None:
    text = frame({**BASE, "services": []})
    assert "no service yet: shoal apply -f deploy/examples/hello-world" in text
    assert "none yet" in text
