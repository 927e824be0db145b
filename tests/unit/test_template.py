"""The pure decisions around templates: what to warm, what a request may say, probe pacing."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.coldstart import percentile
from shoal.platform.runtime.instance import PROBE_EVERY, PROBE_FIRST, probe_delay, templates_enabled
from shoal.platform.runtime.template_pool import fingerprint
from shoal.platform.runtime.template_protocol import SpawnRequest, parse_request
from shoal.platform.runtime.template_warmup import warmable
from shoal.resources.model import Service

INSTALLED = ["/usr/lib/python3.11", "/venv/lib/python3.11/site-packages"]


def test_warmable_keeps_dependencies_and_leaves_the_users_code() -> None:
    """Stdlib and site-packages modules are warmed; the app's package and other modules under
    the workdir are left for each instance to import with its own environment."""
    modules = {
        "app": "/srv/hello/app.py",
        "helpers": "/srv/hello/helpers.py",
        "aiohttp": "/venv/lib/python3.11/site-packages/aiohttp/__init__.py",
        "http.cookies": "/usr/lib/python3.11/http/cookies.py",
        "_cffi_backend": None,
        "elsewhere": "/opt/shared/elsewhere.py",
    }
    got = warmable(modules, app="app:hello", root="/srv/hello", installed=INSTALLED)
    assert got == ["aiohttp", "http.cookies", "_cffi_backend", "elsewhere"]


def test_warmable_leaves_the_apps_whole_package() -> None:
    """``pkg.web:app`` leaves ``pkg`` and every ``pkg.*`` module to the instance, wherever they
    live, and a site-packages directory under the workdir still counts as installed."""
    modules = {
        "pkg": "/venv/lib/python3.11/site-packages/pkg/__init__.py",
        "pkg.web": "/venv/lib/python3.11/site-packages/pkg/web.py",
        "pkgextra": "/srv/x/.venv/lib/python3.11/site-packages/pkgextra.py",
        "__main__": None,
    }
    got = warmable(
        modules,
        app="pkg.web:app",
        root="/srv/x",
        installed=[*INSTALLED, "/srv/x/.venv/lib/python3.11/site-packages"],
    )
    assert got == ["pkgextra"]


def test_warmable_with_root_slash_still_warms_installed_modules() -> None:
    """An agent running in / (no workdir) still warms stdlib and site-packages."""
    modules = {"json.decoder": "/usr/lib/python3.11/json/decoder.py", "mine": "/home/u/mine.py"}
    assert warmable(modules, app="x:app", root="/", installed=INSTALLED) == ["json.decoder"]


def test_parse_request_accepts_a_whole_request() -> None:
    """A port and a string environment make a request."""
    data = json.dumps({"port": 8001, "env": {"PORT": "8001"}}).encode()
    assert parse_request(data) == SpawnRequest(port=8001, env={"PORT": "8001"})


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ([], "request"),
        ({"port": 0, "env": {}}, "port"),
        ({"port": True, "env": {}}, "port"),
        ({"port": "80", "env": {}}, "port"),
        ({"port": 80, "env": {"A": 1}}, "env"),
    ],
)
def test_parse_request_names_the_bad_field(doc: object, field: str) -> None:
    """A malformed request is a ValueError that starts with the field at fault."""
    with pytest.raises(ValueError, match=f"^{field}:"):
        parse_request(json.dumps(doc).encode())


def test_fingerprint_follows_what_a_template_imports_with() -> None:
    """The same app, workdir and env give the same template; a changed env another."""
    a = Service(name="s", revision="v1", app="app:a", workdir="/w", env=(("X", "1"),))
    same = Service(name="s", revision="v1", app="app:a", workdir="/w", env=(("X", "1"),))
    other = Service(name="s", revision="v1", app="app:a", workdir="/w", env=(("X", "2"),))
    assert fingerprint(a) == fingerprint(same) != fingerprint(other)


def test_probe_delay_starts_fast_and_backs_off() -> None:
    """Probes start every 5 ms, then wait a tenth of the time waited, at most 100 ms."""
    assert probe_delay(0.0) == PROBE_FIRST
    assert probe_delay(0.2) == pytest.approx(0.02)
    assert probe_delay(30.0) == PROBE_EVERY


@given(st.floats(min_value=0, max_value=1e6), st.floats(min_value=0, max_value=1e6))
def test_probe_delay_is_bounded_and_monotonic(a: float, b: float) -> None:
    """The delay stays within its bounds and never shrinks as the wait grows."""
    lo, hi = sorted((a, b))
    assert PROBE_FIRST <= probe_delay(lo) <= probe_delay(hi) <= PROBE_EVERY


@pytest.mark.parametrize(
    ("value", "enabled"),
    [(None, True), ("1", True), ("yes", True), ("0", False), ("off", False), (" False ", False)],
)
def test_templates_switch(value: str | None, enabled: bool) -> None:
    """SHOAL_TEMPLATES turns templates off with 0/false/no/off; anything else leaves them on."""
    env = {} if value is None else {"SHOAL_TEMPLATES": value}
    assert templates_enabled(env) is enabled


def test_percentile_is_nearest_rank() -> None:
    """The bench's percentiles: nearest rank, so p99 of 20 samples is the largest."""
    values = [float(v) for v in range(1, 21)]
    assert (percentile(values, 50), percentile(values, 90), percentile(values, 99)) == (
        10.0,
        18.0,
        20.0,
    )
