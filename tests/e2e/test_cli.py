"""The CLI's contract in-process (typer's runner, a real Redis): one-line errors, exit codes."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from shoal.cli.main import app
from shoal.store.embedded import free_port
from shoal.store.keys import Keys

EXAMPLE = Path(__file__).resolve().parents[2] / "deploy" / "examples" / "hello-world"


@pytest.fixture
def shoal(redis_url: str, keys: Keys, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    """Run ``shoal ARGS`` against the test's Redis and key prefix."""
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("SHOAL_REDIS_URL", redis_url)
    monkeypatch.setenv("SHOAL_PREFIX", keys.prefix)
    runner = CliRunner()

    def run(*args: str, input: str | None = None):  # type: ignore[no-untyped-def]
        return runner.invoke(app, list(args), input=input)

    return run


def one_line_error(result) -> str:  # type: ignore[no-untyped-def]
    """The error a failed command printed: exactly one line, no traceback."""
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    return str(lines[0])


def test_unknown_kind_is_a_user_error(shoal) -> None:  # type: ignore[no-untyped-def]
    """A kind Shoal does not know is exit 2 with one line naming the kinds it knows."""
    result = shoal("get", "pods")
    assert result.exit_code == 2
    assert "VirtualService" in one_line_error(result)


def test_missing_file_is_a_user_error(shoal, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Applying a file that does not exist names it, exit 2."""
    result = shoal("apply", "-f", str(tmp_path / "nope.yaml"))
    assert result.exit_code == 2
    assert "nope.yaml" in one_line_error(result)


def test_no_store_is_exit_4(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a running Shoal or a --redis URL, status says how to start one, exit 4."""
    monkeypatch.setenv("SHOAL_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("SHOAL_REDIS_URL", raising=False)
    result = CliRunner().invoke(app, ["status"])
    assert result.exit_code == 4
    assert "shoal up" in one_line_error(result)


def test_apply_get_scale_delete(shoal) -> None:  # type: ignore[no-untyped-def]
    """The example applies; get shows it as JSON; scale changes bounds in place (same
    revision); deleting a service removes all its revisions; deleting again is exit 3."""
    result = shoal("apply", "-f", str(EXAMPLE / "hello.yaml"), "-f", str(EXAMPLE / "world.yaml"))
    assert result.exit_code == 0, result.output
    docs = json.loads(shoal("get", "service", "hello", "-o", "json").output)
    assert sorted(d["spec"]["revision"] for d in docs) == ["v1", "v2"]
    result = shoal("scale", "hello", "--min", "3", "--revision", "v1")
    assert result.exit_code == 0, result.output
    assert result.output.strip() == "hello/v1: min 3, max 10, target 10"
    result = shoal("scale", "hello", "--min", "20")
    assert result.exit_code == 2 and "min <= max" in one_line_error(result)
    assert shoal("delete", "service", "world").exit_code == 0
    result = shoal("delete", "service", "world")
    assert result.exit_code == 3 and "not found" in one_line_error(result)


def test_deleting_a_service_deletes_the_routing_that_only_served_it(shoal) -> None:  # type: ignore[no-untyped-def]
    """``delete service hello`` also deletes hello's VirtualService and DestinationRule and
    says so, leaving a VirtualService that routes elsewhere too; ``--keep-routes`` keeps them."""
    assert shoal("apply", "-f", str(EXAMPLE / "hello.yaml")).exit_code == 0
    shared = (
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata: {name: shared}\n"
        "spec: {hosts: [both], http: [{match: [{uri: {prefix: /w}}], route: [{destination: "
        "{host: world}}]}, {route: [{destination: {host: hello}}]}]}\n"
    )
    assert shoal("apply", "-f", "-", input=shared).exit_code == 0
    result = shoal("delete", "service", "hello")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "deleted Service/hello/v1",
        "deleted Service/hello/v2",
        "deleted VirtualService/hello",
        "deleted DestinationRule/hello",
        result.output.splitlines()[-1],
    ]
    assert shoal("get", "vs", "hello").exit_code == 3 and shoal("get", "dr", "hello").exit_code == 3
    assert shoal("get", "vs", "shared").exit_code == 0
    assert shoal("apply", "-f", str(EXAMPLE / "hello.yaml")).exit_code == 0
    result = shoal("delete", "service", "hello", "--keep-routes")
    assert result.exit_code == 0 and "VirtualService" not in result.output
    assert shoal("get", "vs", "hello").exit_code == 0


def test_weights_must_sum_to_100(shoal) -> None:  # type: ignore[no-untyped-def]
    """A split that does not sum to 100 changes nothing and says so in one line."""
    assert shoal("apply", "-f", str(EXAMPLE / "hello.yaml")).exit_code == 0
    before = shoal("get", "vs", "hello", "-o", "json").output
    result = shoal("weights", "hello", "v1=80", "v2=30")
    assert result.exit_code == 2 and "sum to 100" in one_line_error(result)
    assert shoal("get", "vs", "hello", "-o", "json").output == before


SEED = Path(__file__).resolve().parents[1] / "seed"


def test_seed_manifests(shoal) -> None:  # type: ignore[no-untyped-def]
    """The seed's PeerAuthentication (a TLS certificate in a ``tls:`` block) is refused in one
    line naming the file, document, field and value and saying what to write instead; applied
    with the others, nothing is applied. The VirtualService and DestinationRule apply, and a
    split leaves the ``end-user: jason`` rule and the destination hosts as they were."""
    result = shoal("apply", "-f", str(SEED))
    assert result.exit_code == 2
    error = one_line_error(result)
    assert "peer-authentication.yaml, document 0, field spec.tls:" in error
    assert "'serverCertificate': '/etc/shoal/certs/cert.pem'" in error
    assert "spec.mtls.mode" in error and "--cert FILE --key FILE" in error
    assert shoal("get", "vs", "-o", "json").output.strip() == "[]"
    files = ("virtual-service.yaml", "destination-rule.yaml")
    assert shoal("apply", *(a for f in files for a in ("-f", str(SEED / f)))).exit_code == 0
    before = json.loads(shoal("get", "vs", "hello", "-o", "json").output)[0]["spec"]["http"]
    result = shoal("weights", "hello", "v1=80", "v2=20")
    assert result.exit_code == 0, result.output
    assert "(default route): hello → v1=80, v2=20" in result.output
    after = json.loads(shoal("get", "vs", "hello", "-o", "json").output)[0]["spec"]["http"]
    assert after[0] == before[0]  # jason's rule
    assert after[1]["route"] == [
        {"destination": {"host": "hello", "subset": "v1"}, "weight": 80},
        {"destination": {"host": "hello", "subset": "v2"}, "weight": 20},
    ]


def test_bad_edge_flag_starts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A bad --limit is exit 2 with one line, for the gateway and for 'up' before it starts
    anything (no embedded Redis in $SHOAL_HOME)."""
    home = tmp_path / "home"
    monkeypatch.setenv("SHOAL_HOME", str(home))
    monkeypatch.delenv("SHOAL_REDIS_URL", raising=False)
    runner = CliRunner()
    result = runner.invoke(app, ["gateway", "--limit", "nope=1"])
    assert result.exit_code == 2
    assert "unknown limit 'nope'" in one_line_error(result)
    result = runner.invoke(app, ["up", "--limit", "max_body_bytes=lots"])
    assert result.exit_code == 2
    assert "max_body_bytes=lots" in one_line_error(result)
    assert not (home / "redis.url").exists()


def test_gateway_workers_on_a_taken_port_say_so_once() -> None:
    """'shoal gateway --workers 2' whose port is taken: exit 5 and one line, from the parent,
    before any worker starts (workers that fail like that are not restarted forever)."""
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.Popen(
            [
                *(sys.executable, "-m", "shoal", "gateway", "--redis", "redis://127.0.0.1:1/0"),
                *("--port", str(port), "--workers", "2", "--metrics-port", "0"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,  # a regression's workers die with it below
        )
        try:
            _, stderr = proc.communicate(timeout=60)
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 5
    assert stderr.strip().splitlines() == [
        f"error: cannot listen: gateway port {port} (Address already in use); "
        "is another Shoal running?"
    ]


def test_up_with_a_taken_port_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """'shoal up' whose gateway port is taken stops at once: exit 5, one line naming the port,
    no embedded Redis started (rather than restarting a gateway that can never bind)."""
    home = tmp_path / "home"
    monkeypatch.setenv("SHOAL_HOME", str(home))
    monkeypatch.delenv("SHOAL_REDIS_URL", raising=False)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(
            app, ["up", "--port", str(port), "--mesh-port", str(free_port())]
        )
    assert result.exit_code == 5
    assert f"gateway port {port}" in one_line_error(result)
    assert not (home / "redis.url").exists()


def test_get_shows_labels(shoal, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """A resource's metadata labels are kept and shown by get (table and JSON)."""
    manifest = tmp_path / "vs.yaml"
    manifest.write_text(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\n"
        "metadata: {name: hello, namespace: default, labels: {team: demo}}\n"
        "spec: {hosts: [hello], http: [{route: [{destination: {host: hello}}]}]}\n"
    )
    assert shoal("apply", "-f", str(manifest)).exit_code == 0
    table = shoal("get", "vs").output
    assert "LABELS" in table and "team=demo" in table
    [doc] = json.loads(shoal("get", "vs", "hello", "-o", "json").output)
    assert doc["metadata"]["labels"] == {"team": "demo"}


def test_tag_names_a_revision_and_says_its_host(shoal) -> None:  # type: ignore[no-untyped-def]
    """``shoal tag hello candidate v1`` tags v1 and names the host; an unknown revision is
    exit 3 naming the revisions; --remove takes it away."""
    assert shoal("apply", "-f", str(EXAMPLE / "hello.yaml")).exit_code == 0
    result = shoal("tag", "hello", "candidate", "v1")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "hello/v1: tags candidate",
        "host candidate-hello reaches hello/v1",
    ]
    docs = json.loads(shoal("get", "service", "hello", "-o", "json").output)
    assert {d["spec"]["revision"]: d["spec"].get("tags") for d in docs} == {
        "v1": ["candidate"],
        "v2": None,
    }
    result = shoal("tag", "hello", "candidate", "v9")
    assert result.exit_code == 3 and "revisions: v1, v2" in one_line_error(result)
    result = shoal("tag", "hello", "candidate", "--remove")
    assert result.exit_code == 0 and result.output.splitlines() == ["hello/v1: tags -"]


