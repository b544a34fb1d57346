"""The pilot's read-through cache in Redis, in front of a source of truth that keeps changing.

Keys per service, under its prefix: ``<prefix>:source`` is the source of truth's version (a
counter the pilot advances every ``source_update_s``, standing in for upstream data that changes);
``<prefix>:cache:value`` is the cached copy ``{"version": v, "cached_at": t}``; and
``<prefix>:cache:refresh-lock`` is the lock a refresher holds while it rebuilds the entry. Healthy
operation invalidates the cached copy in the same transaction that advances the source (unless a
refresh holds the lock) and a miss reloads it with a TTL, so a read is never stale.

The stale-cache fault is the classic real one: a refresh lock taken and never released (a
refresher died holding it, no expiry). While it is held, invalidation is skipped and entries
lose their TTL, so the cache serves an old version for good. The source of truth is untouched;
everything under ``<prefix>:cache:`` is derived data, which is why deleting it (the healing
track's cache invalidation) is safe: the next read rebuilds the entry from the source, and with
the stuck lock gone invalidation works again.

Reads compare the served version with the source's, which a real service could not do; the
staging fleet does it so that a stale read is a number on ``/metrics``, the ground truth that
detection is measured against.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from typing import Any

import redis

# Atomic read-through: a reader that missed cannot cache a version the writer has just
# invalidated, so healthy operation never serves a stale value. KEYS: value, source, lock.
# ARGV: now, ttl in ms. While the refresh lock is held the entry is written without a TTL.
_READ_THROUGH = """
local value = redis.call('GET', KEYS[1])
local source = redis.call('GET', KEYS[2])
if not source then
  source = tostring(redis.call('INCR', KEYS[2]))
end
if value then
  return {value, source, 1}
end
value = '{"version": ' .. source .. ', "cached_at": ' .. ARGV[1] .. '}'
if redis.call('EXISTS', KEYS[3]) == 0 and tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], value)
end
return {value, source, 0}
"""

# Advance the source and invalidate the cached copy, unless a refresh holds the lock.
# KEYS: source, value, lock. Returns the new source version.
_ADVANCE = """
local version = redis.call('INCR', KEYS[1])
if redis.call('EXISTS', KEYS[3]) == 0 then
  redis.call('DEL', KEYS[2])
end
return version
"""


@dataclass(frozen=True)
class CacheRead:
    """One read: what was served, what the truth was, and whether they differ."""

    version: int
    source_version: int
    hit: bool
    age_s: float

    @property
    def stale(self) -> bool:
        return self.version < self.source_version

    def as_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "source_version": self.source_version,
            "hit": self.hit,
            "stale": self.stale,
            "age_s": round(self.age_s, 3),
        }


class SourceCache:
    """The cache of one pilot service.

    Args:
        client: a Redis client (redis-py is thread-safe; request threads share it).
        prefix: the service's key prefix (`pilot.config.cache_prefix`).
        ttl_s: the entry TTL while refresh works; `set_ttl` changes it on config reload.
    """

    def __init__(self, client: redis.Redis, prefix: str, *, ttl_s: float) -> None:
        self.client = client
        self.source_key = f"{prefix}:source"
        self.cache_prefix = f"{prefix}:cache:"
        self.value_key = f"{self.cache_prefix}value"
        self.lock_key = f"{self.cache_prefix}refresh-lock"
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._read_through = client.register_script(_READ_THROUGH)
        self._advance = client.register_script(_ADVANCE)

    @property
    def frozen(self) -> bool:
        """True while a refresh lock is held: no invalidation, no TTL (the stale-cache fault)."""
        return bool(self.client.exists(self.lock_key))

    def set_ttl(self, ttl_s: float) -> None:
        self._ttl_ms = max(1, round(ttl_s * 1000))

    def advance_source(self) -> int:
        """Change the source of truth, invalidating the cached copy unless the lock is held."""
        return int(self._advance(keys=[self.source_key, self.value_key, self.lock_key]))

    def read(self) -> CacheRead:
        """Serve the cached value, loading it from the source on a miss.

        Raises:
            redis.RedisError: Redis is unreachable or failed the script.
        """
        now = time.time()
        raw, source, hit = self._read_through(
            keys=[self.value_key, self.source_key, self.lock_key], args=[repr(now), self._ttl_ms]
        )
        entry = json.loads(raw)
        return CacheRead(
            version=int(entry["version"]),
            source_version=int(source),
            hit=bool(hit),
            age_s=max(0.0, now - float(entry["cached_at"])),
        )

    def freeze(self) -> dict[str, Any]:
        """Take the refresh lock and never release it: the cache goes stale from now on."""
        holder = f"pid {os.getpid()} at {time.time():.3f}"
        self.client.set(self.lock_key, holder)  # no expiry: that is the bug
        pinned = self.read()  # loads the entry (without a TTL) if it was just invalidated
        self.client.persist(self.value_key)
        return {
            "value_key": self.value_key,
            "source_key": self.source_key,
            "lock_key": self.lock_key,
            "pinned_version": pinned.version,
        }

    def thaw(self) -> dict[str, Any]:
        """Undo `freeze`: release the lock and refresh the entry from the source right away."""
        was_frozen = bool(self.client.delete(self.lock_key))
        self.client.delete(self.value_key)
        return {"was_frozen": was_frozen, "refreshed": self.read().as_dict()}
