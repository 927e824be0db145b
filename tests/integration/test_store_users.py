"""The embedded Redis's component users: each reaches its cluster's keys that it needs and no
administrative command; the administrator keeps everything."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from shoal.store.embedded import EmbeddedRedis
from shoal.store.keys import Keys


@pytest.fixture
def embedded(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """An embedded Redis for the cluster under ``acl:``."""
    server = EmbeddedRedis(state_dir=tmp_path / "home", prefix="acl:")
    server.start()
    yield server
    server.stop()


def as_user(server: EmbeddedRedis, role: str) -> redis.Redis:
    """A client logged in as ``role``'s user."""
    return redis.Redis.from_url(server.url_for(role), decode_responses=True)


def refused(call: Callable[[], object]) -> bool:
    """Whether calling ``call`` is refused for lack of permission."""
    try:
        call()
    except redis.exceptions.NoPermissionError:
        return True
    return False


ADMINISTRATIVE = [
    ("CONFIG", "SET", "dir", "/tmp"),
    ("CONFIG", "GET", "requirepass"),
    ("FLUSHALL",),
    ("KEYS", "*"),
    ("DEBUG", "SLEEP", "0"),
    ("ACL", "LIST"),
    ("SHUTDOWN", "NOSAVE"),
    ("REPLICAOF", "127.0.0.1", "1"),
    ("MODULE", "LIST"),
]


@pytest.mark.parametrize("role", ["gateway", "node"])
def test_a_proxy_user_reaches_its_keys_only(embedded: EmbeddedRedis, role: str) -> None:
    """Config, registry and certificate requests: yes. Join-token digests, admitted
    requesters, another cluster's keys and administrative commands: no."""
    client = as_user(embedded, role)
    try:
        client.hset("acl:cfg:Service", "x", "{}")
        assert client.hget("acl:cfg:Service", "x") == "{}"
        client.xadd("acl:pki:csr", {"requester": role})
        assert client.lpush("acl:pki:reply:1", "r") == 1
        assert client.get("acl:pki:bundle") is None
        assert refused(lambda: client.hget("acl:pki:tokens", "t"))
        assert refused(lambda: client.hset("acl:pki:admitted", role, "1"))
        assert refused(lambda: client.get("other:cfg:Service"))
        for command in ADMINISTRATIVE:
            assert refused(lambda command=command: client.execute_command(*command)), command
    finally:
        client.close()


def test_the_controller_reaches_every_key_of_its_cluster_but_no_administration(
    embedded: EmbeddedRedis,
) -> None:
    """The CA reads token digests; the controller reads the server's uptime; still no
    CONFIG, no FLUSHALL, nothing of another cluster."""
    client = as_user(embedded, "controller")
    try:
        client.hset("acl:pki:tokens", "t", "{}")
        assert client.hget("acl:pki:tokens", "t") == "{}"
        assert int(client.info("server")["uptime_in_seconds"]) >= 0
        assert refused(lambda: client.get("other:rev"))
        for command in ADMINISTRATIVE:
            assert refused(lambda command=command: client.execute_command(*command)), command
    finally:
        client.close()


def test_the_dashboard_only_reads_what_status_shows(embedded: EmbeddedRedis) -> None:
    """The dashboard's user reads config, registry, acks and reports (and runs the read-only
    script listing live ones), but writes nothing, and reads no certificate request, token
    digest or admitted requester."""
    admin = redis.Redis.from_url(embedded.url, decode_responses=True)
    client = as_user(embedded, "dashboard")
    try:
        admin.hset("acl:cfg:Service", "x", "{}")
        assert client.hget("acl:cfg:Service", "x") == "{}"
        assert client.hgetall("acl:reports") == {}
        assert client.lrange("acl:events", 0, -1) == []
        assert client.time()
        assert refused(lambda: client.hset("acl:cfg:Service", "y", "{}"))
        assert refused(lambda: client.delete("acl:instances"))
        assert refused(lambda: client.hget("acl:pki:tokens", "t"))
        assert refused(lambda: client.xrange("acl:pki:csr"))
        assert refused(lambda: client.get("other:rev"))
        for command in ADMINISTRATIVE:
            assert refused(lambda command=command: client.execute_command(*command)), command
    finally:
        client.close()
        admin.close()


def test_the_administrator_keeps_every_right(embedded: EmbeddedRedis) -> None:
    """The URL the CLI finds (``default``) still does everything."""
    client = redis.Redis.from_url(embedded.url, decode_responses=True)
    try:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert {u.split()[1] for u in client.acl_list()} == {
            "default",
            "acl-gateway",
            "acl-node",
            "acl-controller",
            "acl-dashboard",
        }
        assert client.get("other:rev") is None
    finally:
        client.close()


def test_store_users_creates_the_users_on_an_external_store(
    redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """``shoal store users`` (with an administrator's URL) creates this cluster's users, writes
    each one's URL to a private file, and a component connecting with ``node.url`` has the
    node's rights only; running it again changes the passwords (the old URL stops working)."""
    admin_file = tmp_path / "admin.url"
    admin_file.write_text(redis_url)
    admin_file.chmod(0o600)
    out = tmp_path / "users"
    argv = [sys.executable, "-m", "shoal", "store", "users", "--redis", f"@{admin_file}"]
    env = {**os.environ, "SHOAL_PREFIX": keys.prefix}
    made = subprocess.run([*argv, "--out", str(out)], capture_output=True, text=True, env=env)
    assert made.returncode == 0, made.stderr
    assert made.stdout.splitlines()[-1].startswith("users saved in"), made.stdout
    node_url = (out / "node.url").read_text().strip()
    assert {p.name: p.stat().st_mode & 0o777 for p in out.iterdir()} == {
        "gateway.url": 0o600,
        "node.url": 0o600,
        "controller.url": 0o600,
        "dashboard.url": 0o600,
    }
    node = redis.Redis.from_url(node_url, decode_responses=True)
    try:
        node.hset(f"{keys.prefix}cfg:Service", "x", "{}")
        assert refused(lambda: node.hget(f"{keys.prefix}pki:tokens", "t"))
        assert refused(lambda: node.config_get("dir"))
    finally:
        node.close()
    again = subprocess.run([*argv, "--out", str(tmp_path / "again")], env=env, capture_output=True)
    assert again.returncode == 0
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis.from_url(node_url).ping()


def test_store_users_refuses_a_sentinel_url(tmp_path: Path) -> None:
    """Redis does not replicate users: a Sentinel URL gets one line saying to give each
    server's URL, and a non-zero exit."""
    url_file = tmp_path / "s.url"
    url_file.write_text("redis+sentinel://s1:26379/shoal")
    url_file.chmod(0o600)
    argv = [sys.executable, "-m", "shoal", "store", "users", "--redis", f"@{url_file}"]
    got = subprocess.run(argv, capture_output=True, text=True)
    assert got.returncode != 0 and got.stdout == ""
    assert got.stderr.count("\n") == 1 and "replicate" in got.stderr, got.stderr
