"""A raw HTTP/1.1 server answering every request with a chunked body and two trailer fields,
run by Shoal as a ``command:`` service (``python3 trailers_server.py $PORT``)."""

from __future__ import annotations

import socketserver
import sys

ANSWER = (
    b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ntransfer-encoding: chunked\r\n"
    b"trailer: grpc-status, grpc-message\r\n\r\n"
    b"5\r\nhello\r\n0\r\ngrpc-status: 0\r\ngrpc-message: fine\r\n\r\n"
)


class Handler(socketserver.StreamRequestHandler):
    """Reads request heads (no bodies) and answers each."""

    def handle(self) -> None:
        while True:
            line = self.rfile.readline()
            if not line:
                return
            while line not in (b"\r\n", b"\n", b""):
                line = self.rfile.readline()
            self.wfile.write(ANSWER)


class Server(socketserver.ThreadingTCPServer):
    """Threads per connection; the port is reusable at once."""

    allow_reuse_address = True
    daemon_threads = True


if __name__ == "__main__":
    with Server(("127.0.0.1", int(sys.argv[1])), Handler) as server:
        server.serve_forever()
