"""Template processes for real: they fork instances that serve, take signals and are reaped."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest

from shoal.platform.runtime.instance import InstanceSlot
from shoal.platform.runtime.template_pool import Templates
from shoal.platform.runtime.template_protocol import TemplateError
from shoal.resources.model import HealthCheck, Service
from shoal.store.embedded import free_port
from tests.support.cluster import EXAMPLE
from tests.support.wait import eventually

HELLO = Service(
    name="hello",
    revision="v1",
    app="app:hello",
    workdir=str(EXAMPLE),
    health=HealthCheck(path="/healthz", interval=0.2, timeout=0.5),
)


def ppid_and_state(pid: int) -> tuple[int, str] | None:
    """``pid``'s parent and state letter from /proc, or None once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return int(fields[1]), fields[0]


def parent(pid: int) -> int | None:
    """``pid``'s parent, or None once it is gone."""
    info = ppid_and_state(pid)
    return None if info is None else info[0]


def children(pid: int) -> dict[int, str]:
    """The processes whose parent is ``pid``, with their state letters ('Z': zombie)."""
    found = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        info = ppid_and_state(int(stat.parent.name))
        if info is not None and info[0] == pid:
            found[int(stat.parent.name)] = info[1]
    return found


def gone(pid: int) -> bool:
    """No such process (exited and reaped), or only its zombie left."""
    info = ppid_and_state(pid)
    return info is None or info[1] == "Z"


async def fetch(port: int, path: str = "/") -> tuple[int, dict[str, str], str]:
    """One GET to a local instance: status, headers, body."""
    async with aiohttp.ClientSession() as s:
        async with s.get(f"http://127.0.0.1:{port}{path}") as r:
            return r.status, dict(r.headers), await r.text()


async def serving(port: int, timeout: float = 10.0) -> tuple[int, dict[str, str], str]:
    """The first answer of an instance that is starting."""
    return await eventually(
        lambda: fetch(port),
        f"an answer on port {port}",
        timeout=timeout,
        interval=0.01,
        ignore=(aiohttp.ClientConnectionError,),
    )


def refuses(port: int) -> bool:
    """Nothing listens on ``port`` any more."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
    except OSError:
        return True
    return False


def env_for(port: int, instance: str) -> dict[str, str]:
    """An instance's environment, as a slot builds it."""
    return {
        **os.environ,
        "PORT": str(port),
        "SHOAL_SERVICE": "hello",
        "SHOAL_REVISION": "v1",
        "SHOAL_INSTANCE": instance,
    }


@pytest.fixture
async def templates() -> AsyncIterator[Templates]:
    """An agent's template registry, closed at the end."""
    t = Templates()
    try:
        yield t
    finally:
        await t.close()


async def spawn(templates: Templates, tmp_path: Path, instance: str) -> tuple[int, int, int]:
    """Fork an instance of hello from its template: port, pid, pidfd."""
    port = free_port()
    pid, pidfd = await templates.spawn(
        HELLO,
        template_env={**os.environ, "SHOAL_SERVICE": "hello", "SHOAL_REVISION": "v1"},
        env=env_for(port, instance),
        port=port,
        log=tmp_path / f"{instance}.log",
    )
    return port, pid, pidfd


async def _mesh_url() -> str:
    return "http://127.0.0.1:9"  # these instances never call out


def hello_slot(
    templates: Templates, log_dir: Path, on_change: Callable[[], None] = lambda: None
) -> InstanceSlot:
    """An InstanceSlot of the hello example app, forked from ``templates`` when enabled."""
    return InstanceSlot(
        HELLO,
        node="n1",
        mesh_url=_mesh_url,
        log_dir=log_dir,
        on_change=on_change,
        rng=random.Random(1),
        templates=templates,
    )


