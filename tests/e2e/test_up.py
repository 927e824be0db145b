"""``shoal up --example`` and the CLI as a user runs them: real processes, real ports."""

from __future__ import annotations

import collections
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError
from urllib.request import Request, urlopen

import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from shoal.store.embedded import recorded_url
from tests.support.procfs import descendants, still_running, uid_of
from tests.support.wait import eventually_sync


@dataclass
class Platform:
    """A running ``shoal up`` and the environment to talk to it."""

    home: Path
    port: int
    mesh_port: int
    metrics_port: int = 0
    dashboard_port: int = 0  # (0: none)
    process: subprocess.Popen[str] | None = None
    extra: tuple[str, ...] = ()  # more ``shoal up`` flags

    @property
    def env(self) -> dict[str, str]:
        """Environment for CLI calls: the same state dir."""
        env = {k: v for k, v in os.environ.items() if k != "SHOAL_REDIS_URL"}
        return {**env, "SHOAL_HOME": str(self.home)}

    def start(self) -> None:
        """Start ``shoal up --example`` and wait until it has printed its banner."""
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "shoal",
                "up",
                "--example",
                "--port",
                str(self.port),
                "--mesh-port",
                str(self.mesh_port),
                "--activation-timeout",
                "2",
                "--metrics-port",
                str(self.metrics_port),
                "--dashboard-port",
                str(self.dashboard_port),
                *self.extra,
            ],
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self.process.stdout is not None
        seen = []
        for line in self.process.stdout:
            if line.startswith("status"):
                return
            seen.append(line)
        self.process.wait()
        self.process.stdout.close()
        code = self.process.returncode
        pytest.fail(f"shoal up exited ({code}) before starting:\n{''.join(seen)}")

    def stop(self) -> str:
        """Ctrl-C, and the rest of its output."""
        assert self.process is not None
        self.process.send_signal(signal.SIGINT)
        out, _ = self.process.communicate(timeout=60)
        return out

    def shoal(self, *args: str) -> subprocess.CompletedProcess[str]:
        """Run a CLI command against this platform."""
        return subprocess.run(
            [sys.executable, "-m", "shoal", *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
        )

    def status(self) -> dict[str, Any]:
        """``shoal status -o json``."""
        result = self.shoal("status", "-o", "json")
        assert result.returncode == 0, result.stderr
        return dict(json.loads(result.stdout))

    def request(self, host: str, path: str = "/") -> tuple[int, dict[str, str], str]:
        """One HTTP/1.1 request through the gateway."""
        req = Request(f"http://127.0.0.1:{self.port}{path}", headers={"Host": host})
        try:
            with urlopen(req, timeout=10) as r:
                return r.status, dict(r.headers), r.read().decode()
        except HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()


def ready_count(p: Platform) -> int:
    """Ready instances in the registry."""
    return sum(1 for i in p.status()["instances"] if i["state"] == "ready")


def listen_ports(count: int = 1) -> int:
    """The first of ``count`` consecutive ports free now, for ``shoal up`` to listen on later
    (it gives the node ``metrics_port + 1``, the controller ``+ 2``). Picked below the
    kernel's ephemeral range: a port
    from that range (as binding port 0 gives) may meanwhile become some client socket's own
    port (seen: "node metrics port 37070 (Address already in use)")."""
    low, _ = (int(x) for x in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    while True:
        first = random.randrange(10000, low - count)
        probes = [socket.socket() for _ in range(count)]
        try:
            for offset, probe in enumerate(probes):
                probe.bind(("127.0.0.1", first + offset))
        except OSError:
            continue
        finally:
            for probe in probes:
                probe.close()
        return first


@pytest.fixture
def platform(tmp_path: Path) -> Iterator[Platform]:
    """``shoal up --example`` in a fresh state dir, stopped at the end."""
    p = Platform(
        home=tmp_path / "home",
        port=listen_ports(),
        mesh_port=listen_ports(),
        metrics_port=listen_ports(3),
        dashboard_port=listen_ports(),
    )
    p.start()
    yield p
    if p.process is not None and p.process.poll() is None:
        p.stop()


@pytest.mark.timeout(180)
def test_example_end_to_end(platform: Platform, tmp_path: Path) -> None:
    """The quickstart: example served over h1 and h2c, weights, restarts, bad manifests,
    error causes, and config surviving a restart."""
    eventually_sync(
        lambda: ready_count(platform),
        "5 ready instances",
        until=lambda n: n == 5,
        timeout=30,
        interval=0.1,
    )
    assert platform.request("hello")[2] == "Hello, World!\n"
    assert platform.request("world")[2] == "World, Hello!\n"
    assert platform.request("hello", "/chain")[2] == "World, Hello!\n"
    h2 = subprocess.run(
        [
            "curl",
            "-s",
            "--http2-prior-knowledge",
            "-H",
            "Host: hello",
            "-w",
            " %{http_version}",
            f"http://127.0.0.1:{platform.port}/",
        ],
        capture_output=True,
        text=True,
        timeout=10,
    )
    assert h2.stdout == "Hello, World!\n 2"

    # weights: 80/20 within ±5 points, no failed request
    result = platform.shoal("weights", "hello", "v1=80", "v2=20")
    assert result.returncode == 0, result.stderr
    revision = int(result.stdout.rsplit("revision ", 1)[1].rstrip(")\n"))
    eventually_sync(
        lambda: platform.status()["proxies"],
        f"every proxy at revision {revision}",
        until=lambda proxies: min(proxies.values()) >= revision,
        timeout=30,
        interval=0.1,
    )
    versions = collections.Counter(
        platform.request("hello")[1].get("x-version") for _ in range(1000)
    )
    assert set(versions) == {"v1", "v2"}
    assert 0.75 <= versions["v1"] / 1000 <= 0.85

    # kill -9 an instance: the agent restarts it under the same id
    world = next(i for i in platform.status()["instances"] if i["service"] == "world")
    os.kill(world["pid"], signal.SIGKILL)
    eventually_sync(
        lambda: any(
            i["id"] == world["id"] and i["pid"] != world["pid"] and i["state"] == "ready"
            for i in platform.status()["instances"]
        ),
        f"{world['id']} restarted and ready",
        timeout=30,
        interval=0.1,
    )

    # a file with one good and one bad document applies nothing
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: extra}\n"
        "spec: {hosts: [extra], http: [{route: [{destination: {host: hello}}]}]}\n---\n"
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: broken}\n"
        "spec: {hosts: [b], http: [{route: [{destination: {host: hello}, weight: abc}]}]}\n"
    )
    result = platform.shoal("apply", "-f", str(bad))
    assert result.returncode == 2
    message = result.stderr.strip()
    assert "\n" not in message and "Traceback" not in message
    for part in (str(bad), "document 1", "spec.http[0].route[0].weight", "abc"):
        assert part in message
    assert platform.shoal("get", "vs", "extra").returncode == 3

    # a service at zero whose instance never becomes ready: held, then 503 with a cause
    svc = tmp_path / "idle.yaml"
    svc.write_text(
        "apiVersion: shoal/v1\nkind: Service\nmetadata: {name: idle}\n"
        "spec: {command: [sleep, '1000'], scale: {min: 0}}\n"
    )
    assert platform.shoal("apply", "-f", str(svc), "--wait").returncode == 0
    status, headers, _ = platform.request("idle")
    assert (status, headers["x-shoal-cause"]) == (503, "cold_start_timeout")
    assert int(headers["retry-after"]) >= 1

    # the gateway's Prometheus metrics say so too (its report is refreshed every second)
    def metrics() -> str:
        with urlopen(f"http://127.0.0.1:{platform.metrics_port}/metrics", timeout=5) as r:
            return str(r.read().decode())

    def samples(name: str) -> list[Sample]:
        families = text_string_to_metric_families(metrics())
        return [s for family in families for s in family.samples if s.name == name]

    # One gateway process per core: the first serves every worker's series (gateway/K).
    eventually_sync(
        lambda: [
            s.value
            for s in samples("shoal_refusals_total")
            if s.labels["cause"] == "cold_start_timeout"
        ],
        "one cold_start_timeout refusal in the gateway's metrics",
        until=lambda found: found == [1.0],
        timeout=5,
        interval=0.1,
    )
    served = [
        (s.labels["component"], s.labels["revision"])
        for s in samples("shoal_revision_requests_total")
        if s.labels["revision"].startswith("hello/")
    ]
    assert served and len(served) == len(set(served))  # each worker's series once
    assert all(re.fullmatch(r"gateway(/\d+)?", component) for component, _ in served)
    status, headers, _ = platform.request("nowhere.example")
    assert (status, headers["x-shoal-cause"]) == (404, "no_route")

    # stop and start again: the applied config is still there
    out = platform.stop()
    assert "stopped" in out
    platform.start()
    got = platform.shoal("get", "vs", "hello", "-o", "json")
    route = json.loads(got.stdout)[0]["spec"]["http"][0]["route"]
    assert [r["weight"] for r in route] == [80, 20]
    eventually_sync(
        lambda: ready_count(platform),
        "5 ready instances",
        until=lambda n: n == 5,
        timeout=30,
        interval=0.1,
    )
    assert platform.request("hello")[0] == 200


