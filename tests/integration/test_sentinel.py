"""``redis+sentinel://`` URLs against real processes: a master, a replica and three Sentinels on
127.0.0.1, then a crash of the master and a manual failover under writes and a change feed."""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from shoal.errors import StoreError, StoreUnavailable
from shoal.store.config import Change, ConfigStore
from shoal.store.connection import Redis, connect, redacted, translated
from shoal.store.embedded import find_redis_server, free_port
from shoal.store.keys import Keys
from shoal.store.sentinel import (
    MasterNotFoundError,
    SentinelURL,
    newest_master,
    parse_sentinel_url,
    parse_switch,
)
from shoal.store.watch import View, Watcher
from tests.support.wait import eventually

SERVICE = "shoal"
KIND = "VirtualService"

# --- the URL and the pure decisions ----------------------------------------------------------


def test_url_with_everything() -> None:
    """Every part of the URL lands in its field, percent-decoded; ports default to 26379."""
    got = parse_sentinel_url(
        "redis+sentinel://app:p%40ss@s1:26380,s2,[::1]:26381/my-master/3"
        "?sentinel_password=s%26cret&sentinel_username=watch"
    )
    assert got == SentinelURL(
        sentinels=(("s1", 26380), ("s2", 26379), ("::1", 26381)),
        service="my-master",
        db=3,
        username="app",
        password="p@ss",
        sentinel_username="watch",
        sentinel_password="s&cret",
    )


def test_url_minimal() -> None:
    """One Sentinel, a service, nothing else: db 0 and no credentials."""
    assert parse_sentinel_url("redis+sentinel://10.0.0.5/shoal") == SentinelURL(
        sentinels=(("10.0.0.5", 26379),), service="shoal"
    )
    assert parse_sentinel_url("redis+sentinel://:pw@h:1/shoal/").password == "pw"


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("redis+sentinel://h:1", "path must be /SERVICE"),
        ("redis+sentinel://h:1/a/b/c", "path must be /SERVICE"),
        ("redis+sentinel://h:1/shoal/x", "database must be a number, got 'x'"),
        ("redis+sentinel://h:99999/shoal", "bad Sentinel port in 'h:99999'"),
        ("redis+sentinel://h:1,,h:2/shoal", "empty Sentinel host in ''"),
        ("redis+sentinel://[::1]x/shoal", "bad Sentinel address '[::1]x'"),
        ("redis+sentinel://[::1/shoal", "bad Sentinel address '[::1'"),
        ("redis+sentinel://h/shoal?password=x", "unknown query parameter(s) ['password']"),
    ],
)
def test_bad_urls_name_the_part(url: str, complaint: str) -> None:
    """An invalid URL is refused with the part at fault named."""
    with pytest.raises(ValueError, match=re.escape(complaint)):
        parse_sentinel_url(url)


def test_connect_refuses_a_bad_url_without_showing_passwords() -> None:
    """``connect`` turns a bad URL into StoreUnavailable; neither password is in the message."""
    with pytest.raises(StoreUnavailable, match="bad Redis URL") as e:
        connect("redis+sentinel://:topsecret@h:1/shoal/x?sentinel_password=alsosecret")
    assert "topsecret" not in str(e.value) and "alsosecret" not in str(e.value)
    assert redacted("redis+sentinel://:pw@h:1/s?sentinel_password=spw&x=1") == (
        "redis+sentinel://:***@h:1/s?sentinel_password=***&x=1"
    )


def view(ip: str, epoch: int, *flags: str, others: int = 2) -> dict[str, Any]:
    """One Sentinel's view of a master, as redis-py parses ``SENTINEL MASTERS``."""
    return {
        "ip": ip,
        "port": 6379,
        "config-epoch": epoch,
        "num-other-sentinels": others,
        "is_master": "slave" not in flags,
        "is_sdown": "s_down" in flags,
        "is_odown": "o_down" in flags,
    }


