"""The change feed: a consistent view of config and registry, then every change after it.

A watcher notes the stream's last id, loads everything, hands the view over, then follows the
stream with ``XREAD BLOCK`` (on a connection without socket timeout: each call carries its own
deadline, so that cancelling a watcher always ends it), reloading each changed key and handing
over a new view per batch. After a lost connection, or when the id it would resume from has
been trimmed away, it reloads everything: pub/sub alone would lose what happened while a reader
was away. While Redis is away the owner keeps serving from the last view.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from immutables import Map

from shoal.errors import StoreError, StoreUnavailable
from shoal.resources.endpoint import Endpoint
from shoal.store.connection import (
    BLOCKING_SOCKET_TIMEOUT,
    Redis,
    connect,
    off_loop,
    translated,
)
from shoal.store.keys import Keys
from shoal.store.registry import INSTANCE, NODE

log = logging.getLogger(__name__)

BLOCK_MS = 5_000
BATCH = 1_000


@asynccontextmanager
async def _bounded(what: str) -> AsyncIterator[None]:
    """:func:`translated`, plus the deadline a blocking client leaves to its caller."""
    async with translated(what):
        try:
            async with asyncio.timeout(BLOCKING_SOCKET_TIMEOUT):
                yield
        except TimeoutError:
            raise StoreUnavailable(
                f"{what}: no answer from Redis in {BLOCKING_SOCKET_TIMEOUT:g}s"
            ) from None


@dataclass(frozen=True, slots=True)
class View:
    """What the store held at one moment: config documents, instances, nodes.

    Its tables are persistent maps (:mod:`immutables`): the next view shares all but what
    changed with this one, so a change costs the watcher and its readers its own size, not the
    store's."""

    revision: int = 0
    config: Mapping[str, Mapping[str, dict[str, Any]]] = field(
        default_factory=lambda: MappingProxyType({})
    )
    instances: Mapping[str, Endpoint] = field(default_factory=Map)
    nodes: Mapping[str, dict[str, Any]] = field(default_factory=Map)
    # What changed since the view handed over before this one: the keys of each kind (config
    # kinds, Instance, Node); None when it was loaded whole (anything may differ).
    changes: Mapping[str, frozenset[str]] | None = None

    def documents(self, kind: str) -> Mapping[str, dict[str, Any]]:
        """The documents of one kind, by key."""
        return self.config.get(kind, _NONE)


_NONE: Map[str, Any] = Map()


class _State:
    """The tables a watcher keeps between views (each replaced, never changed in place)."""

    def __init__(self, kinds: Iterable[str]) -> None:
        self.revision = 0
        self.config: dict[str, Map[str, dict[str, Any]]] = {k: Map() for k in kinds}
        self.instances: Map[str, Endpoint] = Map()
        self.nodes: Map[str, dict[str, Any]] = Map()
        self.changes: dict[str, set[str]] | None = None  # since the last view (None: loaded)

    def put(self, kind: str, name: str, value: Any) -> None:
        """``name`` of ``kind`` is now ``value`` (None: gone)."""
        if kind == INSTANCE:
            self.instances = _put(self.instances, name, value)
        elif kind == NODE:
            self.nodes = _put(self.nodes, name, value)
        else:
            self.config[kind] = _put(self.config[kind], name, value)
        if self.changes is not None:
            self.changes.setdefault(kind, set()).add(name)

    def view(self) -> View:
        """The tables as they are, as a view, with the changes since the last one."""
        changes = self.changes
        self.changes = {}
        return View(
            revision=self.revision,
            config=MappingProxyType(dict(self.config)),
            instances=self.instances,
            nodes=self.nodes,
            changes=None if changes is None else {k: frozenset(v) for k, v in changes.items()},
        )


def _put(table: Map[str, Any], name: str, value: Any) -> Map[str, Any]:
    if value is not None:
        return table.set(name, value)
    return table.delete(name) if name in table else table