@pytest.mark.timeout(180)
def test_two_gateway_workers_share_the_port_and_both_follow_the_store(tmp_path: Path) -> None:
    """``shoal up --gateway-workers 2``: requests on fresh connections are answered by both
    worker processes, and ``apply --wait`` returns only once each has applied the change."""
    p = Platform(
        home=tmp_path / "home",
        port=listen_ports(),
        mesh_port=listen_ports(),
        metrics_port=0,  # off: the node would take the next port, which may be in use
        extra=("--gateway-workers", "2"),
    )
    p.start()
    try:
        eventually_sync(
            lambda: ready_count(p), "5 ready instances", until=lambda n: n == 5, timeout=30
        )

        def served() -> tuple[dict[str, int], set[int]]:
            # A new connection each: the kernel spreads them over the workers. A worker still
            # starting may refuse (it listens once it holds its mesh certificate).
            statuses = {p.request("hello")[0] for _ in range(20)}
            reports = p.status()["reports"]
            counts = {c: r.get("requests", 0) for c, r in reports.items() if "gateway" in c}
            return counts, statuses

        counts, _ = eventually_sync(
            served,
            "both gateway workers answering, all with 200",
            until=lambda seen: len(seen[0]) == 2 and all(seen[0].values()) and seen[1] == {200},
            timeout=30,
            ignore=(OSError,),
        )
        assert set(counts) == {"gateway/0", "gateway/1"}
        manifest = tmp_path / "w.yaml"
        manifest.write_text(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\n"
            "metadata: {name: world}\nspec: {host: world}\n"
        )
        applied = p.shoal("apply", "-f", str(manifest), "--wait")
        assert applied.returncode == 0, applied.stderr
        revision = max(p.status()["proxies"].values())
        acks = p.status()["proxies"]
        assert acks["gateway/0"] == acks["gateway/1"] == revision
    finally:
        p.stop()