def test_newest_master_wins() -> None:
    """The view with the highest config epoch wins over a Sentinel that has not heard of the
    switch yet; views of a master that is down, or from a lonely Sentinel, do not count."""
    assert newest_master([view("old", 1), view("new", 2), view("old", 1)]) == ("new", 6379)
    assert newest_master([view("new", 2, "s_down"), view("old", 1)]) == ("old", 6379)
    assert newest_master([view("a", 1, others=0), view("b", 1)], min_other_sentinels=1) == (
        "b",
        6379,
    )
    with pytest.raises(MasterNotFoundError):
        newest_master([view("a", 3, "o_down"), view("b", 3, "slave")])


def test_switch_messages() -> None:
    """``+switch-master`` gives the new address, only for our service and well-formed."""
    assert parse_switch("shoal 10.0.0.1 6379 10.0.0.2 6380", "shoal") == ("10.0.0.2", 6380)
    assert parse_switch("other 10.0.0.1 6379 10.0.0.2 6380", "shoal") is None
    assert parse_switch("shoal 10.0.0.1 6379 10.0.0.2", "shoal") is None
    assert parse_switch("shoal 10.0.0.1 6379 10.0.0.2 x", "shoal") is None


# --- a real master, replica and three Sentinels ----------------------------------------------

DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000
READY_TIMEOUT = 20.0


@dataclass
class SentinelCluster:
    """Two redis-servers (``r1`` starts as master, ``r2`` as its replica) and three Sentinels
    with quorum 2, all on 127.0.0.1 with passwords, each in a directory of its own."""

    root: Path
    password: str = field(default_factory=lambda: secrets.token_hex(12))
    sentinel_password: str = field(default_factory=lambda: secrets.token_hex(12))
    ports: dict[str, int] = field(default_factory=dict)
    sentinel_ports: list[int] = field(default_factory=list)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def url(self) -> str:
        """The ``redis+sentinel://`` URL Shoal is given."""
        hosts = ",".join(f"127.0.0.1:{p}" for p in self.sentinel_ports)
        return (
            f"redis+sentinel://:{self.password}@{hosts}/{SERVICE}/0"
            f"?sentinel_password={self.sentinel_password}"
        )

    def server_url(self, name: str) -> str:
        """A plain URL of one redis-server, for checks that must not go through Sentinel."""
        return f"redis://:{self.password}@127.0.0.1:{self.ports[name]}/0"

    def sentinel_url(self, i: int) -> str:
        """A plain URL of one Sentinel, to send it SENTINEL commands."""
        return f"redis://:{self.sentinel_password}@127.0.0.1:{self.sentinel_ports[i]}"

    def _spawn(self, name: str, conf: list[str], *extra: str) -> None:
        home = self.root / name
        home.mkdir(exist_ok=True)
        path = home / f"{name}.conf"
        path.write_text("\n".join([*conf, f"dir {home}", f"logfile {home / 'log'}"]) + "\n")
        self.procs[name] = subprocess.Popen(
            [find_redis_server(), str(path), *extra],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )

    def start_server(self, name: str, *, replica_of: str | None = None) -> None:
        """Start redis-server ``name``, AOF on, as a replica of ``replica_of`` if given."""
        self.ports[name] = free_port()
        conf = [
            f"port {self.ports[name]}",
            "bind 127.0.0.1",
            f"requirepass {self.password}",
            f"masterauth {self.password}",  # for when it becomes a replica
            "appendonly yes",
            "appendfsync everysec",
            'save ""',
        ]
        if replica_of is not None:
            conf.append(f"replicaof 127.0.0.1 {self.ports[replica_of]}")
        self._spawn(name, conf)

    def start_sentinel(self, i: int, master: str) -> None:
        """Start Sentinel ``i`` monitoring ``master`` (quorum 2), with a password of its own."""
        port = free_port()
        self.sentinel_ports.append(port)
        conf = [
            f"port {port}",
            "bind 127.0.0.1",
            f"requirepass {self.sentinel_password}",
            f"sentinel sentinel-pass {self.sentinel_password}",  # to talk to its peers
            f"sentinel monitor {SERVICE} 127.0.0.1 {self.ports[master]} 2",
            f"sentinel auth-pass {SERVICE} {self.password}",
            f"sentinel down-after-milliseconds {SERVICE} {DOWN_AFTER_MS}",
            f"sentinel failover-timeout {SERVICE} {FAILOVER_TIMEOUT_MS}",
        ]
        self._spawn(f"sentinel{i}", conf, "--sentinel")

    def kill(self, name: str) -> None:
        """SIGKILL one process (a crash: no AOF flush, no goodbye to replicas or Sentinels)."""
        proc = self.procs[name]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        """SIGKILL every process and reap it."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.kill()
            proc.wait(10)

    def log(self, name: str, lines: int = 15) -> str:
        """The tail of one process's log, for failure messages."""
        path = self.root / name / "log"
        return "\n".join(path.read_text().splitlines()[-lines:]) if path.exists() else "(no log)"


