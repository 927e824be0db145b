"""Health probes of a local instance: a TCP connect, an HTTP GET whose status is 2xx/3xx, or the
standard gRPC health check (``grpc.health.v1.Health/Check`` over h2c answering SERVING, as
Kubernetes' ``grpc`` probe)."""

from __future__ import annotations

import asyncio
import contextlib

import h2.config
import h2.connection
import h2.events
import h2.exceptions

from shoal.resources.model import HealthCheck

HEALTH_CHECK = b"/grpc.health.v1.Health/Check"
_ALL = b"\x00\x00\x00\x00\x00"  # a HealthCheckRequest for the whole server: empty, unframed
_SERVING = b"\x00\x00\x00\x00\x02\x08\x01"  # HealthCheckResponse{status: SERVING}, framed


async def check(host: str, port: int, health: HealthCheck, *, timeout: float) -> bool:
    """``health``'s probe of the instance at ``host:port``."""
    if health.grpc:
        return await grpc_probe(host, port, timeout=timeout)
    return await probe(host, port, health.path, timeout=timeout)


async def grpc_probe(host: str, port: int, *, timeout: float) -> bool:
    """True when the gRPC server answers the health check with SERVING (grpc-status 0)."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            h2c = h2.connection.H2Connection(
                h2.config.H2Configuration(client_side=True, header_encoding=None)
            )
            h2c.initiate_connection()
            head = [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", HEALTH_CHECK),
                (b":authority", f"{host}:{port}".encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
            ]
            h2c.send_headers(1, head)
            h2c.send_data(1, _ALL, end_stream=True)
            writer.write(h2c.data_to_send())
            body, status = b"", None
            while data := await reader.read(65536):
                for event in h2c.receive_data(data):
                    if isinstance(event, h2.events.DataReceived) and event.stream_id == 1:
                        body += event.data or b""
                    elif isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        status = dict(event.headers or []).get(b"grpc-status", status)
                    elif isinstance(event, h2.events.StreamEnded | h2.events.StreamReset):
                        return status == b"0" and body == _SERVING
                writer.write(h2c.data_to_send())
            return False
    except (OSError, TimeoutError, h2.exceptions.H2Error):
        return False
    finally:
        await _close(writer)


async def probe(host: str, port: int, path: str | None, *, timeout: float) -> bool:
    """True when the instance answers: TCP accept (``path`` None) or HTTP 200-399 on ``path``."""
    writer = None
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
            if path is None:
                return True
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: shoal-probe\r\n"
                "Connection: close\r\n\r\n".encode()
            )
            status_line = await reader.readline()
            parts = status_line.split(b" ", 2)
            return len(parts) >= 2 and parts[1].isdigit() and 200 <= int(parts[1]) < 400
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        await _close(writer)


async def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