@pytest.mark.timeout(60)
async def test_forked_instance_serves_with_its_own_env_and_takes_signals(
    templates: Templates, tmp_path: Path
) -> None:
    """A forked instance serves HTTP on its port with its own environment (the app module reads
    SHOAL_INSTANCE at import), leads its own process group so killpg reaches its fault switch,
    and ends gracefully (exit code 0) on SIGTERM."""
    port, pid, pidfd = await spawn(templates, tmp_path, "first")
    try:
        template = templates.running()[HELLO.key]
        assert parent(pid) == template.pid
        assert os.getpgid(pid) == pid and os.getsid(pid) == pid
        status, headers, body = await serving(port)
        assert (status, body, headers["x-instance"]) == (200, "Hello, World!\n", "first")

        os.killpg(pid, signal.SIGUSR1)  # the drills' "error" fault, as the agent sends it
        await eventually(
            lambda: fetch(port), "the fault on: 503", until=lambda a: a[0] == 503, timeout=5
        )
        os.killpg(pid, signal.SIGUSR1)
        await eventually(
            lambda: fetch(port), "the fault off: 200", until=lambda a: a[0] == 200, timeout=5
        )

        second_port, second, second_fd = await spawn(templates, tmp_path, "second")
        os.close(second_fd)
        assert (await serving(second_port))[1]["x-instance"] == "second"
        os.killpg(second, signal.SIGKILL)

        os.killpg(pid, signal.SIGTERM)
        await eventually(lambda: gone(pid) and gone(second), "both instances gone")
        await eventually(
            lambda: f"instance {pid} exited with code 0" in template.log.read_text(),
            "the template logging the first instance's clean exit",
        )
        assert f"instance {second} exited with code -9" in template.log.read_text()
    finally:
        os.close(pidfd)


@pytest.mark.timeout(60)
async def test_slot_watches_a_forked_instance_restarts_it_and_drains_it(tmp_path: Path) -> None:
    """An InstanceSlot gets its app process from the template, sees a SIGKILL through the pidfd
    and restarts it, stops it with SIGTERM; the template reaps every instance (no zombie) and
    closing the templates leaves no process behind."""
    templates = Templates()
    changes: list[str] = []
    slot: InstanceSlot | None = None

    def on_change() -> None:
        assert slot is not None
        changes.append(slot.state)

    slot = hello_slot(templates, tmp_path / "logs", on_change)
    run = asyncio.ensure_future(slot.run())
    try:
        await eventually(lambda: slot.state == "ready", "the slot ready")
        template = templates.running()[HELLO.key]
        first = slot.pid
        assert first is not None and parent(first) == template.pid
        first_port = slot.port
        assert (await fetch(slot.port))[0] == 200

        os.killpg(first, signal.SIGKILL)
        await eventually(
            lambda: slot.state == "ready" and slot.pid != first, "the slot ready again, restarted"
        )
        assert "unhealthy" in changes  # the exit was seen, and reported, before the restart
        assert refuses(first_port) and gone(first)
        second = slot.pid
        assert second is not None and parent(second) == template.pid
        assert (await fetch(slot.port))[2] == "Hello, World!\n"

        await slot.stop(drain_delay=0.0, grace=5.0)
        await run
        assert gone(second)
        await eventually(  # reaped: not even a zombie
            lambda: children(template.pid) == {}, "the template without children"
        )
        # no descriptor left behind by two forks: stdio, the control connection, the wakeup pair
        assert len(os.listdir(f"/proc/{template.pid}/fd")) == 6
    finally:
        if not run.done():
            await slot.stop(drain_delay=0.0, grace=1.0)
            await run
        await templates.close()
    assert template.process.returncode == 0
    assert ppid_and_state(template.pid) is None


@pytest.mark.timeout(60)
async def test_template_exits_when_the_agent_hangs_up_and_its_instances_live_on(
    templates: Templates, tmp_path: Path
) -> None:
    """Closing the templates (the agent hanging up) ends the template process at once, but not
    the instances it forked: they belong to the agent's slots, which stop them."""
    port, pid, pidfd = await spawn(templates, tmp_path, "survivor")
    template = templates.running()[HELLO.key]
    try:
        await serving(port)
        started = time.monotonic()
        await templates.close()
        assert template.process.returncode == 0 and time.monotonic() - started < 2
        assert (await fetch(port))[0] == 200
    finally:
        os.killpg(pid, signal.SIGTERM)
        os.close(pidfd)
    await eventually(lambda: refuses(port), f"nothing listening on port {port}")


