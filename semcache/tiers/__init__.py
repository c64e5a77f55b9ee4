"""The storage tiers: L1 memory, L2 Redis, L3 SQL (see :mod:`semcache.tiers.base`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..config import CacheConfig
    from .base import Backend

__all__ = ["build_tiers"]


def build_tiers(config: CacheConfig) -> list[Backend]:
    """The tiers a configuration names, top first (each imports its driver only when used)."""
    backends: list[Backend] = []
    if config.memory is not None:
        from .memory import MemoryBackend

        backends.append(MemoryBackend.from_config(config.memory))
    if config.redis is not None:
        from .redis import RedisBackend

        backends.append(RedisBackend.from_config(config.redis))
    if config.sql is not None:
        from .sql import SQLBackend

        backends.append(SQLBackend.from_config(config.sql))
    return backends
