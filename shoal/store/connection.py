"""Connections to Redis, and the translation of redis-py's errors into Shoal's.

Nothing outside ``shoal.store`` imports ``redis``: callers get a :class:`Redis` handle from
:func:`connect` and see only :class:`~shoal.errors.StoreError`.

URLs: ``redis://``, ``rediss://`` and ``unix://`` as redis-py reads them, and
``redis+sentinel://`` for a master found through Sentinel (form and failover behaviour in
:mod:`shoal.store.sentinel`).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions
from redis.maint_notifications import MaintNotificationsConfig

from shoal.errors import StoreError, StoreUnavailable

Redis = aioredis.Redis

SENTINEL_SCHEME = "redis+sentinel"
_SECRET_PARAM = re.compile(r"([?&]sentinel_password=)[^&]*")

BLOCKING_SOCKET_TIMEOUT = 15.0  # seconds; readers BLOCK for 5 s at most (shoal.store.watch)


def connect(url: str, *, blocking: bool = False) -> Redis:
    """A client for ``url``. ``blocking`` clients allow long reads (for ``XREAD BLOCK``).

    A blocking client has no socket timeout of its own: its caller bounds every call with
    ``asyncio.timeout(BLOCKING_SOCKET_TIMEOUT)`` (longer than a BLOCK, but not infinite, or a
    silent network partition would hang it forever). With a socket timeout, redis-py sends
    through ``asyncio.wait_for``, which on Python 3.11 swallows a cancellation that lands just
    as the send completes (CPython gh-86296): a cancelled reader would then block on.
    """
    socket_timeout = None if blocking else 5.0
    health_check_interval = 0 if blocking else 30
    try:
        if url.startswith(f"{SENTINEL_SCHEME}:"):
            # Imported here: shoal.store.sentinel imports this module.
            from shoal.store.sentinel import master_client, parse_sentinel_url

            return master_client(
                parse_sentinel_url(url),
                socket_timeout=socket_timeout,
                socket_connect_timeout=3.0,
                health_check_interval=health_check_interval,
            )
        return aioredis.Redis.from_url(
            url,
            decode_responses=True,
            socket_timeout=socket_timeout,
            socket_connect_timeout=3.0,
            health_check_interval=health_check_interval,
            **NO_CLIENT_INFO,
        )
    except ValueError as e:
        raise StoreUnavailable(f"bad Redis URL {redacted(url)!r}: {e}") from None


# redis-py sends CLIENT SETINFO (its name) and CLIENT MAINT_NOTIFICATIONS (Redis Enterprise's
# failover hints) on every connection: administrative commands that the component users
# (shoal.store.acl) may not run, and that Redis 6.2 does not know anyway.
NO_CLIENT_INFO: dict[str, Any] = {
    "driver_info": None,
    "maint_notifications_config": MaintNotificationsConfig(enabled=False),
}


def redacted(url: str) -> str:
    """``url`` with any password replaced by ``***``, for messages."""
    url = _SECRET_PARAM.sub(r"\1***", url)
    if "@" not in url or "//" not in url:
        return url
    scheme, rest = url.split("//", 1)
    creds, host = rest.rsplit("@", 1)
    user = creds.split(":", 1)[0]
    return f"{scheme}//{user}:***@{host}"


def carries_secret(url: str) -> bool:
    """Whether ``url`` holds a password (in its credentials or as ``sentinel_password``)."""
    if _SECRET_PARAM.search(url):
        return True
    rest = url.split("//", 1)[-1]
    return "@" in rest and ":" in rest.rsplit("@", 1)[0]


def failover_reply(e: redis.exceptions.ResponseError) -> bool:
    """True for the replies of a server that stopped being the master: retry elsewhere."""
    text = str(e)
    return (
        isinstance(e, redis.exceptions.ReadOnlyError | redis.exceptions.MasterDownError)
        or "-READONLY" in text  # a write refused inside a Lua script
        or text.startswith("UNBLOCK")  # a blocked read ended by a switch to replica
    )


@asynccontextmanager
async def translated(what: str) -> AsyncIterator[None]:
    """Turn redis-py errors raised inside the block into Shoal's ``StoreError`` tree."""
    try:
        yield
    except redis.exceptions.AuthenticationError as e:
        raise StoreUnavailable(f"{what}: Redis refused the credentials ({e})") from None
    except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError, OSError) as e:
        raise StoreUnavailable(f"{what}: Redis unreachable ({e})") from None
    except redis.exceptions.ResponseError as e:
        if failover_reply(e):
            raise StoreUnavailable(f"{what}: Redis is a replica, not the master ({e})") from None
        raise StoreError(f"{what}: {e}") from None
    except redis.exceptions.RedisError as e:
        raise StoreError(f"{what}: {e}") from None


async def uptime(redis: Redis) -> float:
    """How long the server has been up, in seconds (short right after a restart)."""
    async with translated("reading the store's uptime"):
        return float((await redis.info("server"))["uptime_in_seconds"])


def honour_cancellation() -> None:
    """Raise CancelledError if the current task is being cancelled.

    redis-py sends through ``asyncio.wait_for``, which on Python 3.11 can swallow a
    cancellation that lands just as a command completes (CPython gh-86296). A loop that calls
    Redis must check this after each round, or its owner waits for it forever.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


T = TypeVar("T")

# The interpreter's switch interval while a thread works beside the event loop (5 ms by
# default: a request would wait that long each time the thread has the interpreter).
BUSY_SWITCH = 0.0005


class _Switching:
    """The threads working off the loop (this process's), and the switch interval to restore
    when none is."""

    threads = 0
    restore = 0.0


async def off_loop(work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` in a thread, the interpreter handing the event loop its turn every
    :data:`BUSY_SWITCH` seconds meanwhile: long pure work (decoding a store, building a
    snapshot) without holding up the requests this process serves."""
    if _Switching.threads == 0:
        _Switching.restore = sys.getswitchinterval()
        sys.setswitchinterval(BUSY_SWITCH)
    _Switching.threads += 1
    try:
        return await asyncio.to_thread(work, *args)
    finally:
        _Switching.threads -= 1
        if _Switching.threads == 0:
            sys.setswitchinterval(_Switching.restore)


async def wait_at_most(event: asyncio.Event, seconds: float) -> bool:
    """Wait until ``event`` is set or ``seconds`` have passed, whichever is first; whether
    ``event`` is set."""
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