def test_version() -> None:
    """``shoal --version`` prints the version and exits 0, without a store."""
    import importlib.metadata

    result = CliRunner().invoke(app, ["--version"])
    version = importlib.metadata.version("shoal")
    assert result.exit_code == 0 and result.output.startswith(f"shoal {version} (Python 3.")


def test_output_formats_are_checked_and_reports_serialise(shoal) -> None:  # type: ignore[no-untyped-def]
    """``-o`` is one of table/json/yaml (anything else: one line, exit 2); ``status -o yaml``
    is YAML; a drill's report turns into plain data (it raised AttributeError before)."""
    import json as json_module

    import yaml

    from shoal.platform.drills.drill import Phase, Report

    result = shoal("status", "-o", "xml")
    assert result.exit_code == 2 and "use one of table, wide, json, yaml" in one_line_error(result)
    status = yaml.safe_load(shoal("status", "-o", "yaml").output)
    assert set(status) >= {"nodes", "services", "instances"}
    phase = Phase(requests=10, p50_ms=1.0, p99_ms=2.0)
    report = Report(
        fault="kill",
        targets=["hello/v1/x"],
        requests=30,
        errors={},
        error_rate=0.0,
        before=phase,
        during=phase,
        after=phase,
        detected_after=0.1,
        recovered_after=None,
        retried=1,
    )
    data = report.to_dict()
    assert data["during"] == {"requests": 10, "p50_ms": 1.0, "p99_ms": 2.0}
    json_module.dumps(data)


