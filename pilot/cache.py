"""The pilot's read-through cache in Redis, in front of a source of truth that keeps changing.

Two keys per service: ``<prefix>:source`` is the source of truth's version (a counter the pilot
advances every ``source_update_s``, standing in for upstream data that changes), and
``<prefix>:value`` is the cached copy ``{"version": v, "cached_at": t}``. Healthy operation
invalidates the cached copy in the same transaction that advances the source, and a miss reloads
it with a TTL, so a read is never stale. The stale-cache fault switches both off: invalidation
stops and the entry loses its TTL, so the cache goes on serving an old version until the fault
is cleared (which refreshes it) or someone deletes the key.

Reads compare the served version with the source's, which a real service could not do; the
staging fleet does it so that a stale read is a number on ``/metrics``, the ground truth that
detection is measured against.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass
from typing import Any

import redis

# Atomic read-through: a reader that missed cannot cache a version the writer has just
# invalidated, so healthy operation never serves a stale value. ARGV: now, ttl in ms (0 = none).
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
if tonumber(ARGV[2]) > 0 then
  redis.call('SET', KEYS[1], value, 'PX', ARGV[2])
else
  redis.call('SET', KEYS[1], value)
end
return {value, source, 0}
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
        self.value_key = f"{prefix}:value"
        self.source_key = f"{prefix}:source"
        self._ttl_ms = max(1, round(ttl_s * 1000))
        self._lock = threading.Lock()
        self._frozen = False
        self._read_through = client.register_script(_READ_THROUGH)

    @property
    def frozen(self) -> bool:
        """True while the stale-cache fault holds: no invalidation, no TTL."""
        return self._frozen

    def set_ttl(self, ttl_s: float) -> None:
        self._ttl_ms = max(1, round(ttl_s * 1000))

    def advance_source(self) -> int:
        """Change the source of truth, invalidating the cached copy unless the fault holds."""
        with self.client.pipeline(transaction=True) as pipe:
            pipe.incr(self.source_key)
            if not self._frozen:
                pipe.delete(self.value_key)
            results = pipe.execute()
        return int(results[0])

    def read(self) -> CacheRead:
        """Serve the cached value, loading it from the source on a miss.

        Raises:
            redis.RedisError: Redis is unreachable or failed the script.
        """
        now = time.time()
        ttl_ms = 0 if self._frozen else self._ttl_ms
        raw, source, hit = self._read_through(
            keys=[self.value_key, self.source_key], args=[repr(now), ttl_ms]
        )
        entry = json.loads(raw)
        return CacheRead(
            version=int(entry["version"]),
            source_version=int(source),
            hit=bool(hit),
            age_s=max(0.0, now - float(entry["cached_at"])),
        )

    def freeze(self) -> dict[str, Any]:
        """Start serving stale data: stop invalidating and pin the current entry (no TTL)."""
        with self._lock:
            self._frozen = True
            pinned = self.read()  # loads the entry (without a TTL) if it was just invalidated
            self.client.persist(self.value_key)
        return {
            "value_key": self.value_key,
            "source_key": self.source_key,
            "pinned_version": pinned.version,
        }

    def thaw(self) -> dict[str, Any]:
        """Undo `freeze`: invalidate again and refresh the entry from the source right away."""
        with self._lock:
            was_frozen = self._frozen
            self._frozen = False
            self.client.delete(self.value_key)
        return {"was_frozen": was_frozen, "refreshed": self.read().as_dict()}