@pytest.mark.timeout(60)
async def test_retire_stops_the_templates_of_revisions_gone(
    templates: Templates, tmp_path: Path
) -> None:
    """Retiring keeps the templates of the revisions still wanted and stops the others."""
    port, pid, pidfd = await spawn(templates, tmp_path, "one")
    os.close(pidfd)
    template = templates.running()[HELLO.key]
    await templates.retire(keep={HELLO.key})
    assert templates.running() == {HELLO.key: template}
    await templates.retire(keep=set())
    assert templates.running() == {} and template.process.returncode == 0
    os.killpg(pid, signal.SIGTERM)
    await eventually(lambda: refuses(port), f"nothing listening on port {port}")


@pytest.mark.timeout(60)
async def test_unimportable_app_fails_in_the_template_once(
    templates: Templates, tmp_path: Path
) -> None:
    """An app that cannot be imported stops its template (import error in the template's log);
    the failure is remembered, so the next instances start without a template at once."""
    broken = Service(name="broken", revision="v1", app="no_such_module:app")
    env = {**os.environ}
    with pytest.raises(TemplateError, match=r"template-broken-v1\.log"):
        await templates.spawn(broken, template_env=env, env=env, port=1, log=tmp_path / "a.log")
    assert "ModuleNotFoundError" in (tmp_path / "template-broken-v1.log").read_text()
    started = time.monotonic()
    with pytest.raises(TemplateError):
        await templates.spawn(broken, template_env=env, env=env, port=1, log=tmp_path / "b.log")
    assert time.monotonic() - started < 0.1
    assert templates.running() == {}


@pytest.mark.timeout(60)
async def test_a_dependency_with_a_thread_makes_the_template_refuse(
    templates: Templates, tmp_path: Path
) -> None:
    """A dependency that starts a thread when imported makes forking unsafe: the template
    refuses to serve rather than fork a process with a half-copied thread."""
    lib, work = tmp_path / "lib", tmp_path / "work"
    lib.mkdir()
    work.mkdir()
    (lib / "busy.py").write_text(
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True)"
        ".start()\n"
    )
    (work / "web.py").write_text("import busy\n\nasync def app(scope, receive, send):\n    pass\n")
    service = Service(name="threads", revision="v1", app="web:app", workdir=str(work))
    env = {**os.environ, "PYTHONPATH": str(lib)}
    with pytest.raises(TemplateError):
        await templates.spawn(service, template_env=env, env=env, port=1, log=tmp_path / "x.log")
    assert "forking is unsafe" in (tmp_path / "template-threads-v1.log").read_text()


@pytest.mark.timeout(60)
async def test_templates_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """With SHOAL_TEMPLATES=0 an app instance is a fresh interpreter, the agent's own child."""
    monkeypatch.setenv("SHOAL_TEMPLATES", "0")
    templates = Templates()

    slot = hello_slot(templates, tmp_path)
    run = asyncio.ensure_future(slot.run())
    try:
        await eventually(lambda: slot.state == "ready", "the slot ready")
        assert slot.pid is not None and parent(slot.pid) == os.getpid()
        assert templates.running() == {}
    finally:
        await slot.stop(drain_delay=0.0, grace=5.0)
        await run
        await templates.close()


@pytest.mark.timeout(60)
async def test_a_dead_template_is_replaced(tmp_path: Path) -> None:
    """When a template dies, its instances go on serving, and the slot's next instance comes
    from a new template (or, if the death is not known yet, a fresh interpreter)."""
    templates = Templates()

    slot = hello_slot(templates, tmp_path)
    run = asyncio.ensure_future(slot.run())
    try:
        await eventually(lambda: slot.state == "ready", "the slot ready")
        first, port = slot.pid, slot.port
        assert first is not None
        dead = templates.running()[HELLO.key]
        os.kill(dead.pid, signal.SIGKILL)
        await dead.process.wait()
        assert (await fetch(port))[0] == 200  # the orphaned instance still serves
        os.killpg(first, signal.SIGKILL)
        await eventually(
            lambda: slot.state == "ready" and slot.pid != first, "the slot ready again, restarted"
        )
        assert slot.pid is not None and parent(slot.pid) in (
            os.getpid(),
            *(t.pid for t in templates.running().values()),
        )
        assert templates.running()[HELLO.key].pid != dead.pid
    finally:
        await slot.stop(drain_delay=0.0, grace=5.0)
        await run
        await templates.close()
