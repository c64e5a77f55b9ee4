"""L2: Redis through redis-py, with Redis' own expiry.

Layout under the configured prefix: ``{prefix}e:{key}`` holds one entry blob
(:func:`semcache.serde.entry_to_blob`) with a PX expiry. Invalidation by key
deletes keys directly; any other selector scans ``{prefix}e:*`` in batches
(SCAN + MGET) and matches in Python — O(entries), which is acceptable for a rare
administrative operation and keeps writes to a single SET.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

from ..config import RedisConfig
from ..errors import BackendError, BackendUnavailable, MissingDependencyError, SerializationError
from ..serde import entry_from_blob, entry_to_blob
from ..types import Entry, Selector
from .base import tier_expiry

__all__ = ["RedisBackend"]

_SCAN_BATCH = 500


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters, so a prefix matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("redis", "redis") from exc
    return redis


class RedisBackend:
    """L2 tier on Redis. Construction does no I/O; the first command connects."""

    name = "l2"

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "semcache:",
        max_ttl_seconds: float | None = None,
        socket_timeout_seconds: float = 0.5,
        client: Any = None,
    ) -> None:
        redis = _redis()
        self.max_ttl_seconds = max_ttl_seconds
        self.prefix = prefix
        self._errors = redis.RedisError
        self._unavailable = (redis.ConnectionError, redis.TimeoutError)
        self.client = client or redis.Redis.from_url(
            url,
            socket_timeout=socket_timeout_seconds,
            socket_connect_timeout=socket_timeout_seconds,
            health_check_interval=30,
        )
        self._corrupt = 0

    @classmethod
    def from_config(cls, config: RedisConfig) -> RedisBackend:
        """Build the tier from its :class:`~semcache.config.RedisConfig`."""
        return cls(
            config.url,
            prefix=config.prefix,
            max_ttl_seconds=config.max_ttl_seconds,
            socket_timeout_seconds=config.socket_timeout_seconds,
        )

    def _k(self, key: str) -> str:
        return f"{self.prefix}e:{key}"

    def _translate(self, exc: Exception) -> BackendError:
        if isinstance(exc, self._unavailable):
            return BackendUnavailable(f"Redis is unavailable: {exc}")
        return BackendError(f"Redis error: {exc}")

    def _decode(self, key: str, blob: bytes) -> Entry | None:
        try:
            return entry_from_blob(blob)
        except SerializationError:
            # a corrupt value is a miss, and is removed so it is not read again
            self._corrupt += 1
            try:
                self.client.delete(self._k(key))
            except self._errors:
                pass
            return None

    def get(self, key: str, now: float) -> Entry | None:
        """GET the entry blob; a corrupt blob is deleted and reported as a miss."""
        try:
            blob = self.client.get(self._k(key))
        except self._errors as exc:
            raise self._translate(exc) from exc
        if blob is None:
            return None
        entry = self._decode(key, blob)
        if entry is None or entry.key != key or entry.expired(now):
            return None
        return entry

    def set(self, entry: Entry, now: float) -> None:
        """SET the blob with a PX expiry from the entry's remaining life."""
        until = tier_expiry(entry, now, self.max_ttl_seconds)
        px = None
        if until is not None:
            px = math.ceil((until - now) * 1000)
            if px <= 0:
                return
        try:
            if until != entry.expires_at:
                entry = entry.with_expiry(until)  # the blob carries the capped life too
            self.client.set(self._k(entry.key), entry_to_blob(entry), px=px)
        except self._errors as exc:
            raise self._translate(exc) from exc

    def set_many(self, entries: Sequence[Entry], now: float) -> None:
        """SET many entries in one pipeline (one round trip per batch)."""
        pipe = self.client.pipeline(transaction=False)
        queued = 0
        for entry in entries:
            until = tier_expiry(entry, now, self.max_ttl_seconds)
            px = None if until is None else math.ceil((until - now) * 1000)
            if px is not None and px <= 0:
                continue
            if until != entry.expires_at:
                entry = entry.with_expiry(until)
            pipe.set(self._k(entry.key), entry_to_blob(entry), px=px)
            queued += 1
        if not queued:
            return
        try:
            pipe.execute()
        except self._errors as exc:
            raise self._translate(exc) from exc

    def delete(self, keys: Sequence[str]) -> int:
        """DEL the entries."""
        if not keys:
            return 0
        try:
            return int(self.client.delete(*[self._k(k) for k in keys]))
        except self._errors as exc:
            raise self._translate(exc) from exc

    def _scan(self) -> Iterator[tuple[str, bytes]]:
        cursor = 0
        start = len(self.prefix) + 2
        while True:
            cursor, names = self.client.scan(cursor, match=f"{_glob_escape(self.prefix)}e:*", count=_SCAN_BATCH)
            if names:
                blobs = self.client.mget(names)
                for name, blob in zip(names, blobs):
                    if blob is not None:
                        n = name.decode() if isinstance(name, bytes) else name
                        yield n[start:], blob
            if cursor == 0:
                return

    def invalidate(self, selector: Selector, now: float) -> list[str]:
        """Delete matching entries: by key directly, otherwise by a scan."""
        if selector.is_empty():
            return []
        try:
            if selector.keys and selector == Selector(keys=selector.keys):
                pipe = self.client.pipeline()
                for k in selector.keys:
                    pipe.delete(self._k(k))
                removed = pipe.execute()
                return [k for k, n in zip(selector.keys, removed) if n]
            gone: list[str] = []
            # named keys plus other criteria: read just those keys, not the keyspace
            found = (
                zip(selector.keys, self.client.mget([self._k(k) for k in selector.keys]))
                if selector.keys
                else self._scan()
            )
            for key, blob in found:
                if blob is None:
                    continue
                entry = self._decode(key, blob)
                if entry is not None and selector.matches(entry, now):
                    gone.append(key)
            for i in range(0, len(gone), _SCAN_BATCH):
                self.client.delete(*[self._k(k) for k in gone[i : i + _SCAN_BATCH]])
            return gone
        except self._errors as exc:
            raise self._translate(exc) from exc

    def iter_entries(self) -> Iterator[Entry]:
        """Every decodable entry under the prefix (for the CLI)."""
        try:
            for key, blob in self._scan():
                entry = self._decode(key, blob)
                if entry is not None:
                    yield entry
        except self._errors as exc:
            raise self._translate(exc) from exc

    def publish(self, channel: str, message: str) -> int:
        """PUBLISH a message (invalidations and index updates for other replicas)."""
        try:
            return int(self.client.publish(channel, message))
        except self._errors as exc:
            raise self._translate(exc) from exc

    def ping(self) -> bool:
        """Whether Redis answers."""
        try:
            return bool(self.client.ping())
        except self._errors as exc:
            raise self._translate(exc) from exc

    def stats(self) -> dict[str, Any]:
        """Counters kept by this process (the entry count would need a scan)."""
        return {"corrupt_removed": self._corrupt}

    def close(self) -> None:
        """Close the connection pool."""
        try:
            self.client.close()
        except self._errors:
            pass
