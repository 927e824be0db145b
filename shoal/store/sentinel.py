"""Redis behind Sentinel: the ``redis+sentinel://`` URL, and a master client that fails over fast.

The URL names the Sentinels, not a Redis server::

    redis+sentinel://[[USER]:PASSWORD@]HOST[:PORT][,HOST[:PORT]...]/SERVICE[/DB]
        [?sentinel_password=PW&sentinel_username=USER]

``USER``/``PASSWORD`` authenticate to the Redis master (and its replicas); the Sentinels' own
credentials, when they have any (``requirepass`` in sentinel.conf), go in the query. A port
defaults to 26379; ``DB`` to 0. Values are percent-decoded; IPv6 hosts go in brackets.

Theory of operation. redis-py's async Sentinel pool (8.1) asks a Sentinel for the master every
time it opens a connection, and turns a ``READONLY`` reply into a disconnect plus
``ConnectionError``: after a *crash* the next command finds the promoted replica as soon as
the Sentinels agree on it. After a *manual* failover (``SENTINEL FAILOVER``), though, the old
master stays up and writable until Sentinel demotes it some 10 s later; connections already
open keep writing to it, and those writes are lost when it resyncs. Three additions close that:

- every client follows ``+switch-master`` on each Sentinel (one pub/sub connection each, owned by
  the client and ended by its ``aclose``) and, at the first announcement, drops every
  connection to another address, in use or idle: a command in flight fails with a connection
  error (callers already retry those; a change-feed reader reloads everything), and the next
  one goes to the new master;
- the master is asked of all Sentinels at once and the answer with the highest config epoch
  wins, so a Sentinel that has not heard of the switch yet cannot send us back to the old one;
- a write refused inside a Lua script (``ERR ... -READONLY``, which redis-py does not
  recognise) is treated like a plain ``READONLY``.
"""

from __future__ import annotations

import asyncio
import logging
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, unquote

import redis.asyncio as aioredis
import redis.exceptions
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import (
    MasterNotFoundError,
    Sentinel,
    SentinelConnectionPool,
    SentinelManagedConnection,
)
from redis.backoff import NoBackoff

from shoal.store.connection import NO_CLIENT_INFO, honour_cancellation

log = logging.getLogger(__name__)

SCHEME = "redis+sentinel"
DEFAULT_PORT = 26379
SWITCH_CHANNEL = "+switch-master"
SENTINEL_TIMEOUT = 1.0  # seconds to connect to and hear from one Sentinel
RESUBSCRIBE_DELAY = 1.0  # seconds between attempts to follow a Sentinel that went away
POLL = 5.0  # seconds a listener waits for a message before checking it should go on
# A Sentinel host that vanishes without a FIN/RST is noticed by TCP keepalive in ~11 s (where
# the platform has these options: Linux does).
KEEPALIVE = {
    getattr(socket, name): value
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 2), ("TCP_KEEPCNT", 3))
    if hasattr(socket, name)
}

Address = tuple[str, int]


@dataclass(frozen=True, slots=True, kw_only=True)
class SentinelURL:
    """A parsed ``redis+sentinel://`` URL."""

    sentinels: tuple[Address, ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)


_URL_REST = re.compile(r"([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?", re.DOTALL)


def parse_sentinel_url(url: str) -> SentinelURL:
    """Parse ``url``; ValueError naming the part at fault (never a password) if it is invalid."""
    # Split by hand: urlsplit's host checks differ between 3.11 patch releases, and a list of
    # hosts is no one host anyway (each address is checked below).
    scheme, _, rest = url.partition("://")
    if scheme.lower() != SCHEME:
        raise ValueError(f"scheme must be {SCHEME!r}, got {scheme!r}")
    match = _URL_REST.fullmatch(rest)
    assert match is not None  # every string matches
    netloc, path_text, query_text = match.groups(default="")
    creds, _, hosts = netloc.rpartition("@")
    username = password = None
    if creds:
        user, colon, secret = creds.partition(":")
        username = unquote(user) or None
        password = unquote(secret) if colon else None
    sentinels = tuple(_address(item) for item in hosts.split(","))
    path = [p for p in path_text.split("/") if p]
    if not path or len(path) > 2:
        raise ValueError(f"path must be /SERVICE or /SERVICE/DB, got {path_text!r}")
    db = 0
    if len(path) == 2:
        if not path[1].isdecimal():
            raise ValueError(f"database must be a number, got {path[1]!r}")
        db = int(path[1])
    query = dict(parse_qsl(query_text, keep_blank_values=True, strict_parsing=False))
    unknown = set(query) - {"sentinel_password", "sentinel_username"}
    if unknown:
        raise ValueError(f"unknown query parameter(s) {sorted(unknown)}")
    return SentinelURL(
        sentinels=sentinels,
        service=unquote(path[0]),
        db=db,
        username=username,
        password=password,
        sentinel_username=query.get("sentinel_username") or None,
        sentinel_password=query.get("sentinel_password") or None,
    )


