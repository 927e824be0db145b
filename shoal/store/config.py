"""The config store: resources as JSON by kind and key, one global revision, a change stream.

Every write — any number of puts and deletes — is one Lua script, so the documents, the revision
bump and the stream entries land together or not at all. Stream entries are
``{rev, kind, name, op}`` with ``op`` in ``put``/``delete``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from shoal.errors import StoreError
from shoal.store.connection import Redis, translated
from shoal.store.keys import Keys

STREAM_MAXLEN = 10_000

# KEYS[1] = revision counter, KEYS[2] = change stream, KEYS[3] = leader lease; ARGV = prefix,
# maxlen, fence (the leader lease's holder the writer must still be, or ''), then triples (kind,
# key, json-or-empty). Empty json means delete. Returns the new revision, or the current one
# when nothing changed (a put of an identical document is not a change), or -1 when fenced out.
_WRITE = """
if ARGV[3] ~= '' and redis.call('GET', KEYS[3]) ~= ARGV[3] then return -1 end
local rev = tonumber(redis.call('GET', KEYS[1]) or '0')
local changed = {}
for i = 4, #ARGV, 3 do
  local hash = ARGV[1] .. 'cfg:' .. ARGV[i]
  local old = redis.call('HGET', hash, ARGV[i + 1])
  if ARGV[i + 2] == '' then
    if old then
      redis.call('HDEL', hash, ARGV[i + 1])
      table.insert(changed, {ARGV[i], ARGV[i + 1], 'delete'})
    end
  elseif old ~= ARGV[i + 2] then
    redis.call('HSET', hash, ARGV[i + 1], ARGV[i + 2])
    table.insert(changed, {ARGV[i], ARGV[i + 1], 'put'})
  end
end
if #changed == 0 then return rev end
rev = redis.call('INCR', KEYS[1])
for _, c in ipairs(changed) do
  redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[2], '*',
             'rev', rev, 'kind', c[1], 'name', c[2], 'op', c[3])
end
return rev
"""


class FencedOut(StoreError):
    """A fenced write found the leader lease held by someone else."""


@dataclass(frozen=True, slots=True)
class Change:
    """One entry to write: a document for ``(kind, key)``, or None to delete it."""

    kind: str
    key: str
    document: dict[str, Any] | None


Op = Literal["put", "delete"]


def encode(document: dict[str, Any]) -> str:
    """Canonical JSON, so that an unchanged document compares equal byte for byte."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"))


class ConfigStore:
    """Reads and atomically writes config documents under one key prefix."""

    def __init__(self, redis: Redis, keys: Keys) -> None:
        self._redis = redis
        self._keys = keys
        self._write = redis.register_script(_WRITE)

    async def write(self, changes: Sequence[Change], *, fence: str | None = None) -> int:
        """Apply all ``changes`` atomically; return the config revision after them.

        With ``fence``, the write happens only if the leader lease is still held by ``fence``
        (checked in the same script): a controller that lost the lead cannot write, even with
        a write already in flight. Raises FencedOut otherwise.
        """
        argv: list[str] = [self._keys.prefix, str(STREAM_MAXLEN), fence or ""]
        for c in changes:
            argv += [c.kind, c.key, "" if c.document is None else encode(c.document)]
        async with translated("writing config"):
            rev = await self._write(
                keys=[self._keys.revision, self._keys.changes, self._keys.leader], args=argv
            )
        if int(rev) < 0:
            raise FencedOut(f"not written: the leader lease is no longer held by {fence}")
        return int(rev)

    async def revision(self) -> int:
        """The current config revision (0 before the first write)."""
        async with translated("reading the config revision"):
            return int(await self._redis.get(self._keys.revision) or 0)

    async def get(self, kind: str, key: str) -> dict[str, Any] | None:
        """One document, or None."""
        async with translated(f"reading {kind} {key}"):
            raw = await self._redis.hget(self._keys.config(kind), key)
        return None if raw is None else dict(json.loads(raw))

    async def list(self, kind: str) -> dict[str, dict[str, Any]]:
        """Every document of ``kind`` by key."""
        async with translated(f"listing {kind}"):
            raw = await self._redis.hgetall(self._keys.config(kind))
        return {str(k): json.loads(v) for k, v in sorted(raw.items())}

    async def list_many(self, kinds: Iterable[str]) -> dict[str, dict[str, dict[str, Any]]]:
        """Every document of each kind, read in one round trip (a consistent view)."""
        kinds = list(kinds)
        async with translated("reading config"):
            async with self._redis.pipeline(transaction=True) as pipe:
                for kind in kinds:
                    pipe.hgetall(self._keys.config(kind))
                pipe.get(self._keys.revision)
                results = await pipe.execute()
        out = {
            kind: {k: json.loads(v) for k, v in sorted(raw.items())}
            for kind, raw in zip(kinds, results, strict=False)
        }
        return out
