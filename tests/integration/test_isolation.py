"""Workload isolation on a real node: each service's instances run as a uid of their own, which
can read nothing of the platform's and call out only under its own service's identity."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from shoal.platform.runtime.isolation import DEFAULT_UIDS, run_as
from shoal.resources.manifest import parse_text
from shoal.store.connection import Redis
from shoal.store.keys import Keys
from tests.support.cluster import ready, running_cluster
from tests.support.procfs import environ_of, uid_of

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="only root gives instances uids")

STOCK = """
apiVersion: shoal/v1
kind: Service
metadata: {name: NAME}
spec:
  command: [python3, -m, http.server, "$PORT", --bind, 127.0.0.1]
  revision: v1
"""

# Run as an instance's uid: what it can reach of the platform.
ATTACKER = r"""
import json, os, socket, sys, urllib.error, urllib.request

home, own, other, store_port = sys.argv[1:5]
found = {}
try:
    os.listdir(home)
    found["home"] = "listed"
except PermissionError:
    found["home"] = "denied"

def get(url):
    try:
        with urllib.request.urlopen(url + "/", timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as e:
        return e.code
    except Exception as e:
        return type(e).__name__

found["own"], found["other"] = get(own), get(other)
readable = []
for pid in filter(str.isdigit, os.listdir("/proc")):
    for name in ("environ", "cmdline"):
        try:
            with open(f"/proc/{pid}/{name}", "rb") as f:
                readable.append(f.read().decode("latin-1"))
        except OSError:
            pass
found["proc"] = readable
with socket.create_connection(("127.0.0.1", int(store_port))) as store:
    store.sendall(b"PING\r\n")
    found["store"] = store.recv(200).decode()
print(json.dumps(found))
"""


async def test_instances_run_as_their_services_uids_and_reach_nothing_else(
    redis: Redis, redis_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Two services get two uids (not root, not the platform's); as alpha's uid a process
    cannot list the node's state, cannot use beta's outbound listener (alpha's serves it),
    finds no store password in any process it can read and cannot talk to the store."""
    async with running_cluster(
        redis, redis_url, keys, tmp_path, instance_uids=DEFAULT_UIDS
    ) as cluster:
        docs = "---".join(STOCK.replace("NAME", name) for name in ("alpha", "beta"))
        await cluster.client.apply(parse_text(docs))
        found = await cluster.instances(
            lambda f: bool(ready(f, "alpha")) and bool(ready(f, "beta")), timeout=30
        )
        alpha, beta = ready(found, "alpha")[0], ready(found, "beta")[0]
        assert alpha.pid and beta.pid
        uids = {uid_of(alpha.pid), uid_of(beta.pid)}
        assert len(uids) == 2 and not uids & {0, os.getuid()}, uids

        node = (await cluster.client.registry.nodes())["n1"]
        assert node["isolation"]["uids"] == "20000-29999", node

        own = environ_of(alpha.pid)["SHOAL_MESH_URL"]
        other = environ_of(beta.pid)["SHOAL_MESH_URL"]
        assert own != other
        store_port = redis_url.rsplit(":", 1)[1].split("/")[0]
        password = redis_url.split("@")[0].rsplit(":", 1)[1]
        assert password
        probe = await asyncio.create_subprocess_exec(
            "python3",
            "-c",
            ATTACKER,
            str(tmp_path),
            own,
            other,
            store_port,
            stdout=asyncio.subprocess.PIPE,
            cwd="/",
            **run_as(uid_of(alpha.pid)),
        )
        async with asyncio.timeout(60):
            out, _ = await probe.communicate()
        assert probe.returncode == 0
        seen = json.loads(out)
        assert seen["home"] == "denied"
        assert isinstance(seen["own"], int), seen["own"]  # the router answered (no such host: 404)
        assert seen["other"] in ("RemoteDisconnected", "ConnectionResetError"), seen["other"]
        assert seen["proc"] and not any(password in text for text in seen["proc"])
        assert seen["store"].startswith("-NOAUTH"), seen["store"]


# Run as an instance uid from a working directory behind a closed one: what it sees of it.
LOOK = r"""
import json, os, sys
import mod

def read(path):
    try:
        with open(path) as f:
            return f.read()
    except OSError as e:
        return type(e).__name__

box = sys.argv[1]
print(json.dumps({"uid": os.getuid(), "mod": mod.NAME, "up": sorted(os.listdir(box)),
                  "secret": read(box + "/secret"), "home": read(box + "/home/key")}))
"""


MOUNT_NAMESPACES = (
    shutil.which("unshare") is not None
    and subprocess.run(["unshare", "-m", "true"], capture_output=True).returncode == 0
)


@pytest.mark.skipif(not MOUNT_NAMESPACES, reason="no mount namespaces here (no CAP_SYS_ADMIN)")
@pytest.mark.parametrize("where", ["app", "."])
def test_an_instance_uid_reaches_its_runtime_behind_a_closed_directory(
    tmp_path: Path, where: str
) -> None:
    """A checkout no other uid may enter (a clone in ``mktemp -d``, under pytest's 0700
    directory too): started as an instance uid with its working directory there, a process runs
    this Python and imports its module from it, sees nothing else of the closed directories
    and cannot read a 0700 entry (``$SHOAL_HOME``). Mounts made for it stay its own."""
    box = tmp_path / "box"
    (box / "app").mkdir(parents=True)
    (box / "app" / "mod.py").write_text("NAME = 'mod'\n")
    (box / "secret").write_text("s3cret")
    (box / "home").mkdir(mode=0o700)
    (box / "home" / "key").write_text("k3y")
    box.chmod(0o700)
    cwd = str(box / where)
    process = subprocess.run(
        [sys.executable, "-c", LOOK, str(box)],
        cwd=cwd,
        env={"PYTHONPATH": str(box / "app")},
        capture_output=True,
        text=True,
        timeout=60,
        **run_as(40000, cwd),
    )
    assert process.returncode == 0, process.stderr
    seen = json.loads(process.stdout)
    assert seen["uid"] == 40000 and seen["mod"] == "mod"
    if where == "app":  # the working directory alone is shown of the box
        assert seen["up"] == ["app"]
        assert seen["secret"] == seen["home"] == "FileNotFoundError"
    else:  # the box itself is needed: its entries are shown, each with its own permissions
        assert seen["up"] == ["app", "home", "secret"]
        assert seen["secret"] == "s3cret" and seen["home"] == "PermissionError"
    assert sorted(os.listdir(box)) == ["app", "home", "secret"]
    mounts = Path("/proc/self/mountinfo").read_text()
    assert str(box) not in mounts