def _address(item: str) -> Address:
    """``host``, ``host:port``, ``[v6]`` or ``[v6]:port``."""
    if item.startswith("["):
        host, bracket, rest = item[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError(f"bad Sentinel address {item!r}")
        port = rest[1:]
    else:
        host, _, port = item.partition(":")
    if not host:
        raise ValueError(f"empty Sentinel host in {item!r}")
    if not port:
        return host, DEFAULT_PORT
    if not port.isdecimal() or not 0 < int(port) < 65536:
        raise ValueError(f"bad Sentinel port in {item!r}")
    return host, int(port)


def newest_master(states: Iterable[Mapping[str, Any]], *, min_other_sentinels: int = 0) -> Address:
    """Of the Sentinels' views of one master, the address in the newest valid one.

    A view counts if it says master, not down, and its Sentinel sees enough peers; the newest
    has the highest config epoch (each failover bumps it). MasterNotFoundError if none counts.
    """
    valid = [
        s
        for s in states
        if s.get("is_master")
        and not s.get("is_sdown")
        and not s.get("is_odown")
        and s.get("num-other-sentinels", 0) >= min_other_sentinels
    ]
    if not valid:
        raise MasterNotFoundError("no Sentinel reports a master that is up")
    best = max(valid, key=lambda s: int(s.get("config-epoch", 0)))
    return str(best["ip"]), int(best["port"])


def parse_switch(data: str, service: str) -> Address | None:
    """The new master's address in a ``+switch-master`` message about ``service``, else None.

    The message reads ``<name> <old-ip> <old-port> <new-ip> <new-port>``.
    """
    parts = data.split()
    if len(parts) != 5 or parts[0] != service or not parts[4].isdecimal():
        return None
    return parts[3], int(parts[4])


class _Sentinels(Sentinel):
    """redis-py's Sentinel client, asking every Sentinel at once and trusting the newest view."""

    async def discover_master(self, service_name: str) -> Address:
        replies = await asyncio.gather(*(self._ask(s) for s in self.sentinels))
        states = [r.get(service_name) for r in replies if not isinstance(r, str)]
        try:
            return newest_master(
                [s for s in states if s is not None], min_other_sentinels=self.min_other_sentinels
            )
        except MasterNotFoundError:
            errors = [r for r in replies if isinstance(r, str)]
            detail = f": {'; '.join(errors)}" if errors else ""
            raise MasterNotFoundError(f"no master found for {service_name!r}{detail}") from None

    @staticmethod
    async def _ask(sentinel: aioredis.Redis) -> dict[str, dict[str, Any]] | str:
        """``SENTINEL MASTERS`` from one Sentinel, or why it did not answer."""
        try:
            async with asyncio.timeout(SENTINEL_TIMEOUT):
                masters = await sentinel.sentinel_masters()
        except (redis.exceptions.RedisError, OSError, TimeoutError) as e:
            kwargs = sentinel.connection_pool.connection_kwargs
            return f"{kwargs.get('host')}:{kwargs.get('port')}: {e!r}"
        if not isinstance(masters, dict):  # RESP3 shape: we speak RESP2
            raise TypeError(f"unexpected SENTINEL MASTERS reply {masters!r}")
        return masters


class _MasterConnection(SentinelManagedConnection):
    """A connection to the master that also takes a script's ``-READONLY`` as a demotion."""

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().read_response(*args, **kwargs)
        except redis.exceptions.ResponseError as e:
            if "-READONLY" not in str(e) or not self.connection_pool.is_master:
                raise
            await self.disconnect()
            raise redis.exceptions.ConnectionError(
                "the master is now a replica (a script's write was refused)"
            ) from None


class _MasterPool(SentinelConnectionPool):
    """Connections to the current master only; follows ``+switch-master`` while in use.

    The listener starts with the first connection (an event loop is running by then) and ends
    in :meth:`aclose`, which ``Redis.aclose`` calls: the client owns it.
    """

    sentinel_manager: _Sentinels

    def __init__(self, service_name: str, sentinel_manager: _Sentinels, **kwargs: Any) -> None:
        super().__init__(service_name, sentinel_manager, **kwargs)  # type: ignore[no-untyped-call]
        self._listener: asyncio.Task[None] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        """A connected connection to the master last heard of."""
        if self._listener is None:
            self._listener = asyncio.get_running_loop().create_task(
                self._follow_switches(), name=f"sentinel switch-master {self.service_name}"
            )
            self._listener.add_done_callback(_report_crash)
        conn = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        if self.master_address is not None and (conn.host, conn.port) != self.master_address:
            # Connected before a switch was announced (a race with the listener): reconnect.
            try:
                await conn.disconnect()
                await conn.connect()
            except BaseException:
                await self.release(conn)
                raise
        return conn

    async def get_master_address(self) -> Address:
        """Ask the Sentinels (every new connection does); drop connections elsewhere."""
        address = await self.sentinel_manager.discover_master(self.service_name)
        await self.switch_to(address)
        return address

    async def switch_to(self, address: Address) -> None:
        """Make ``address`` the master: disconnect every connection to any other address."""
        self.master_address = address
        connections: list[Any] = [*self._available_connections, *self._in_use_connections]
        stale = [c for c in connections if c.is_connected and (c.host, c.port) != address]
        if stale:
            log.warning(
                "Redis master of %r is now %s:%s: dropping %d connection(s) to the old one",
                self.service_name,
                *address,
                len(stale),
            )
            await asyncio.gather(*(c.disconnect() for c in stale), return_exceptions=True)

    async def aclose(self) -> None:
        """Stop following Sentinel, close the Sentinel clients, then every connection."""
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            await asyncio.wait([listener])  # a cancellation of our own still propagates
        await self.sentinel_manager.aclose()
        await super().aclose()

    async def _follow_switches(self) -> None:
        async with asyncio.TaskGroup() as tg:
            for sentinel in self.sentinel_manager.sentinels:
                tg.create_task(self._follow_one(sentinel))

    async def _follow_one(self, sentinel: aioredis.Redis) -> None:
        """Apply every ``+switch-master`` one Sentinel announces; resubscribe when it goes away."""
        while True:
            try:
                async with sentinel.pubsub(ignore_subscribe_messages=True) as pubsub:
                    async with asyncio.timeout(SENTINEL_TIMEOUT):
                        await pubsub.subscribe(SWITCH_CHANNEL)
                    while True:
                        message = await pubsub.get_message(timeout=POLL)
                        honour_cancellation()
                        if message is None or message.get("type") != "message":
                            continue
                        address = parse_switch(str(message["data"]), self.service_name)
                        if address is not None:
                            await self.switch_to(address)
            except (redis.exceptions.RedisError, OSError, TimeoutError) as e:
                log.debug("not following Sentinel %s: %s", sentinel, e)
            honour_cancellation()
            await asyncio.sleep(RESUBSCRIBE_DELAY)


def _report_crash(task: asyncio.Task[None]) -> None:
    """A listener only ends by cancellation; anything else is a bug: say so at once."""
    if not task.cancelled() and (e := task.exception()) is not None:
        log.error("stopped following Sentinel: %r", e, exc_info=e)


def master_client(
    target: SentinelURL,
    *,
    socket_timeout: float | None,
    socket_connect_timeout: float,
    health_check_interval: int,
) -> aioredis.Redis:
    """A client of ``target``'s current master, with :class:`_MasterPool`'s fast failover."""
    sentinels = _Sentinels(
        list(target.sentinels),
        sentinel_kwargs={
            "username": target.sentinel_username,
            "password": target.sentinel_password,
            # No socket timeout: with one, redis-py sends through asyncio.wait_for, which can
            # swallow a cancellation on Python 3.11 (gh-86296); each call has its own deadline.
            "socket_timeout": None,
            "socket_connect_timeout": SENTINEL_TIMEOUT,
            "socket_keepalive": True,
            "socket_keepalive_options": KEEPALIVE,
            "decode_responses": True,
            "retry": Retry(NoBackoff(), 0),  # every Sentinel is asked at once: no retries
        },
    )
    client: aioredis.Redis = sentinels.master_for(
        target.service,
        connection_pool_class=_MasterPool,
        connection_class=_MasterConnection,
        username=target.username,
        password=target.password,
        db=target.db,
        decode_responses=True,
        socket_timeout=socket_timeout,
        socket_connect_timeout=socket_connect_timeout,
        health_check_interval=health_check_interval,
        **NO_CLIENT_INFO,
    )
    return client