def _cmdlines() -> dict[int, bytes]:
    """Every process's command line, as any local user reads it (``ps``)."""
    lines = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                lines[int(entry.name)] = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # exited meanwhile
    return lines


@pytest.mark.timeout(120)
def test_no_secret_on_a_command_line_or_in_an_instance_environment(
    platform: Platform, tmp_path: Path
) -> None:
    """The store password is on no command line (controller, node, gateway, Redis); instances
    inherit none of the platform's settings; a password or join token typed on a command line
    is refused in one line, and a URL file must be private."""
    password = (platform.home / "redis.pass").read_text().strip()
    eventually_sync(
        lambda: ready_count(platform), "5 ready instances", until=lambda n: n == 5, timeout=30
    )
    assert not [pid for pid, line in _cmdlines().items() if password.encode() in line]
    for instance in platform.status()["instances"]:
        environ = Path(f"/proc/{instance['pid']}/environ").read_bytes()
        variables = dict(v.split(b"=", 1) for v in environ.split(b"\0") if b"=" in v)
        assert not {
            n
            for n in variables
            if n.startswith(b"SHOAL_")
            and n not in (b"SHOAL_SERVICE", b"SHOAL_REVISION", b"SHOAL_INSTANCE", b"SHOAL_MESH_URL")
        }, instance
        assert password.encode() not in environ
        assert str(platform.home).encode() not in environ

    # $SHOAL_HOME is its owner's alone: no other uid reads the password, the CA key or logs.
    assert platform.home.stat().st_mode & 0o077 == 0
    # The node's join token (its initial environment; popped from os.environ once read) is
    # in the AOF only as its id: the CSR carried a proof, never the secret.
    node_pid = next(iter(platform.status()["nodes"].values()))["pid"]
    environ = Path(f"/proc/{node_pid}/environ").read_bytes().split(b"\0")
    token = next(v for v in environ if v.startswith(b"SHOAL_JOIN_TOKEN=")).split(b"=", 1)[1]
    token_id, secret = token.split(b".", 1)
    aof = b"".join(p.read_bytes() for p in (platform.home / "redis").rglob("*.aof"))
    assert token_id in aof and secret not in aof

    # Each service's instances run as a uid of its own, wherever the checkout is (a clone in
    # `mktemp -d` too), unless the node cannot make mount namespaces and says so; a service's
    # outbound listener calls under its identity, so it serves only that uid: any other's
    # connection is closed unanswered.
    node = next(iter(platform.status()["nodes"].values()))
    uids = {i["service"]: uid_of(i["pid"]) for i in platform.status()["instances"]}
    if (
        os.geteuid() == 0
        and shutil.which("unshare")
        and not subprocess.run(["unshare", "-m", "true"]).returncode
    ):
        assert not node["isolation"]["limits"], node["isolation"]
    if node["isolation"]["limits"]:  # app instances run as the platform's user
        assert "isolation is limited" in platform.shoal("status").stdout
        assert set(uids.values()) == {os.getuid()}
    else:
        assert node["isolation"]["uids"] == "20000-29999"
        assert uids["hello"] != uids["world"] and not set(uids.values()) & {0, os.getuid()}
    log = (platform.home / "logs" / "node.log").read_text()
    port = re.findall(r"outbound listener for hello \(\S*\) on 127\.0\.0\.1:(\d+)", log)[-1]
    curl = ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", "-H", "Host: world"]
    curl.append(f"http://127.0.0.1:{port}/")
    assert subprocess.run(curl, capture_output=True, text=True, user=uids["hello"]).stdout == "200"
    others = {65534} | ({uids["world"], os.getuid()} - {uids["hello"]})
    for uid in others:
        other = subprocess.run(curl, capture_output=True, text=True, user=uid)
        assert other.stdout == "000" and other.returncode != 0, uid

    url = recorded_url(platform.home)
    assert url is not None and password in url
    typed = platform.shoal("status", "--redis", url)
    assert typed.returncode == 2 and typed.stdout == ""
    assert typed.stderr.count("\n") == 1 and "ps" in typed.stderr and password not in typed.stderr
    token = platform.shoal("node", "--join-token", "abcd.efgh")
    assert token.returncode == 2 and "--join-token" in token.stderr
    assert token.stderr.count("\n") == 1

    url_file = tmp_path / "store.url"
    url_file.write_text(url + "\n")
    url_file.chmod(0o644)
    shared = platform.shoal("status", "--redis", f"@{url_file}")
    assert shared.returncode == 2 and "chmod 600" in shared.stderr
    url_file.chmod(0o600)
    private = platform.shoal("status", "-o", "json", "--redis", f"@{url_file}")
    assert private.returncode == 0, private.stderr
    assert json.loads(private.stdout)["instances"]


