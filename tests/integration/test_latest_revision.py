"""Knative's revision model: a Service no VirtualService splits sends all its traffic to its
latest ready revision. Under steady traffic through the gateway, a changed spec (a new hash
revision) takes over once ready without a failed request, the old revision scales to zero and
is deleted after the retention; a broken spec gets no request while the revision before it
goes on serving; a tag host reaches a revision with no traffic."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from shoal.platform.control.scaling import AutoscaleSettings
from shoal.resources.manifest import parse_text
from shoal.resources.model import Service
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import EXAMPLE, Cluster, ready, running_cluster
from tests.support.wait import eventually

pytestmark = pytest.mark.timeout(150)


def hello(env: str, app: str = "app:hello") -> str:
    """hello without a revision name (named by its spec's hash), ``env`` making each spec new."""
    return f"""
apiVersion: shoal/v1
kind: Service
metadata: {{name: hello}}
spec:
  app: {app}
  workdir: {EXAMPLE}
  env: {{GREETING: "{env}"}}
  health: {{path: /healthz}}
"""


async def revision_of(cluster: Cluster, text: str) -> str:
    """Apply ``text``; the revision it made."""
    resources = parse_text(text)
    await cluster.client.apply(resources)
    service = resources[0]
    assert isinstance(service, Service)
    return service.revision


async def test_the_latest_ready_revision_takes_over_and_a_broken_one_gets_nothing(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    answers: list[tuple[int, str | None]] = []
    stop = asyncio.Event()
    answered = asyncio.Condition()

    async def traffic(url: str) -> None:
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                async with session.get(url, headers={"Host": "hello"}) as answer:
                    await answer.read()
                    answers.append((answer.status, answer.headers.get("x-version")))
                async with answered:
                    answered.notify_all()
                # Paced by the stop event's deadline: ~50 requests a second per client.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.02):
                        await stop.wait()

    async def more_answers(count: int) -> int:
        """Wait (30 s at most) for ``count`` more answers; where they start in ``answers``."""
        start = len(answers)
        async with asyncio.timeout(30), answered:
            await answered.wait_for(lambda: len(answers) >= start + count)
        return start

    settings = AutoscaleSettings(retire_after=1.0, keep_retired=0, delete_retired_after=1.0)
    async with running_cluster(redis, redis_url, keys, tmp_path, autoscale=settings) as cluster:
        first = await revision_of(cluster, hello("one"))
        await cluster.instances(lambda found: bool(ready(found, "hello")))
        # Two clients, each ~50 requests a second: ~100 a second in all.
        loads = [asyncio.create_task(traffic(cluster.gateway_url + "/")) for _ in range(2)]
        try:
            second = await revision_of(cluster, hello("two"))
            await cluster.instances(
                lambda found: any(e.revision == second for e in ready(found, "hello"))
            )
            # Served by the new revision alone once its instance is ready; the old one retires.
            await cluster.instances(
                lambda found: not any(e.revision == first for e in found), timeout=30
            )
            seen = await more_answers(25)
            assert {version for _, version in answers[seen:]} == {second}

            broken_spec = parse_text(hello("three", app="nowhere:app"))
            broken = await revision_of(cluster, hello("three", app="nowhere:app"))
            await cluster.instances(lambda found: any(e.revision == broken for e in found))
            [service] = broken_spec
            assert isinstance(service, Service)
            failed = await cluster.client.wait_ready([service], 30)
            why = failed[f"hello/{broken}"]
            assert why.startswith("import_error after") and "No module named" in why, why
            seen = await more_answers(50)
            # Retired and at zero for the retention, the first revision is deleted.
            await eventually(
                cluster.client.services,
                "the first revision deleted",
                until=lambda found: first not in {s.revision for s in found},
            )
        finally:
            stop.set()
            await asyncio.gather(*loads)
        versions = Counter(version for _, version in answers)
        assert {status for status, _ in answers} == {200}, Counter(answers)
        assert broken not in versions and set(versions) == {first, second}, versions
        assert {version for _, version in answers[seen:]} == {second}


def named(revision: str) -> str:
    """hello with an explicit revision name."""
    return hello(revision).replace("  env:", f"  revision: {revision}\n  env:")


async def test_a_tag_host_reaches_a_revision_with_no_traffic(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """``shoal tag hello candidate v1``: ``candidate-hello`` reaches v1 while ``hello`` (no
    VirtualService) goes to the latest ready revision, v2; moving the tag moves the host;
    removing it leaves no such host."""

    async def version(cluster: Cluster, host: str) -> tuple[int, str | None]:
        async with aiohttp.ClientSession() as session:
            async with session.get(cluster.gateway_url + "/", headers={"Host": host}) as r:
                await r.read()
                return r.status, r.headers.get("x-version")

    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await revision_of(cluster, named("v1"))
        await revision_of(cluster, named("v2"))
        await cluster.instances(
            lambda found: {e.revision for e in ready(found, "hello")} == {"v1", "v2"}
        )
        changed = await cluster.client.tag("hello", "v1", "candidate")
        assert [s.key for s in changed] == ["hello/v1"]
        await settle(cluster)
        shown = {r["revision"]: r for r in await cluster.client.revisions("hello")}
        assert (shown["v1"]["state"], shown["v1"]["traffic"], shown["v1"]["tags"]) == (
            "not routed",
            0.0,
            ["candidate"],
        )
        assert (shown["v2"]["state"], shown["v2"]["traffic"]) == ("routed", 100.0)
        assert {await version(cluster, "hello") for _ in range(5)} == {(200, "v2")}
        assert {await version(cluster, "candidate-hello") for _ in range(5)} == {(200, "v1")}
        await cluster.client.tag("hello", "v2", "candidate")  # moved: v1 loses it
        await settle(cluster)
        assert await version(cluster, "candidate-hello") == (200, "v2")
        await cluster.client.tag("hello", None, "candidate", remove=True)
        await settle(cluster)
        status, _ = await version(cluster, "candidate-hello")
        assert status == 404


async def settle(cluster: Cluster) -> None:
    """Until every proxy has the store's current revision."""
    revision = await cluster.client.config.revision()
    assert not await cluster.client.wait_applied(revision, 15)


async def test_a_service_that_cannot_start_is_refused_at_once(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Once every instance of a service's revision fails to start (here: its app does not
    import), a request gets 503 ``crash_loop`` at once, naming why, instead of being held for
    the activation timeout."""
    async with running_cluster(redis, redis_url, keys, tmp_path) as cluster:
        await revision_of(cluster, hello("broken", app="nowhere:app"))
        await cluster.instances(lambda found: any(e.reason == "import_error" for e in found))
        await settle(cluster)
        async with aiohttp.ClientSession() as session:
            async with session.get(cluster.gateway_url, headers={"Host": "hello"}) as answer:
                body = await answer.text()
                assert (answer.status, answer.headers.get("x-shoal-cause")) == (503, "crash_loop")
        assert "import_error" in body and "exit code 1" in body, body
