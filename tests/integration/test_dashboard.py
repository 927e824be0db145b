"""The dashboard in a real headless Chromium (Debian's ``chromium``, driven by Playwright): the
page loads without a console error, shows the example's services, traffic shares and
instances, shows requests/s within 5 s of traffic starting, and an ejection (and the drill itself)
during a failover drill; a screenshot is written to ``test-artifacts/dashboard.png``."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest
from playwright.async_api import Page, async_playwright

from shoal.platform.dashboard.server import run_dashboard
from shoal.platform.drills.drill import failover
from shoal.resources.manifest import load_files
from shoal.store.connection import Redis
from shoal.store.embedded import free_port
from shoal.store.keys import Keys
from tests.support.cluster import EXAMPLE, ready, running_cluster

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def chromium() -> Iterator[str]:
    """Debian's Chromium, installed with apt-get when missing and possible."""
    found = shutil.which("chromium")
    if found is None and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        for argv in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
            subprocess.run(argv, env=env, capture_output=True, timeout=600, check=False)
        found = shutil.which("chromium")
    if found is None:
        pytest.skip("no chromium, and it cannot be installed here (apt-get install chromium)")
    yield found


@contextlib.asynccontextmanager
async def dashboard(redis: Redis, url: str, keys: Keys) -> AsyncIterator[str]:
    stop, port = asyncio.Event(), free_port()
    task = asyncio.create_task(
        run_dashboard(redis, url, keys, host="127.0.0.1", port=port, stop=stop)
    )
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        stop.set()
        await task


async def traffic(url: str, stop: asyncio.Event) -> None:
    """GETs to hello through the gateway, about 50 a second, until ``stop``."""
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            async with session.get(url, headers={"Host": "hello"}) as r:
                await r.read()
            await asyncio.sleep(0.02)  # the pace of the traffic


async def texts(page: Page, selector: str) -> list[str]:
    return [t.strip() for t in await page.locator(selector).all_inner_texts()]


@pytest.mark.timeout(180)
async def test_the_dashboard_in_chromium(
    chromium: str, redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    errors: list[str] = []
    async with (
        running_cluster(redis, redis_url, keys, tmp_path) as cluster,
        dashboard(redis, redis_url, keys) as url,
        async_playwright() as playwright,
    ):
        await cluster.client.apply(load_files([str(EXAMPLE)]))
        await cluster.instances(
            lambda f: len(ready(f, "world")) == 1 and len(ready(f, "hello")) == 4
        )
        browser = await playwright.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = await browser.new_page(viewport={"width": 1280, "height": 900})
        page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: errors.append(str(e)))
        await page.goto(url)
        hello = '[data-service="hello"]'
        await page.wait_for_function(
            f"document.querySelectorAll('{hello} .instance').length === 4", timeout=10_000
        )
        assert await texts(page, "[data-service] h3") == ["hello", "world"]
        assert await texts(page, f"{hello} .revision .name") == ["v1", "v2"]
        assert await texts(page, f"{hello} .revision .traffic") == ["50%", "50%"]
        assert await texts(page, '[data-service="world"] .revision .traffic') == ["100%"]
        await page.wait_for_function(  # (the page may first show a reading of them starting)
            f"""document.querySelectorAll('{hello} .instance[data-health="ok"]').length === 4""",
            timeout=5_000,
        )

        stop = asyncio.Event()
        sender = asyncio.create_task(traffic(cluster.gateway_url + "/", stop))
        try:
            # Within 5 s of the traffic starting, hello shows a request rate.
            await page.wait_for_function(
                f"parseFloat(document.querySelector('{hello} .rps').textContent) > 0",
                timeout=5_000,
            )
        finally:
            stop.set()
            await sender
        drill = asyncio.create_task(
            failover(
                cluster.client,
                gateway=cluster.gateway_url,
                service="hello",
                fault="error",
                count=1,
                duration=8.0,
                rps=50,
            )
        )
        try:
            ejected = f'{hello} .instance[data-health="ejected"]'
            await page.wait_for_selector(ejected, timeout=20_000)
            await page.wait_for_selector('#events li[data-kind="ejection"]', timeout=5_000)
            await page.wait_for_selector('#events li[data-kind="drill"]', timeout=5_000)
            ARTIFACTS.mkdir(exist_ok=True)
            await page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)
        finally:
            report = await drill
        assert report.errors == {}
        await browser.close()
    assert errors == []
