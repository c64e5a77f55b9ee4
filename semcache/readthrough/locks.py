"""The cross-process lock of a read-through: where the Redis tier is, and releasing safely.

:func:`redis_tier` is the one place a read-through finds the cache's L2 Redis tier;
the decorator (``lock=True``) and the proxy both get their lock through
:func:`redis_lock` / :func:`async_redis_lock`. Lock keys live under the tier's own
prefix (``{prefix}lock:{exact key}``), so caches that share a Redis but not a prefix
never block each other.
"""

from __future__ import annotations

import logging

from ..errors import SemcacheError
from ..singleflight import AsyncRedisLock, RedisLock
from ..tiers.redis import RedisBackend
from .protocols import HasTiers

__all__ = ["arelease", "async_redis_lock", "redis_lock", "redis_tier", "release"]

log = logging.getLogger("semcache")


def redis_tier(cache: HasTiers) -> RedisBackend | None:
    """The cache's L2 Redis tier, or ``None`` (no Redis configured, or not open yet)."""
    return next((t for t in cache.tiers if isinstance(t, RedisBackend)), None)


def redis_lock(cache: HasTiers, *, timeout_seconds: float) -> RedisLock | None:
    """A lock on the cache's Redis tier (sync client), or ``None`` without one."""
    tier = redis_tier(cache)
    if tier is None:
        return None
    return RedisLock(tier.client, prefix=f"{tier.prefix}lock:", timeout_seconds=timeout_seconds)


def async_redis_lock(cache: HasTiers, *, timeout_seconds: float) -> AsyncRedisLock | None:
    """The awaitable twin of :func:`redis_lock` (the tier's client runs in a worker thread)."""
    tier = redis_tier(cache)
    if tier is None:
        return None
    return AsyncRedisLock(tier.client, prefix=f"{tier.prefix}lock:", timeout_seconds=timeout_seconds)


def release(lock: RedisLock | None, key: str, token: str | None) -> None:
    """Release a lock we hold; a Redis failure is logged (the lock expires anyway)."""
    if lock is None or token is None:
        return
    try:
        lock.release(key, token)
    except SemcacheError as exc:
        log.warning("could not release the Redis lock for %s (%s)", key, exc)


async def arelease(lock: AsyncRedisLock | None, key: str, token: str | None) -> None:
    """Awaitable twin of :func:`release`."""
    if lock is None or token is None:
        return
    try:
        await lock.release(key, token)
    except SemcacheError as exc:
        log.warning("could not release the Redis lock for %s (%s)", key, exc)