async def ask(url: str, call: Callable[[Redis], Any]) -> Any:
    """Run one command on a fresh plain client of ``url``; StoreError if it fails."""
    client = connect(url)
    try:
        async with translated("asking"):
            return await call(client)
    finally:
        await client.aclose()


@pytest.fixture
async def sentinels(tmp_path: Path) -> AsyncIterator[SentinelCluster]:
    """Master r1, replica r2 in sync, and three Sentinels that see both and each other."""
    cluster = SentinelCluster(root=tmp_path)
    try:
        cluster.start_server("r1")
        cluster.start_server("r2", replica_of="r1")

        async def in_sync() -> bool:
            info = await ask(cluster.server_url("r2"), lambda r: r.info("replication"))
            return info.get("master_link_status") == "up"

        await eventually(
            in_sync, "r2 replicating r1", timeout=READY_TIMEOUT, interval=0.05, ignore=(StoreError,)
        )
        for i in range(3):
            cluster.start_sentinel(i, "r1")

        async def all_see_all() -> bool:
            for i in range(3):
                st = await ask(cluster.sentinel_url(i), lambda r: r.sentinel_master(SERVICE))
                if st["num-other-sentinels"] != 2 or st["num-slaves"] != 1:
                    return False
            return True

        await eventually(
            all_see_all,
            "each Sentinel seeing the replica and two peers",
            timeout=READY_TIMEOUT,
            interval=0.05,
            ignore=(StoreError,),
        )
        yield cluster
    finally:
        cluster.stop()


async def served_by(redis: Redis) -> int:
    """The port of the server that answers ``redis``'s commands."""
    async with translated("asking the port"):
        return int((await redis.config_get("port"))["port"])


@contextlib.asynccontextmanager
async def watching(url: str, keys: Keys) -> AsyncIterator[list[View]]:
    """A running :class:`Watcher` of ``KIND``; the list of views it has delivered."""
    views: list[View] = []
    watcher = Watcher(url, keys, [KIND])
    task = asyncio.create_task(watcher.run(views.append))
    try:
        async with asyncio.timeout(10):
            await watcher.connected.wait()
        yield views
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def seen(views: list[View], name: str, timeout: float) -> float:
    """Wait until a delivered view holds document ``name``; the seconds it took."""
    t0 = time.monotonic()
    await eventually(
        lambda: any(name in v.documents(KIND) for v in views),
        f"a view with document {name}",
        timeout=timeout,
        interval=0.01,
    )
    return time.monotonic() - t0


