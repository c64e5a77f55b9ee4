"""Read-through: what the decorator and the proxy share between a miss and the stored answer.

* :mod:`.flight` — lead or follow: single flight in a process for plain answers and
  streams, the cross-process lock, and the re-check of the cache once the lock is
  ours ("what another process stored meanwhile");
* :mod:`.locks` — the one place the cache's Redis tier is found, and safe release;
* :mod:`.cacheable` — whether an answer may be stored;
* :mod:`.protocols` — what a read-through needs from a cache, as Protocols, so
  neither the decorator nor the proxy imports the core.

The codec (what is stored and shared) stays with each caller: the decorator stores
return values of any type, the proxy chat completions.
"""

from __future__ import annotations

from .cacheable import cacheable, finished
from .flight import OWN_CALL, AsyncLead, AsyncReadThrough, Lead, OwnCall, ReadThrough, flights_of
from .locks import arelease, async_redis_lock, redis_lock, redis_tier, release
from .protocols import AsyncCache, HasTiers, SyncCache

__all__ = [
    "OWN_CALL",
    "AsyncCache",
    "AsyncLead",
    "AsyncReadThrough",
    "HasTiers",
    "Lead",
    "OwnCall",
    "ReadThrough",
    "SyncCache",
    "arelease",
    "async_redis_lock",
    "cacheable",
    "finished",
    "flights_of",
    "redis_lock",
    "redis_tier",
    "release",
]