@pytest.mark.timeout(120)
def test_each_component_uses_a_store_user_of_its_own(platform: Platform) -> None:
    """Controller, node, gateway and dashboard connect as their own Redis users (none as the
    administrator), and running the example, changing weights, rotating the CA and showing it
    all on the dashboard never hits a permission they lack (Redis's ACL log stays empty)."""
    eventually_sync(
        lambda: ready_count(platform), "5 ready instances", until=lambda n: n == 5, timeout=30
    )

    def shown() -> list[str]:
        url = f"http://127.0.0.1:{platform.dashboard_port}/api/overview"
        with urlopen(url, timeout=5) as r:
            return [s["name"] for s in json.loads(r.read())["services"]]

    eventually_sync(shown, "the dashboard to show the example", until=lambda s: "hello" in s)
    for offset in range(3):  # gateway, node, controller: each an admin port of its own
        with urlopen(f"http://127.0.0.1:{platform.metrics_port + offset}/readyz", timeout=5) as r:
            assert r.status == 200
    controller = f"http://127.0.0.1:{platform.metrics_port + 2}/metrics"
    with urlopen(controller, timeout=5) as r:
        text = r.read().decode()
    leading = [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == "shoal_controller_leading"
    ]
    assert leading == [1.0]
    assert platform.shoal("weights", "hello", "v1=50", "v2=50").returncode == 0
    rotated = platform.shoal("certs", "rotate")
    assert rotated.returncode == 0, rotated.stderr
    for _ in range(10):
        assert platform.request("hello", "/chain")[2] == "World, Hello!\n"
    url = recorded_url(platform.home)
    assert url is not None
    admin = redis.Redis.from_url(url, decode_responses=True)
    try:
        users = {c["user"] for c in admin.client_list() if c["id"] != str(admin.client_id())}
        assert users == {"shoal-controller", "shoal-node", "shoal-gateway", "shoal-dashboard"}
        assert admin.acl_log() == []
    finally:
        admin.close()


