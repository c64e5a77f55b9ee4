"""L2: Redis through redis-py, with Redis' own expiry.

Layout under the configured prefix:

- ``{prefix}e:{key}``: the entry, as its 20-digit version, ``E`` and the entry blob
  (:func:`semcache.serde.entry_to_blob`), with a PX expiry; or a *tombstone*: the
  version of the delete and ``T``, kept for ``tombstone_ttl_seconds``.
- ``{prefix}floor``: the version of the last flush; nothing older is stored again.
- ``{prefix}handoff``: a hash of writes and deletes that L3 missed while it was down
  (field: key; value: version, ``E`` and the blob with its embedding, or ``T``), the
  durable hand-off every replica drains into L3 once it is back.
- ``{prefix}labels``, ``{prefix}blocks``, ``{prefix}handoff:labels``: feedback labels
  (:mod:`semcache.tiers.redis_labels`).

Every write is a Lua script that compares versions (as fixed-width text), so a
write never replaces a newer version or a newer delete, whatever order writes,
promotions and replays arrive in. Invalidation by key writes tombstones directly;
any other selector scans ``{prefix}e:*`` in batches (SCAN + MGET) and matches in
Python — O(entries), acceptable for a rare administrative operation.

On a Redis Cluster (``RedisConfig(cluster=True)``, a ``redis.cluster.RedisCluster``)
every command must keep its keys in one hash slot, so the names carry hash tags:

- ``{prefix}{T}e:{key}`` and ``{prefix}{T}floor``: entries are spread over
  :data:`CLUSTER_BUCKETS` buckets (bucket ``crc32(key) % CLUSTER_BUCKETS``); bucket
  ``i``'s tag ``T`` is chosen so that its slot lies in the ``i``-th of as many equal
  slot ranges, so the buckets cover every master of an evenly split cluster. Each
  bucket has its own copy of the flush floor, so the write script's two keys (the
  entry and the floor) share a slot; a flush raises the floor of every bucket before
  it scans.
- ``{prefix}{meta}handoff``, ``{prefix}{meta}handoff:sel``, ``{prefix}{meta}log``,
  ``{prefix}{meta}labels``, ``{prefix}{meta}blocks``, ``{prefix}{meta}handoff:labels``:
  one slot for the hand-off, the change-log stream and the labels, so that the labels'
  MULTI (list, set and stream together) stays on one node.
- scripts run as EVAL (a node promoted or restarted has no script cache to miss);
  SCAN runs on every primary; reads of several keys are split per slot.

A prefix that itself holds a ``{...}`` hash tag puts every key in that one slot:
correct, but not sharded.
"""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from ..config import RedisConfig
from ..errors import BackendError, BackendUnavailable, MissingDependencyError, SerializationError
from ..blob import entry_from_blob, entry_to_blob
from ..types import Entry, Selector
from ..versions import WIDTH, version_text
from .base import tier_expiry
from .redis_labels import RedisLabelsPart

__all__ = ["CLUSTER_BUCKETS", "RedisBackend", "cluster_bucket_tags", "cluster_nodes"]

_SCAN_BATCH = 500
#: How many buckets (hash tags) the entries of one prefix are spread over on a cluster.
CLUSTER_BUCKETS = 64
_SLOTS = 16384

#: KEYS: entry, floor. ARGV: version text, E+blob, px ('' for none). 1 if stored.
_SET_IF = """
local cur = redis.call('GETRANGE', KEYS[1], 0, 19)
if #cur == 20 and not string.find(cur, '%D') and cur > ARGV[1] then return 0 end
local fl = redis.call('GET', KEYS[2])
if fl and fl >= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2])
else
  redis.call('SET', KEYS[1], ARGV[1] .. ARGV[2], 'PX', ARGV[3])
end
return 1
"""

#: KEYS: entry. ARGV: version text, tombstone px. 1 if a live entry was removed.
_DEL_IF = """
local cur = redis.call('GETRANGE', KEYS[1], 0, 20)
local v = string.sub(cur, 1, 20)
if #v == 20 and not string.find(v, '%D') and v > ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1] .. 'T', 'PX', ARGV[2])
if string.sub(cur, 21, 21) == 'E' then return 1 end
return 0
"""

