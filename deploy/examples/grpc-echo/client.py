"""Call the grpc-echo example through Shoal's gateway (or any address) with a stock grpcio client.

    .venv/bin/python deploy/examples/grpc-echo/client.py [HOST:PORT] [--rpcs N]

Prints the unary answer and its trailing metadata, the server stream as it arrives, and a
NOT_FOUND status; with ``--rpcs N``, makes N unary calls and prints how many failed.
"""

from __future__ import annotations

import argparse
import sys

import grpc


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("target", nargs="?", default="localhost:8080")
    parser.add_argument("--authority", default="grpc-echo", help="the Service's host")
    parser.add_argument("--rpcs", type=int, default=0, help="only make this many unary calls")
    args = parser.parse_args()
    options = [("grpc.default_authority", args.authority)]
    with grpc.insecure_channel(args.target, options) as channel:
        say = channel.unary_unary("/echo.Echo/Say")
        if args.rpcs:
            failed = 0
            for i in range(args.rpcs):
                try:
                    say(b"%d" % i, timeout=10)
                except grpc.RpcError as e:
                    failed += 1
                    print(f"rpc {i}: {e.code().name} {e.details()}", file=sys.stderr)
            print(f"{args.rpcs} rpcs, {failed} failed")
            return 1 if failed else 0
        answer, call = say.with_call(b"hello", timeout=10)
        print(answer.decode(), dict(call.trailing_metadata() or ()))
        for message in channel.unary_stream("/echo.Echo/Count")(b"", timeout=10):
            print("stream:", message.decode(), flush=True)
        try:
            say(b"fail", timeout=10)
        except grpc.RpcError as e:
            print("status:", e.code().name, e.details())
    return 0


if __name__ == "__main__":
    sys.exit(main())