@pytest.mark.timeout(60)
async def test_sentinel_url_reaches_the_master(sentinels: SentinelCluster) -> None:
    """Through the Sentinel URL, a ConfigStore writes to the master, a Watcher (a blocking
    client) sees the writes, and the replica receives them."""
    keys = Keys(prefix="t:")
    redis = connect(sentinels.url)
    try:
        store = ConfigStore(redis, keys)
        await store.write([Change(KIND, "a", {"x": 1})])
        assert await served_by(redis) == sentinels.ports["r1"]
        async with watching(sentinels.url, keys) as views:
            await seen(views, "a", timeout=5)
            await store.write([Change(KIND, "b", {"x": 2})])
            await seen(views, "b", timeout=5)

        async def replicated() -> bool:
            raw = await ask(sentinels.server_url("r2"), lambda r: r.hget(keys.config(KIND), "b"))
            return raw is not None

        await eventually(
            replicated, "document b on the replica", timeout=5, interval=0.05, ignore=(StoreError,)
        )
    finally:
        await redis.aclose()


@pytest.mark.timeout(60)
async def test_replica_writes_and_a_dead_sentinel(sentinels: SentinelCluster) -> None:
    """A write that reaches a replica, plain or inside a Lua script, is StoreUnavailable (the
    caller retries), not a StoreError; with one Sentinel dead, a new client still finds the
    master at once from the other two."""
    keys = Keys(prefix="t:")
    replica = connect(sentinels.server_url("r2"))
    try:
        with pytest.raises(StoreUnavailable, match="replica"):
            await ConfigStore(replica, keys).write([Change(KIND, "a", {"x": 1})])
        with pytest.raises(StoreUnavailable, match="replica"):
            async with translated("setting"):
                await replica.set("k", "v")
    finally:
        await replica.aclose()

    sentinels.kill("sentinel2")
    t0 = time.monotonic()
    redis = connect(sentinels.url)
    try:
        await ConfigStore(redis, keys).write([Change(KIND, "a", {"x": 1})])
        assert await served_by(redis) == sentinels.ports["r1"]
    finally:
        await redis.aclose()
    assert time.monotonic() - t0 < 2.0