#: KEYS: floor. ARGV: version text.
_FLOOR = """
local fl = redis.call('GET', KEYS[1])
if (not fl) or fl < ARGV[1] then redis.call('SET', KEYS[1], ARGV[1]) end
return 1
"""

#: KEYS: hand-off hash. ARGV: field, value (version text first). 1 if stored.
_HANDOFF_PUT = """
local cur = redis.call('HGET', KEYS[1], ARGV[1])
if cur and string.sub(cur, 1, 20) > string.sub(ARGV[2], 1, 20) then return 0 end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
return 1
"""

#: KEYS: hand-off hash. ARGV: field, value. Removes the field only if unchanged.
_HANDOFF_DONE = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HDEL', KEYS[1], ARGV[1]) end
return 0
"""


def _glob_escape(text: str) -> str:
    """Escape Redis MATCH pattern characters, so a prefix matches only itself."""
    return "".join("\\" + ch if ch in "*?[]\\" else ch for ch in text)


def _redis() -> Any:
    try:
        import redis
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise MissingDependencyError("redis", "redis") from exc
    return redis


def cluster_bucket_tags(buckets: int = CLUSTER_BUCKETS) -> tuple[str, ...]:
    """The hash tag of each bucket: bucket ``i``'s is the first ``"i.j"`` (j = 0, 1, ...)
    whose slot lies in ``[i * 16384 // buckets, (i + 1) * 16384 // buckets)``; so the
    buckets spread evenly over the slot space, and over every master."""
    if buckets in _TAGS:
        return _TAGS[buckets]
    from redis.crc import key_slot

    tags: list[str] = []
    for i in range(buckets):
        lo, hi = i * _SLOTS // buckets, (i + 1) * _SLOTS // buckets
        j = 0
        while not lo <= key_slot(f"{i}.{j}".encode()) < hi:
            j += 1
        tags.append(f"{i}.{j}")
    _TAGS[buckets] = tuple(tags)
    return _TAGS[buckets]


_TAGS: dict[int, tuple[str, ...]] = {}


def cluster_nodes(url: str) -> list[str]:
    """The node URLs of a cluster URL (one, or several comma-separated)."""
    nodes = [u.strip() for u in url.split(",") if u.strip()]
    if not nodes:
        raise BackendError("a Redis Cluster URL names no node")
    return nodes


def cluster_client(url: str, *, socket_timeout_seconds: float, **kwargs: Any) -> Any:
    """A ``redis.cluster.RedisCluster`` that starts from every node named in ``url``
    (credentials and TLS from the first URL)."""
    redis = _redis()
    from redis.backoff import NoBackoff
    from redis.cluster import ClusterNode, RedisCluster
    from redis.retry import Retry
    from urllib.parse import urlsplit

    nodes = cluster_nodes(url)
    startup: list[Any] = []
    for u in nodes[1:]:
        parts = urlsplit(u)
        startup.append(ClusterNode(parts.hostname or "127.0.0.1", parts.port or 6379))  # type: ignore[no-untyped-call]
    try:
        return RedisCluster(
            url=nodes[0],
            startup_nodes=startup,
            socket_timeout=socket_timeout_seconds,
            socket_connect_timeout=socket_timeout_seconds,
            # one retry, after the client re-read the slot map: a command that met a
            # moved slot or a promoted replica goes through; a dead master fails fast
            retry=Retry(NoBackoff(), 1),
            **kwargs,
        )
    except (redis.RedisError, redis.exceptions.RedisClusterException) as exc:
        raise BackendUnavailable(f"Redis Cluster is unavailable: {exc}") from exc


def is_cluster_client(client: Any) -> bool:
    """Whether ``client`` is a (sync or asyncio) ``RedisCluster`` (or the tier's lazy one)."""
    if isinstance(client, _LazyClient):
        return True
    try:
        from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
        from redis.cluster import RedisCluster
    except ImportError:  # pragma: no cover - depends on the environment
        return False
    return isinstance(client, (RedisCluster, AsyncRedisCluster))


class RedisBackend(RedisLabelsPart):
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
        tombstone_ttl_seconds: float = 600.0,
        cluster: bool = False,
    ) -> None:
        redis = _redis()
        self.max_ttl_seconds = max_ttl_seconds
        self.prefix = prefix
        #: How long a delete's tombstone refuses older writes and promotions.
        self.tombstone_ttl_seconds = tombstone_ttl_seconds
        #: A Redis Cluster: hash-tagged keys, EVAL, SCAN on every primary, sharded pub/sub.
        self.cluster = bool(cluster or (client is not None and is_cluster_client(client)))
        self._errors: tuple[type[Exception], ...] = (redis.RedisError,)
        self._unavailable: tuple[type[Exception], ...] = (redis.ConnectionError, redis.TimeoutError)
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        if self.cluster:
            from redis.exceptions import ClusterDownError, RedisClusterException, TryAgainError

            # a master down, a slot being failed over or moved: the tier is unavailable
            # for a moment (and the tier chain backs off and probes), not broken
            self._errors = (redis.RedisError, RedisClusterException)
            self._unavailable = (redis.ConnectionError, redis.TimeoutError, ClusterDownError, TryAgainError, RedisClusterException)
            timeout = socket_timeout_seconds
            self.client = client if client is not None else _LazyClient(
                lambda: cluster_client(url, socket_timeout_seconds=timeout, health_check_interval=30)
            )
            tags = cluster_bucket_tags()
            self._bucket_prefixes = tuple(f"{prefix}{{{t}}}" for t in tags)
            meta = f"{prefix}{{meta}}"
        else:
            self.client = client or redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout_seconds,
                socket_connect_timeout=socket_timeout_seconds,
                health_check_interval=30,
                # one attempt: no call waits on a dead Redis longer than the socket timeout
                # (the tier chain's back-off and probe do the retrying)
                retry=Retry(NoBackoff(), 0),
            )
            self._set_if = self.client.register_script(_SET_IF)
            self._del_if = self.client.register_script(_DEL_IF)
            self._floor_script = self.client.register_script(_FLOOR)
            self._handoff_put = self.client.register_script(_HANDOFF_PUT)
            self._handoff_done = self.client.register_script(_HANDOFF_DONE)
            self._bucket_prefixes = ()
            meta = prefix
        self._corrupt = 0
        self._floor_key = f"{prefix}floor"
        self._meta = meta
        self._handoff_key = f"{meta}handoff"
        self._handoff_sel_key = f"{meta}handoff:sel"
        self._log_key = f"{meta}log"
        #: Entries the change-log stream keeps (used only when there is no L3).
        self.log_max_entries = 100_000

    @classmethod
    def from_config(cls, config: RedisConfig) -> RedisBackend:
        """Build the tier from its :class:`~semcache.config.RedisConfig`."""
        return cls(
            config.url,
            prefix=config.prefix,
            max_ttl_seconds=config.max_ttl_seconds,
            socket_timeout_seconds=config.socket_timeout_seconds,
            tombstone_ttl_seconds=config.tombstone_ttl_seconds,
            cluster=config.cluster,
        )

    def _k(self, key: str) -> str:
        if self.cluster:
            return f"{self._bucket_prefixes[zlib.crc32(key.encode()) % CLUSTER_BUCKETS]}e:{key}"
        return f"{self.prefix}e:{key}"

    def _floor_of(self, name: str) -> str:
        """The floor key next to entry key ``name`` (the same slot on a cluster)."""
        if self.cluster:
            return name[: name.index("}", len(self.prefix)) + 1] + "floor"
        return self._floor_key

    def _floor_keys(self) -> list[str]:
        if self.cluster:
            return [f"{b}floor" for b in self._bucket_prefixes]
        return [self._floor_key]

    def _script(self, name: str, keys: list[str], args: list[Any], client: Any = None) -> Any:
        """Run one of the scripts: EVALSHA (loaded once) on one server; EVAL on a
        cluster, where a promoted or restarted node holds no script cache."""
        if self.cluster:
            # (a ClusterPipeline has no eval(): the raw command, routed by its keys' slot)
            target = client if client is not None else self.client
            return target.execute_command("EVAL", _SCRIPTS[name], len(keys), *keys, *args)
        script = {
            "set_if": self._set_if,
            "del_if": self._del_if,
            "floor": self._floor_script,
            "handoff_put": self._handoff_put,
            "handoff_done": self._handoff_done,
        }[name]
        return script(keys=keys, args=args, client=client)

    def _mget(self, names: list[str]) -> list[Any]:
        if self.cluster:
            return list(self.client.mget_nonatomic(names))
        return list(self.client.mget(names))

    def _translate(self, exc: Exception) -> BackendError:
        if isinstance(exc, self._unavailable):
            return BackendUnavailable(f"Redis is unavailable: {exc}")
        return BackendError(f"Redis error: {exc}")

    def _decode(self, key: str, blob: bytes) -> Entry | None:
        """The entry in a stored value, ``None`` for a tombstone; a corrupt value is a
        miss and is removed so it is not read again."""
        try:
            return _parse(blob)
        except SerializationError:
            self._corrupt += 1
            try:
                self.client.delete(self._k(key))
            except self._errors:
                pass
            return None

    def get(self, key: str, now: float) -> Entry | None:
        """GET the entry; a tombstone is a miss; a corrupt value is deleted and a miss."""
        got = self.read(key, now)
        return got if isinstance(got, Entry) else None

    def read(self, key: str, now: float) -> Entry | int | None:
        """Like :meth:`get`, but a tombstone answers with the version of its delete, so a
        lookup can refuse an older copy of the entry found in a lower tier."""
        try:
            blob = self.client.get(self._k(key))
        except self._errors as exc:
            raise self._translate(exc) from exc
        if blob is None:
            return None
        head, kind = blob[:WIDTH], blob[WIDTH : WIDTH + 1]
        if kind == b"T" and head.isdigit():
            return int(head)
        entry = self._decode(key, blob)
        if entry is None or entry.key != key or entry.expired(now):
            return None
        return entry

    def _set_args(self, entry: Entry, now: float) -> list[Any] | None:
        until = tier_expiry(entry, now, self.max_ttl_seconds)
        px = ""
        if until is not None:
            n = math.ceil((until - now) * 1000)
            if n <= 0:
                return None
            px = str(n)
        if until != entry.expires_at:
            entry = entry.with_expiry(until)  # the blob carries the capped life too
        return [version_text(entry.version), b"E" + entry_to_blob(entry), px]

    def set(self, entry: Entry, now: float, *, token: int | None = None) -> bool:
        """Store the entry with a PX expiry from its remaining life, unless Redis holds
        a newer version or a newer delete of its key; return whether it was stored.

        (``token`` is for L1's change marks; versions alone decide here.)
        """
        args = self._set_args(entry, now)
        if args is None:
            return False
        try:
            name = self._k(entry.key)
            return bool(self._script("set_if", [name, self._floor_of(name)], args))
        except self._errors as exc:
            raise self._translate(exc) from exc

    def set_many(self, entries: Sequence[Entry], now: float) -> None:
        """Store many entries in one pipeline (one round trip per batch), versioned."""
        pipe = self.client.pipeline(transaction=False)
        queued = 0
        for entry in entries:
            args = self._set_args(entry, now)
            if args is None:
                continue
            name = self._k(entry.key)
            self._script("set_if", [name, self._floor_of(name)], args, pipe)
            queued += 1
        if not queued:
            return
        try:
            pipe.execute()
        except self._errors as exc:
            raise self._translate(exc) from exc

    def _tomb_px(self) -> str:
        return str(max(1, math.ceil(self.tombstone_ttl_seconds * 1000)))

    def delete(self, keys: Sequence[str], version: int | None = None) -> int:
        """Delete entries: with ``version``, those older than it, leaving tombstones."""
        if not keys:
            return 0
        try:
            if version is None:
                return int(self.client.delete(*[self._k(k) for k in keys]))
            pipe = self.client.pipeline(transaction=False)
            vt, px = version_text(version), self._tomb_px()
            for k in keys:
                self._script("del_if", [self._k(k)], [vt, px], pipe)
            return sum(int(n) for n in pipe.execute())
        except self._errors as exc:
            raise self._translate(exc) from exc

    def _scan(self) -> Iterator[tuple[str, bytes]]:
        if self.cluster:
            yield from self._scan_cluster()
            return
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

    def _scan_cluster(self) -> Iterator[tuple[str, bytes]]:
        """SCAN every primary (``RedisCluster.scan_iter``) for ``{prefix}{tag}e:*``, MGET per slot."""
        start = len(self.prefix)
        batch: list[str] = []

        def flush() -> Iterator[tuple[str, bytes]]:
            for name, blob in zip(batch, self._mget(batch)):
                if blob is not None:
                    cut = name.find("}e:", start)
                    yield name[cut + 3 :], blob
            batch.clear()

        for raw in self.client.scan_iter(match=f"{_glob_escape(self.prefix)}{{*}}e:*", count=_SCAN_BATCH):
            name = raw.decode() if isinstance(raw, bytes) else str(raw)
            if name.find("}e:", start) < 0:
                continue
            batch.append(name)
            if len(batch) >= _SCAN_BATCH:
                yield from flush()
        if batch:
            yield from flush()

    def invalidate(self, selector: Selector, now: float, version: int | None = None) -> list[str]:
        """Delete matching entries: by key directly, otherwise by a scan. With
        ``version``, only entries older than it, leaving tombstones; a flush also
        raises the floor, so no older entry is stored again."""
        if selector.is_empty():
            return []
        try:
            if selector.all and version is not None:
                if self.cluster:  # every bucket's copy of the floor, before the scan
                    pipe = self.client.pipeline(transaction=False)
                    for fk in self._floor_keys():
                        self._script("floor", [fk], [version_text(version)], pipe)
                    pipe.execute()
                else:
                    self._script("floor", [self._floor_key], [version_text(version)])
            if selector.keys and selector == Selector(keys=selector.keys):
                return self._delete_named(list(selector.keys), version)
            gone: list[str] = []
            # named keys plus other criteria: read just those keys, not the keyspace
            found = (
                zip(selector.keys, self._mget([self._k(k) for k in selector.keys]))
                if selector.keys
                else self._scan()
            )
            matched: list[str] = []
            for key, blob in found:
                if blob is None:
                    continue
                entry = self._decode(key, blob)
                if entry is not None and (selector.all or selector.matches(entry, now)):
                    if version is None or entry.version < version:
                        matched.append(key)
            # a flush's floor refuses older copies already: plain deletes, no tombstones
            each = None if selector.all else version
            for i in range(0, len(matched), _SCAN_BATCH):
                gone += self._delete_named(matched[i : i + _SCAN_BATCH], each)
            return gone
        except self._errors as exc:
            raise self._translate(exc) from exc

    def _delete_named(self, keys: list[str], version: int | None) -> list[str]:
        pipe = self.client.pipeline(transaction=False)
        if version is None:
            for k in keys:
                pipe.delete(self._k(k))
        else:
            vt, px = version_text(version), self._tomb_px()
            for k in keys:
                self._script("del_if", [self._k(k)], [vt, px], pipe)
        removed = pipe.execute()
        return [k for k, n in zip(keys, removed) if n]

    # -- the change log, when there is no L3 ------------------------------------------
    def log_append(self, rows: Sequence[tuple[str | None, int, str]]) -> None:
        """Append ``(key, version, op)`` rows to the ``{prefix}log`` stream (trimmed to
        about ``log_max_entries``): the change log replicas follow when there is no L3."""
        pipe = self.client.pipeline(transaction=False)
        for key, version, op in rows:
            pipe.xadd(self._log_key, {"k": key or "", "v": str(version), "o": op}, maxlen=self.log_max_entries, approximate=True)
        try:
            pipe.execute()
        except self._errors as exc:
            raise self._translate(exc) from exc

    def log_read(self, since: str, count: int) -> list[tuple[str, str | None, int, str]]:
        """``(id, key, version, op)`` of the entries after ``since``, oldest first."""
        try:
            got = self.client.xread({self._log_key: since}, count=count)
        except self._errors as exc:
            raise self._translate(exc) from exc
        out: list[tuple[str, str | None, int, str]] = []
        for _, entries in got or ():
            for eid, fields in entries:
                f = {(k.decode() if isinstance(k, bytes) else k): (v.decode() if isinstance(v, bytes) else v) for k, v in fields.items()}
                try:
                    out.append((eid.decode() if isinstance(eid, bytes) else eid, f.get("k") or None, int(f["v"]), str(f["o"])))
                except (KeyError, ValueError):
                    continue
        return out

    def log_last_id(self) -> str:
        """The id of the newest entry (``0-0`` when empty)."""
        try:
            got = self.client.xrevrange(self._log_key, count=1)
        except self._errors as exc:
            raise self._translate(exc) from exc
        if not got:
            return "0-0"
        eid = got[0][0]
        return eid.decode() if isinstance(eid, bytes) else str(eid)

    def log_first_id(self) -> str | None:
        """The id of the oldest entry kept, or ``None``."""
        try:
            got = self.client.xrange(self._log_key, count=1)
        except self._errors as exc:
            raise self._translate(exc) from exc
        if not got:
            return None
        eid = got[0][0]
        return eid.decode() if isinstance(eid, bytes) else str(eid)

    # -- the durable hand-off of what L3 missed ----------------------------------
    def handoff_put(self, entries: Sequence[Entry], deletes: Sequence[tuple[str, int]] = ()) -> None:
        """Record writes (with their embeddings) and deletes that L3 missed; a newer
        record of a key replaces an older one, never the reverse."""
        pipe = self.client.pipeline(transaction=False)
        for e in entries:
            value = version_text(e.version).encode() + b"E" + entry_to_blob(e, with_embedding=True)
            self._script("handoff_put", [self._handoff_key], [e.key, value], pipe)
        for key, version in deletes:
            self._script("handoff_put", [self._handoff_key], [key, version_text(version) + "T"], pipe)
        try:
            pipe.execute()
        except self._errors as exc:
            raise self._translate(exc) from exc

    def handoff_size(self) -> int:
        """How many records (and selector invalidations) wait for L3."""
        try:
            pipe = self.client.pipeline(transaction=False)
            pipe.hlen(self._handoff_key)
            pipe.llen(self._handoff_sel_key)
            return sum(int(n) for n in pipe.execute())
        except self._errors as exc:
            raise self._translate(exc) from exc

    def handoff_put_selector(self, selector: Selector, version: int) -> None:
        """Record an invalidation by selector (tag, scope, model, pattern, flush) that L3 missed."""
        raw = json.dumps({"sel": selector.as_dict(), "ver": version}, separators=(",", ":"))
        try:
            self.client.rpush(self._handoff_sel_key, raw)
        except self._errors as exc:
            raise self._translate(exc) from exc

    def handoff_selectors(self) -> list[tuple[bytes, Selector, int]]:
        """``(raw, selector, version)`` of the selector invalidations waiting, oldest first."""
        try:
            raws = self.client.lrange(self._handoff_sel_key, 0, -1)
        except self._errors as exc:
            raise self._translate(exc) from exc
        out: list[tuple[bytes, Selector, int]] = []
        for raw in raws:
            raw = raw if isinstance(raw, bytes) else str(raw).encode()
            try:
                d = json.loads(raw)
                out.append((raw, Selector.from_dict(dict(d["sel"])), int(d["ver"])))
            except (ValueError, KeyError, TypeError):
                self._corrupt += 1
                self.handoff_selector_done(raw)
        return out

    def handoff_selector_done(self, raw: bytes) -> None:
        """Forget a selector invalidation L3 has applied."""
        try:
            self.client.lrem(self._handoff_sel_key, 1, raw)
        except self._errors as exc:
            raise self._translate(exc) from exc

    def handoff_items(self) -> Iterator[tuple[str, bytes, int, Entry | None]]:
        """``(key, raw value, version, entry or None for a delete)`` for every record."""
        try:
            for field, raw in self.client.hscan_iter(self._handoff_key, count=_SCAN_BATCH):
                key = field.decode() if isinstance(field, bytes) else str(field)
                raw = raw if isinstance(raw, bytes) else str(raw).encode()
                try:
                    version = int(raw[:WIDTH])
                    entry = _parse(raw)
                except (SerializationError, ValueError):
                    self._corrupt += 1
                    self.client.hdel(self._handoff_key, field)
                    continue
                yield key, raw, version, entry
        except self._errors as exc:
            raise self._translate(exc) from exc

    def handoff_done(self, key: str, raw: bytes) -> None:
        """Forget a record that L3 now holds (unless a newer one replaced it meanwhile)."""
        try:
            self._script("handoff_done", [self._handoff_key], [key, raw])
        except self._errors as exc:
            raise self._translate(exc) from exc

    def handoff_invalidate(self, selector: Selector, now: float, version: int) -> None:
        """Apply an invalidation to the records waiting for L3 (they are not in L3 yet,
        so L3's own invalidation cannot see them)."""
        dead: list[tuple[str, int]] = []
        for key, _raw, v, entry in self.handoff_items():
            if entry is None or v >= version:
                continue
            if selector.all or selector.matches(entry, now):
                dead.append((key, version))
        if dead:
            self.handoff_put([], dead)

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
        """PUBLISH a message (invalidations and index updates for other replicas);
        SPUBLISH (sharded pub/sub) on a cluster."""
        try:
            if self.cluster:
                return int(self.client.spublish(channel, message))
            return int(self.client.publish(channel, message))
        except self._errors as exc:
            raise self._translate(exc) from exc

    def ping(self) -> bool:
        """Whether Redis answers (on a cluster: every primary)."""
        try:
            if self.cluster:
                from redis.cluster import RedisCluster

                return bool(self.client.ping(target_nodes=RedisCluster.PRIMARIES))
            return bool(self.client.ping())
        except self._errors as exc:
            raise self._translate(exc) from exc

    def stats(self) -> dict[str, Any]:
        """Counters kept by this process (the entry count would need a scan)."""
        return {"corrupt_removed": self._corrupt}

    def close(self) -> None:
        """Close the connection pool."""
        if isinstance(self.client, _LazyClient) and not self.client.built:
            return
        try:
            self.client.close()
        except self._errors:
            pass