class Watcher:
    """Follows the store for ``kinds`` of config plus the registry; calls back with views."""

    def __init__(self, url: str, keys: Keys, kinds: Iterable[str]) -> None:
        self._url = url
        self._keys = keys
        self._kinds = tuple(kinds)
        self.connected = asyncio.Event()

    async def run(self, on_view: Callable[[View], None]) -> None:
        """Until cancelled: load, hand over, follow; reconnect with backoff when Redis goes away."""
        backoff = 0.05
        while True:
            redis = connect(self._url, blocking=True)
            try:
                await self._follow(redis, on_view)
            except StoreError as e:
                if self.connected.is_set():
                    log.warning("store unreachable, serving the last view: %s", e)
                self.connected.clear()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 1.0)
            else:
                backoff = 0.05
            finally:
                await redis.aclose()

    async def _follow(self, redis: Redis, on_view: Callable[[View], None]) -> None:
        state = _State(self._kinds)
        last_id = await self._load(redis, state)
        on_view(state.view())
        self.connected.set()
        while True:
            async with _bounded("following the change stream"):
                reply = await redis.xread(
                    {self._keys.changes: last_id}, count=BATCH, block=BLOCK_MS
                )
            if not reply:
                if last_id != "0-0" and not await self._exists(redis, last_id):
                    return  # trimmed while we waited: reload from scratch
                continue
            entries: list[tuple[str, dict[str, str]]] = reply[0][1]  # type: ignore[index,assignment]
            if len(entries) == BATCH and not await self._exists(redis, last_id):
                return
            await self._apply(redis, state, [fields for _, fields in entries])
            last_id = entries[-1][0]
            on_view(state.view())

    async def _exists(self, redis: Redis, entry_id: str) -> bool:
        async with _bounded("checking the change stream"):
            return bool(await redis.xrange(self._keys.changes, entry_id, entry_id))

    async def _load(self, redis: Redis, state: _State) -> str:
        """Load everything; return the stream id to follow from."""
        k = self._keys
        async with _bounded("loading the store"):
            last = await redis.xrevrange(k.changes, count=1)
            async with redis.pipeline(transaction=True) as pipe:
                pipe.get(k.revision)
                pipe.hgetall(k.instances)
                pipe.hgetall(k.nodes)
                for kind in self._kinds:
                    pipe.hgetall(k.config(kind))
                rev, instances, nodes, *configs = await pipe.execute()
        state.revision = int(rev or 0)
        # Decoded in a thread: ~300 ms at 20,000 instances, which the event loop of the
        # process following the store (a proxy serving requests) goes on running meanwhile.
        await off_loop(self._decode, state, instances, nodes, configs)
        return str(last[0][0]) if last else "0-0"

    def _decode(
        self,
        state: _State,
        instances: dict[str, str],
        nodes: dict[str, str],
        configs: list[dict[str, str]],
    ) -> None:
        state.instances = Map({key: Endpoint.from_json(v) for key, v in instances.items()})
        state.nodes = Map({key: json.loads(v) for key, v in nodes.items()})
        for kind, raw in zip(self._kinds, configs, strict=True):
            state.config[kind] = Map({key: json.loads(v) for key, v in raw.items()})

    async def _apply(self, redis: Redis, state: _State, batch: list[dict[str, str]]) -> None:
        """Read back what each change of ``batch`` names (one round trip) and put it in."""
        reads: list[tuple[str, str]] = []  # (kind, name)
        hashes = {INSTANCE: self._keys.instances, NODE: self._keys.nodes}
        for fields in batch:
            kind, name = fields["kind"], fields["name"]
            if kind in state.config or "rev" in fields:
                state.revision = max(state.revision, int(fields.get("rev", 0)))
            if kind in state.config or kind in hashes:
                reads.append((kind, name))
        if not reads:
            return
        async with _bounded(f"reading {len(reads)} changed records"):
            async with redis.pipeline(transaction=False) as pipe:
                for kind, name in reads:
                    pipe.hget(hashes.get(kind) or self._keys.config(kind), name)
                raws = await pipe.execute()
        for (kind, name), raw in zip(reads, raws, strict=True):
            if raw is None:
                value = None
            elif kind == INSTANCE:
                value = Endpoint.from_json(raw)
            else:
                value = json.loads(raw)
            state.put(kind, name, value)