def test_what_is_not_there_is_said_so(shoal, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``weights``/``rollout`` of an unknown service are exit 3 (not found); an empty manifest
    file applies nothing and says so (exit 2); another kind is an unknown kind, not an unknown
    field."""
    result = shoal("weights", "nosuch", "v1=100")
    assert result.exit_code == 3 and "Service nosuch not found" in one_line_error(result)
    result = shoal("rollout", "nosuch", "--to", "v1")
    assert result.exit_code == 3 and "Service nosuch not found" in one_line_error(result)
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing yet\n")
    result = shoal("apply", "-f", str(empty))
    assert result.exit_code == 2 and "no resources in it" in one_line_error(result)
    config_map = tmp_path / "cm.yaml"
    config_map.write_text("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: x}\ndata: {a: b}\n")
    result = shoal("apply", "-f", str(config_map))
    assert result.exit_code == 2 and "unknown kind" in one_line_error(result)
    assert "ConfigMap" in one_line_error(result)


def test_logs_shows_each_instance_line_after_its_name(shoal, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """``shoal logs hello`` prints the last lines of each instance's log on this host after
    ``[revision/instance]`` (running instances; ``--all``: gone ones too); --revision and
    --instance narrow it; a component's log by name; a service without logs here is exit 3."""
    assert shoal("apply", "-f", str(EXAMPLE / "hello.yaml")).exit_code == 0
    logs = tmp_path / "home" / "logs"
    (logs / "instances").mkdir(parents=True)
    (logs / "instances" / "hello-v1-aaaa1111.log").write_text("one\ntwo\nthree\n")
    (logs / "instances" / "hello-v2-bbbb2222.log").write_text("four\n")
    (logs / "gateway.log").write_text("listening\n")
    gone = shoal("logs", "hello")  # no instance of it runs: the logs of gone ones need --all
    assert gone.exit_code == 3 and "no instance logs of hello" in one_line_error(gone)
    result = shoal("logs", "hello", "--tail", "2", "--all")
    assert result.exit_code == 0, result.output
    assert sorted(result.output.splitlines()) == [
        "[v1/aaaa1111] three",
        "[v1/aaaa1111] two",
        "[v2/bbbb2222] four",
    ]
    only = shoal("logs", "hello", "--revision", "v2", "--all")
    assert only.output.splitlines() == ["[v2/bbbb2222] four"]
    one = shoal("logs", "hello", "--instance", "aaaa1111", "--tail", "1", "--all")
    assert one.output.splitlines() == ["[v1/aaaa1111] three"]
    assert shoal("logs", "gateway").output.splitlines() == ["[gateway] listening"]
    missing = shoal("logs", "world")
    assert missing.exit_code == 3 and "no instance logs of world" in one_line_error(missing)


def _command_paths() -> list[list[str]]:
    """Every leaf command's words: ``["up"]``, ``["certs", "rotate"]``, …"""
    import typer.main

    def walk(command: Any, path: list[str]) -> list[list[str]]:
        subcommands = getattr(command, "commands", None)
        if not subcommands:
            return [path]
        return [p for name, sub in subcommands.items() for p in walk(sub, [*path, name])]

    return walk(typer.main.get_command(app), [])


def test_help_reads_like_kubectl_for_every_command() -> None:
    """Every command's help names its arguments in capitals, never a Python type (``<str>``,
    ``<bool>``) or braces, and lists examples; the root offers shell completion."""
    runner = CliRunner()
    paths = _command_paths()
    assert {"up", "down", "status", "logs"} <= {p[0] for p in paths} and len(paths) > 20
    for path in paths:
        result = runner.invoke(app, [*path, "--help"], terminal_width=100)
        assert result.exit_code == 0, (path, result.output)
        assert not re.search(r"<(str|bool|int|float|list|path)|\{", result.output), result.output
        assert "Examples:\n    shoal " in result.output, (path, result.output)
    get = runner.invoke(app, ["get", "--help"]).output
    assert "get [OPTIONS] KIND [NAME]" in get
    for kind in ("serviceentry (se)", "gateway (gw)", "authorizationpolicy (ap)"):
        assert kind in " ".join(get.split()), get
    root = runner.invoke(app, ["--help"]).output
    assert "--install-completion" in root and "--show-completion" in root
    for line in root.split("Commands:")[1].splitlines():
        assert not line.endswith("..."), line  # each command's summary whole on its line


def run_shoal(*args: str) -> subprocess.CompletedProcess[str]:
    """``python -m shoal ARGS`` as a user runs it (its own process: main()'s error handling)."""
    env = {**os.environ, "SHOAL_HOME": "/nonexistent/shoal-home"}
    shoal = str(Path(sys.executable).parent / "shoal")  # the console script make installs
    return subprocess.run([shoal, *args], capture_output=True, text=True, env=env, timeout=30)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["weights", "--bogus"], "error: no such option: --bogus (see 'shoal weights --help')"),
        (["get"], "error: missing argument 'KIND' (see 'shoal get --help')"),
        (["apply"], "error: missing option '-f' / '--file' (see 'shoal apply --help')"),
        (["nosuch"], "error: no such command 'nosuch' (see 'shoal --help')"),
        (["up", "--port", "x"], "error: invalid value for '--port': "),
        (["status", "-o", "xml"], "error: -o 'xml': use one of table, wide, json, yaml"),
    ],
)
def test_usage_errors_are_one_line_and_exit_2(args: list[str], said: str) -> None:
    """A usage error is one line on stderr (Typer's is a box of several) and exit 2."""
    result = run_shoal(*args)
    assert result.returncode == 2 and result.stdout == "", result
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(said), result.stderr


