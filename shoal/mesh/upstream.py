"""Pooled HTTP/1.1 connections to instances, over aiohttp's client.

Everything aiohttp raises is translated here into :class:`UpstreamError`, which carries the
``x-shoal-cause`` and HTTP status the proxy answers with (DESIGN.md §4 step 5).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass

import aiohttp
from yarl import URL

from shoal.errors import ShoalError
from shoal.http.headers import Headers
from shoal.http.refusal import (
    CAUSE_HEADER,
    UPSTREAM_CONNECT_ERROR,
    UPSTREAM_RESET,
    UPSTREAM_TIMEOUT,
)

UNSENT = "x-shoal-unsent"
"""Set by a node router on a refusal made before any byte reached an instance."""


class UpstreamError(ShoalError):
    """The upstream could not be reached or did not answer in time."""

    def __init__(self, status: int, cause: str, detail: str, *, sent: bool) -> None:
        super().__init__(detail)
        self.status = status
        self.cause = cause
        self.sent = sent  # whether any byte of the request may have reached the upstream


@dataclass(slots=True)
class UpstreamResponse:
    """A response whose body is still to be read from :meth:`chunks`."""

    status: int
    headers: Headers
    _response: aiohttp.ClientResponse

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; upstream failures mid-body raise :class:`UpstreamError`."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as e:
            raise UpstreamError(502, UPSTREAM_RESET, f"upstream body: {e}", sent=True) from None
        finally:
            self._response.release()

    def close(self) -> None:
        """Drop the connection (the body was not read to the end)."""
        self._response.close()


class Upstreams:
    """One keep-alive pool for all upstream instances of a proxy process."""

    def __init__(self, *, connect_timeout: float = 3.0) -> None:
        self._connect_timeout = connect_timeout
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=0, limit_per_host=0, keepalive_timeout=30, ttl_dns_cache=None
                ),
                auto_decompress=False,
                skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
                cookie_jar=aiohttp.DummyCookieJar(),
            )
        return self._session

    async def request(
        self,
        authority: str,
        method: str,
        target: str,
        headers: Headers,
        body: AsyncIterator[bytes] | bytes | None,
        *,
        head_timeout: float | None = None,
        total_timeout: float | None = None,
        tls: ssl.SSLContext | None = None,
    ) -> UpstreamResponse:
        """Send one request to ``authority`` (``host:port``), over ``tls`` when given; return
        once the response head has arrived.

        ``head_timeout`` bounds the wait for the response head; ``total_timeout`` the whole
        exchange, body included. Connections are pooled per authority and TLS context, so a
        new context (a renewed certificate, a new bundle) is used by new connections only.
        """
        # encoded=True: the target was normalised at the edge; send it byte for byte.
        url = URL(f"{'https' if tls else 'http'}://{authority}{target}", encoded=True)
        hdrs = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in headers]
        try:
            async with asyncio.timeout(head_timeout):
                response = await self._client().request(
                    method,
                    url,
                    headers=hdrs,
                    data=body,
                    allow_redirects=False,
                    timeout=aiohttp.ClientTimeout(
                        total=total_timeout, connect=self._connect_timeout
                    ),
                    compress=None,
                    chunked=None,
                    ssl=tls if tls is not None else True,
                )
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as e:
            raise UpstreamError(
                503, UPSTREAM_CONNECT_ERROR, f"{authority}: {e}", sent=False
            ) from None
        except TimeoutError:
            raise UpstreamError(
                504, UPSTREAM_TIMEOUT, f"{authority} timed out", sent=True
            ) from None
        except (aiohttp.ClientError, OSError) as e:
            raise UpstreamError(502, UPSTREAM_RESET, f"{authority}: {e}", sent=True) from None
        if tls is not None and UNSENT in response.headers:
            # A node router refused before any byte reached an instance: safe to retry.
            cause = response.headers.get(CAUSE_HEADER.decode(), UPSTREAM_CONNECT_ERROR)
            response.close()
            raise UpstreamError(response.status, cause, f"{authority}: {cause}", sent=False)
        return UpstreamResponse(
            status=response.status,
            headers=[(bytes(n).lower(), bytes(v)) for n, v in response.raw_headers],
            _response=response,
        )

    async def close(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None