@pytest.mark.timeout(240)
def test_no_process_outlives_a_killed_shoal_up_and_shoal_down_stops_the_next(
    tmp_path: Path,
) -> None:
    """SIGKILL of ``shoal up``: within seconds no process it started (Redis, components,
    instances) is left, and the next ``shoal up`` on the same state starts. ``shoal down`` then
    stops that one as Ctrl-C does, waits for it, and leaves nothing either."""
    first = Platform(home=tmp_path / "home", port=listen_ports(), mesh_port=listen_ports())
    second = Platform(home=first.home, port=first.port, mesh_port=first.mesh_port)
    try:
        first.start()
        eventually_sync(lambda: ready_count(first), "the example's instances ready", until=bool)
        assert first.process is not None
        family = descendants(first.process.pid)
        assert len(family) >= 5, family  # redis, controller, node, gateway, an instance or more
        first.process.kill()
        first.process.communicate()
        eventually_sync(
            lambda: still_running(family),
            "no process of the killed shoal up",
            until=lambda s: not s,
            timeout=5,  # the issue: no Shoal process 5 s after the kill
        )
        second.start()
        assert second.process is not None
        eventually_sync(lambda: ready_count(second), "instances ready again", until=bool)
        family = descendants(second.process.pid)
        again = second.shoal(
            "up", "--port", str(listen_ports()), "--mesh-port", str(listen_ports())
        )
        assert again.returncode == 5 and "already runs" in again.stderr, again
        down = second.shoal("down")
        assert down.returncode == 0 and down.stdout.strip().endswith("stopped"), down
        second.process.communicate(timeout=5)
        assert second.process.returncode == 0
        assert not still_running(family)
        nothing = second.shoal("down")
        assert nothing.returncode == 0 and "nothing to stop" in nothing.stdout
    finally:
        for platform in (first, second):
            if platform.process is not None and platform.process.poll() is None:
                platform.stop()


@pytest.mark.timeout(180)
def test_long_commands_print_one_document_and_logs_follow(platform: Platform) -> None:
    """A rollout, a leaf rotation and a drill with ``-o json``/``-o yaml`` print one document on
    stdout, what they say as they go on stderr; ``shoal logs -f`` prints a line an instance
    writes as it comes (it looks every 0.2 s)."""
    import select

    import yaml

    eventually_sync(lambda: ready_count(platform), "the example ready", until=lambda n: n >= 5)
    rollout = platform.shoal(
        "rollout", "hello", "--to", "v2", "--steps", "100", "--interval", "1s", "-o", "json"
    )
    assert rollout.returncode == 0, rollout
    assert json.loads(rollout.stdout)["result"] == "done", rollout.stdout
    assert "rollout of hello to v2" in rollout.stderr, rollout.stderr
    rotated = platform.shoal("certs", "rotate", "-o", "yaml")
    assert rotated.returncode == 0 and yaml.safe_load(rotated.stdout)["epoch"] >= 1, rotated
    drill = platform.shoal(
        "drill",
        "failover",
        "hello",
        "--fault",
        "error",
        "--duration",
        "4s",
        "--rps",
        "20",
        "-o",
        "json",
    )
    assert drill.returncode == 0, drill
    assert json.loads(drill.stdout)["targets"] and "warm-up: " in drill.stderr, drill

    [log] = (platform.home / "logs" / "instances").glob("world-v1-*.log")
    with log.open("a") as out:  # as the instance writes: appending to its stdout
        out.write("a line written before\n")
    follower = subprocess.Popen(
        [sys.executable, "-m", "shoal", "logs", "world", "-f", "--tail", "1"],
        env=platform.env,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert follower.stdout is not None
        first = follower.stdout.readline()  # it has read the log: it follows from here
        assert first.rstrip().endswith("] a line written before"), first
        with log.open("a") as out:
            out.write("a line written now\n")
        ready, _, _ = select.select([follower.stdout], [], [], 5.0)
        assert ready, "no line within 5 s"
        line = follower.stdout.readline()
        assert line.startswith("[v1/") and line.rstrip().endswith("] a line written now"), line
    finally:
        follower.terminate()
        follower.communicate(timeout=10)