_SCRIPTS = {"set_if": _SET_IF, "del_if": _DEL_IF, "floor": _FLOOR, "handoff_put": _HANDOFF_PUT, "handoff_done": _HANDOFF_DONE}


class _LazyClient:
    """A client built on first use (a ``RedisCluster`` reads the slot map when it is
    made): constructing the tier does no I/O, and a cluster that is down when the
    cache opens is retried like any other outage."""

    def __init__(self, factory: Callable[[], Any]) -> None:
        self._factory = factory
        self._client: Any = None
        self._lock = threading.Lock()

    @property
    def built(self) -> bool:
        return self._client is not None

    def semcache_client(self) -> Any:
        """The client, built now if it was not yet."""
        client = self._client
        if client is None:
            with self._lock:
                if self._client is None:
                    try:
                        self._client = self._factory()
                    except BackendUnavailable as exc:
                        import redis

                        raise redis.ConnectionError(str(exc)) from exc
                client = self._client
        return client

    def __getattr__(self, name: str) -> Any:
        return getattr(self.semcache_client(), name)


def _parse(blob: bytes) -> Entry | None:
    """A stored value: the entry (with its version), or ``None`` for a tombstone.

    Raises:
        SerializationError: the value is corrupt (or from before versioned values).
    """
    head, kind = blob[:WIDTH], blob[WIDTH : WIDTH + 1]
    if len(head) != WIDTH or not head.isdigit() or kind not in (b"E", b"T"):
        raise SerializationError("not a versioned semcache value")
    if kind == b"T":
        return None
    entry = entry_from_blob(blob[WIDTH + 1 :])
    return dataclasses.replace(entry, version=int(head))