@pytest.mark.timeout(60)
async def test_master_crash(
    sentinels: SentinelCluster, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL the master: writes through the same client succeed on the promoted replica within
    a few seconds, and a running Watcher reloads from it and goes on delivering changes."""
    keys = Keys(prefix="t:")
    redis = connect(sentinels.url)
    try:
        store = ConfigStore(redis, keys)
        async with watching(sentinels.url, keys) as views:
            await store.write([Change(KIND, "before", {"x": 1})])
            await seen(views, "before", timeout=5)
            # Writes are replicated asynchronously: let this one reach r2 before the crash.
            await eventually(
                lambda: ask(
                    sentinels.server_url("r2"), lambda r: r.hget(keys.config(KIND), "before")
                ),
                "document before on the replica",
                timeout=5,
                interval=0.05,
                ignore=(StoreError,),
            )

            crashed = time.monotonic()
            sentinels.kill("r1")
            failures = 0

            async def written() -> bool:
                nonlocal failures
                try:
                    await store.write([Change(KIND, "after", {"x": 2})])
                except StoreUnavailable:
                    failures += 1
                    return False
                return True

            await eventually(
                written,
                "a write through the same client after the crash",
                timeout=20,
                detail=lambda: sentinels.log("sentinel0"),
            )
            writes_back = time.monotonic() - crashed
            assert await served_by(redis) == sentinels.ports["r2"]
            await seen(views, "after", timeout=10)
            watcher_back = time.monotonic() - crashed
            assert "before" in views[-1].documents(KIND)

        numbers = {
            "writes_back_s": round(writes_back, 2),
            "watcher_back_s": round(watcher_back, 2),
            "failed_writes": failures,
        }
        print(f"\nsentinel crash failover: {numbers}")
        record_property("numbers", numbers)
        assert writes_back < 10, numbers
    finally:
        await redis.aclose()


@dataclass(frozen=True, slots=True)
class Write:
    """One write of the steady writer: when it was sent, and where it landed (or why not)."""

    sent: float
    n: int
    port: int | None
    error: str = ""


async def steady_writes(redis: Redis, key: str, out: list[Write], stop: asyncio.Event) -> None:
    """RPUSH 0, 1, 2, ... to ``key`` every 10 ms until ``stop``, noting each write's server."""
    n = 0
    while not stop.is_set():
        sent = time.monotonic()
        try:
            async with translated("steady write"):
                async with redis.pipeline(transaction=False) as pipe:
                    pipe.rpush(key, n)
                    pipe.config_get("port")
                    _, port = await pipe.execute()
            out.append(Write(sent=sent, n=n, port=int(port["port"])))
        except StoreError as e:
            out.append(Write(sent=sent, n=n, port=None, error=str(e)))
        n += 1
        await asyncio.sleep(0.01)


@pytest.mark.timeout(60)
async def test_manual_failover(
    sentinels: SentinelCluster, record_property: Callable[[str, object], None]
) -> None:
    """SENTINEL FAILOVER under steady writes: the client moves to the new master as soon as it
    is announced (not when the old one is demoted some 10 s later), no write fails after that,
    even as the old master turns replica, and a Watcher follows the new master."""
    keys = Keys(prefix="t:")
    redis = connect(sentinels.url)
    writes: list[Write] = []
    stop = asyncio.Event()
    try:
        async with watching(sentinels.url, keys) as views:
            writer = asyncio.create_task(steady_writes(redis, "log", writes, stop))
            try:
                await eventually(lambda: len(writes) >= 20, "20 steady writes")

                async def failover() -> bool:
                    return bool(
                        await ask(sentinels.sentinel_url(0), lambda r: r.sentinel_failover(SERVICE))
                    )

                await eventually(
                    failover,
                    "SENTINEL FAILOVER accepted",
                    timeout=10,
                    interval=0.05,
                    ignore=(StoreError,),
                )
                started = time.monotonic()
                r2 = sentinels.ports["r2"]

                def moved() -> float | None:
                    return next((w.sent for w in writes if w.port == r2), None)

                switched = await eventually(moved, "a write on the new master", timeout=10)
                assert switched is not None
                store = ConfigStore(redis, keys)
                await store.write([Change(KIND, "after", {"x": 1})])
                watcher_lag = await seen(views, "after", timeout=10)

                async def demoted() -> bool:
                    info = await ask(sentinels.server_url("r1"), lambda r: r.info("replication"))
                    return info.get("role") == "slave" and info.get("master_link_status") == "up"

                await eventually(
                    demoted,
                    "r1 demoted to a replica of r2",
                    timeout=30,
                    interval=0.05,
                    ignore=(StoreError,),
                )
                demoted_at = time.monotonic()
                sent = len(writes)  # writes go on while r1 has just turned replica
                await eventually(lambda: len(writes) >= sent + 50, "50 writes after the demotion")
            finally:
                stop.set()
                await writer

        late = [w for w in writes if w.sent > switched and w.port != r2]
        stored = await ask(sentinels.server_url("r2"), lambda r: r.lrange("log", 0, -1))
        acked = {w.n for w in writes if w.port is not None}
        lost = sorted(acked - {int(n) for n in stored})
        numbers = {
            "moved_s": round(switched - started, 2),
            "old_master_demoted_s": round(demoted_at - started, 2),
            "watcher_lag_s": round(watcher_lag, 2),
            "writes": len(writes),
            "failed_writes": sum(w.port is None for w in writes),
            "acked_writes_lost": len(lost),
        }
        print(f"\nsentinel manual failover: {numbers}")
        record_property("numbers", numbers)
        assert not late, f"writes after the switch not on the new master: {late[:5]}"
        assert switched - started < 5, numbers
        # Only writes acknowledged by the old master before we heard of the switch can be lost.
        assert all(w.sent < switched for w in writes if w.n in set(lost)), numbers
    finally:
        await redis.aclose()