def test_shoal_alone_prints_its_help() -> None:
    result = run_shoal()
    assert result.returncode == 0 and result.stdout.startswith("Usage: shoal [OPTIONS] COMMAND")


def test_every_command_with_output_gives_json_and_yaml(shoal, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Each command that reports something prints one valid JSON document with ``-o json`` and
    valid YAML with ``-o yaml``, with nothing else on stdout; ``-o wide`` is a table with more
    columns."""
    import yaml

    assert shoal("apply", "-f", str(EXAMPLE)).exit_code == 0
    commands = [
        ["apply", "-f", str(EXAMPLE / "hello.yaml")],
        ["deploy", "-f", str(EXAMPLE / "world.yaml")],
        ["get", "service"],
        ["get", "vs", "hello"],
        ["get", "revisions", "hello"],
        ["weights", "hello", "v1=70", "v2=30"],
        ["scale", "hello", "--max", "8"],
        ["tag", "hello", "candidate", "v2"],
        ["status"],
        ["certs", "status"],
        ["token", "create", "--ttl", "1m"],
    ]
    for command in commands:
        for output, parse in (
            ("json", json.loads),
            ("yaml", lambda t: list(yaml.safe_load_all(t))),
        ):
            result = shoal(*command, "-o", output)
            assert result.exit_code == 0, (command, result.output)
            assert parse(result.output) is not None, (command, output, result.output)
    weights = json.loads(shoal("weights", "hello", "v1=60", "v2=40", "-o", "json").output)
    assert weights["weights"] == {"v1": 60, "v2": 40} and weights["virtualservice"] == "hello"
    tagged = yaml.safe_load(shoal("tag", "hello", "next", "v2", "-o", "yaml").output)
    assert tagged["host"] == "next-hello"
    deleted = json.loads(shoal("delete", "service", "world", "-o", "json").output)
    assert "Service/world/v1" in deleted["deleted"] and deleted["revision"] > 1, deleted
    table, wide = shoal("status").output, shoal("status", "-o", "wide").output
    assert "INSTANCE UIDS" in wide and "INSTANCE UIDS" not in table
