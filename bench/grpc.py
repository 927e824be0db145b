"""gRPC through Shoal: unary calls to a stock grpcio server, direct and through the whole mesh
path (``make bench-grpc``, or ``python -m bench.grpc``).

The server is the ``deploy/examples/grpc-echo`` one (grpcio, 16 threads). ``direct``: h2load
calls it straight, the server on the server core. ``shoal-mesh``: it runs on the other core and
is registered as a ``protocol: grpc`` instance of node ``bench`` (as in the ``shoal-mesh`` row:
gateway → mTLS → node router, both on the server core) and h2load calls through the gateway over
h2c. Each call is a gRPC-shaped POST (``content-type: application/grpc``, ``te: trailers``, one
5-byte-framed message) to ``/echo.Echo/Say``; every answer is checked to be grpc-status 0 first.
Two shapes, as the main bench: saturation (10 connections x 10 streams) and a fixed 500 calls/s.
Prints calls/s, p50/p99 and failures for each, and the mesh/direct ratios. Only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import grpc  # type: ignore[import-untyped]

from bench.parsing import parse_h2load, parse_h2load_log
from bench.process import (
    BACKEND_CPU,
    LOADGEN_CPU,
    SERVER_CPU,
    free_port,
    kill_group,
    spawn,
    wait_for_ports,
)
from bench.shoal_rows import start_shoal_mesh
from bench.tls import make_self_signed
from bench.tools import ensure_tools

SERVER = Path(__file__).resolve().parents[1] / "deploy" / "examples" / "grpc-echo" / "server.py"
MESSAGE = b"\x00\x00\x00\x00\x05hello"  # one uncompressed gRPC message of 5 bytes
RATE = 500


def check(target: str) -> None:
    """One call through ``target``: it must answer OK, or the load numbers mean nothing."""
    options = [("grpc.default_authority", "bench")]
    with grpc.insecure_channel(target, options) as channel:
        answer = channel.unary_unary("/echo.Echo/Say")(b"hello", timeout=10)
    if answer != b"echo: hello":
        raise SystemExit(f"{target} answered {answer!r}")


def load(
    h2load: str, port: int, workdir: Path, seconds: float, rate: int | None
) -> dict[str, object]:
    body, log = workdir / "message.bin", workdir / "h2load.log"
    body.write_bytes(MESSAGE)
    log.unlink(missing_ok=True)
    argv = [h2load, "-t1", f"--log-file={log}", "-d", str(body), "-m", "10"]
    argv += ["-H", "content-type: application/grpc", "-H", "te: trailers"]
    if rate is None:
        argv += ["-c", "10", "-D", f"{seconds:g}"]
    else:  # 10 connections opened 1 ms apart, each at rate/10 calls/s (see bench.load)
        argv += ["-c", "10", "-r", "1", "--rate-period=1ms", f"--rps={rate / 10:g}"]
        argv += ["-n", str(int(rate * seconds))]
    argv.append(f"http://127.0.0.1:{port}/echo.Echo/Say")
    out = subprocess.run(
        ["taskset", "-c", str(LOADGEN_CPU), *argv], capture_output=True, text=True, check=True
    ).stdout
    result = parse_h2load(out, parse_h2load_log(log.read_text()))
    return {"rps": result.rps, "p50": result.p50_ms, "p99": result.p99_ms,
            "errors": result.errors}  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0)
    args = parser.parse_args()
    tools = ensure_tools(install=True)
    h2load = tools.path("h2load")
    workdir = Path(tempfile.mkdtemp(prefix="shoal-bench-grpc-"))
    results: dict[str, dict[str, dict[str, object]]] = {}
    for row in ("direct", "shoal-mesh"):
        port = free_port()
        cpu = SERVER_CPU if row == "direct" else BACKEND_CPU
        server = spawn(
            [sys.executable, str(SERVER), str(port)], cpu=cpu, log_path=workdir / "server.log"
        )
        mesh = None
        try:
            wait_for_ports(server, [port])
            target = port
            if row == "shoal-mesh":
                mesh = start_shoal_mesh(port, make_self_signed(workdir), protocol="grpc")
                assert mesh.h1_port is not None
                target = mesh.h1_port
            check(f"127.0.0.1:{target}")
            load(h2load, target, workdir, 1.0, None)  # warm-up: pools, connections
            results[row] = {
                "saturation": load(h2load, target, workdir, args.seconds, None),
                f"{RATE}/s": load(h2load, target, workdir, args.seconds, RATE),
            }
        finally:
            if mesh is not None:
                mesh.stop()
            kill_group(server)
        for shape, r in results[row].items():
            print(f"{row:<11} {shape:<11} {r['rps']:>8,.0f} calls/s  p50 {r['p50']} ms  "
                  f"p99 {r['p99']} ms  failed {r['errors']}", flush=True)  # fmt: skip
    shutil.rmtree(workdir, ignore_errors=True)
    for shape in results["direct"]:
        mesh_r, direct_r = results["shoal-mesh"][shape], results["direct"][shape]
        print(f"shoal-mesh / direct, {shape}: calls/s {mesh_r['rps'] / direct_r['rps']:.2f}x")  # type: ignore[operator]


if __name__ == "__main__":
    main()
