"""Events between replicas: writes and invalidations carried over Redis pub/sub.

Every replica keeps its own L1 and its own index; when one of them writes or
invalidates, it publishes a JSON message on ``{prefix}events`` and the others
apply it, so no replica serves an entry that was invalidated or replaced
elsewhere, and a vector stored by one is searchable by all without a rebuild.

Messages (``origin`` is the publishing cache's id, ignored by itself)::

    {"origin": ..., "op": "add", "items": [{"key", "scope", "ver", "ei": embedder id, "v": base64 float32}]}
    {"origin": ..., "op": "inv", "ver": version, "keys": [...], "sel": Selector.as_dict() | None}
    {"origin": ..., "op": "block", "pairs": [pair id, ...]}   (wrong semantic hits: semcache.feedback)

Applying a message is versioned: a write of version v drops this replica's copies
older than v, a delete of version v drops those up to v and leaves a tombstone, so
a message that arrives late or twice changes nothing it should not.

On a Redis Cluster the channel is a *sharded* one (SPUBLISH / SSUBSCRIBE): it lives
on the master of its hash slot (and that master's replicas) instead of being
broadcast over the whole cluster bus. The listener follows that slot: when its node
fails, or the slot's master changes (a failover, a resharding), it re-reads the slot
map and subscribes again on the new master, counting it as a gap.

Pub/sub is fire-and-forget: it is the fast path (well under a second). What it
loses — a replica disconnected while a message was sent, or a writer whose Redis
was down — is caught up from L3's change log (:mod:`semcache.replicas`), within
``Policy.log_poll_seconds``; after a subscription gap a replica also empties its L1.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import numpy as np

from .types import Entry, Selector

__all__ = ["EventListener", "add_message", "apply_event", "invalidate_message"]

log = logging.getLogger("semcache")


def add_message(entries: Iterable[Entry]) -> dict[str, Any]:
    """The message for one write (a whole ``set_many`` batch is one message)."""
    return {
        "op": "add",
        "items": [
            {
                "key": e.key,
                "scope": e.scope,
                "ver": e.version,
                "ei": e.embedder_id,
                "v": base64.b64encode(e.embedding).decode("ascii") if e.embedding else None,
            }
            for e in entries
        ],
    }


def invalidate_message(keys: Iterable[str], selector: Selector | None, version: int = 0) -> dict[str, Any]:
    """The message for an invalidation: the keys removed here, the selector used, its version."""
    return {"op": "inv", "ver": version, "keys": sorted(keys), "sel": None if selector is None else selector.as_dict()}


def _ver(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else None


def apply_event(msg: Mapping[str, Any], *, memory: Any, index: Any, embedder_id: str | None, now: float, blocks: Callable[[list[str]], None] | None = None) -> None:
    """Apply another replica's message to this replica's L1 (``memory``) and ``index``
    (and blocked pairings to ``blocks``)."""
    op = msg.get("op")
    if op == "block":
        if blocks is not None:
            blocks([str(p) for p in msg.get("pairs") or ()])
    elif op == "inv":
        keys = [str(k) for k in msg.get("keys") or ()]
        sel = Selector.from_dict(dict(msg["sel"])) if msg.get("sel") else None
        ver = _ver(msg.get("ver"))
        if memory is not None:
            memory.delete(keys, ver)
            if sel is not None and sel.all:
                if ver is None:
                    memory.clear()
                else:
                    memory.invalidate(sel, now, ver)
            elif sel is not None:
                memory.invalidate(sel, now, ver)
        if index is not None:
            if sel is not None and sel.all:
                index.clear()
            else:
                index.remove(keys)
    elif op == "add":
        for item in msg.get("items") or ():
            key = str(item.get("key"))
            ver = _ver(item.get("ver"))
            if memory is not None:
                # replaced elsewhere: our copy, if older, is stale
                memory.delete([key], None if ver is None else ver - 1)
            if index is None:
                continue
            if item.get("v") and item.get("ei") == embedder_id:
                v = np.frombuffer(base64.b64decode(item["v"]), dtype=np.float32)
                if v.shape == (index.dim,) and np.isfinite(v).all():
                    index.add(str(item["scope"]), [key], v.reshape(1, -1))
            elif key in index:
                index.remove([key])  # replaced by an entry this index cannot use


class EventListener(threading.Thread):
    """A daemon thread subscribed to the events channel; it outlives Redis outages
    and, on a Redis Cluster (sharded pub/sub), failovers of the channel's master."""

    #: On a cluster, how often the listener checks that its node still owns the channel's slot.
    check_seconds = 1.0

    def __init__(
        self,
        client: Any,
        channel: str,
        on_message: Callable[[dict[str, Any]], None],
        on_gap: Callable[[], None] | None = None,
        *,
        cluster: bool | None = None,
    ) -> None:
        super().__init__(name="semcache-events", daemon=True)
        self.client = client
        self.channel = channel
        self.on_message = on_message
        #: Called after a resubscription: messages may have been missed meanwhile.
        self.on_gap = on_gap
        self.stopping = threading.Event()
        if cluster is None:
            from .tiers.redis import is_cluster_client

            cluster = is_cluster_client(client)
        #: Sharded pub/sub (SSUBSCRIBE) on a Redis Cluster.
        self.cluster = cluster
        #: The node the sharded subscription is on (``host:port``), and how many times it subscribed.
        self.node: str | None = None
        self.subscriptions = 0
        #: Set once subscribed (again after every resubscription).
        self.subscribed = threading.Event()

    def stop(self, timeout: float = 2.0) -> None:
        """Ask the thread to stop and wait for it."""
        self.stopping.set()
        if self.is_alive():
            self.join(timeout)

    def _subscribe(self) -> Any:
        if not self.cluster:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            pubsub.subscribe(self.channel)
            return pubsub
        client = getattr(self.client, "semcache_client", None)
        client = client() if client is not None else self.client
        node = client.get_node_from_key(self.channel)
        if node is None:
            raise ConnectionError(f"no node serves the slot of {self.channel}")
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        pubsub.ssubscribe(self.channel)
        if not pubsub.node_pubsub_mapping:
            _close(pubsub)
            raise ConnectionError(f"could not subscribe to {self.channel} on {node.name}")
        self.node = node.name
        return pubsub

    def _moved(self) -> bool:
        """Whether the channel's slot is now served by another node than ours."""
        client = getattr(self.client, "semcache_client", None)
        client = client() if client is not None else self.client
        node = client.get_node_from_key(self.channel)
        return node is None or node.name != self.node

    def _refresh(self) -> None:
        """Re-read the cluster's slot map (after an error on our node)."""
        client = getattr(self.client, "semcache_client", None)
        client = client() if client is not None else self.client
        client.nodes_manager.initialize()

    def run(self) -> None:
        """Subscribe, apply messages, and resubscribe with back-off after errors."""
        pubsub = None
        delay = 0.2
        subscribed_before = False
        checked = time.monotonic()
        while not self.stopping.is_set():
            try:
                if pubsub is None:
                    self.subscribed.clear()
                    pubsub = self._subscribe()
                    self.subscriptions += 1
                    if subscribed_before and self.on_gap is not None:
                        self.on_gap()
                    subscribed_before = True
                    self.subscribed.set()
                    checked = time.monotonic()
                if self.cluster:
                    if not pubsub.node_pubsub_mapping:  # dropped by the client: nothing to wait on
                        raise ConnectionError(f"the subscription to {self.channel} was dropped")
                    msg = pubsub.get_sharded_message(timeout=0.5)
                    if time.monotonic() - checked > self.check_seconds:
                        checked = time.monotonic()
                        if self._moved():
                            raise ConnectionError(f"the slot of {self.channel} moved off {self.node}")
                else:
                    msg = pubsub.get_message(timeout=0.5)
                delay = 0.2
            except Exception as exc:  # noqa: BLE001 - Redis down: resubscribe after a back-off
                log.debug("event listener: %s", exc)
                _close(pubsub)
                pubsub = None
                self.stopping.wait(delay)
                delay = min(delay * 2, 2.0 if self.cluster else 5.0)
                if self.cluster:
                    try:
                        self._refresh()
                    except Exception as exc2:  # noqa: BLE001 - no node answers yet: try again later
                        log.debug("event listener: slot map: %s", exc2)
                continue
            if msg is None or msg.get("type") not in ("message", "smessage"):
                continue
            try:
                self.on_message(json.loads(msg["data"]))
            except Exception:
                log.warning("ignored a malformed semcache event", exc_info=True)
        _close(pubsub)


def _close(pubsub: Any) -> None:
    if pubsub is None:
        return
    try:
        pubsub.close()
    except Exception:
        log.debug("closing pubsub failed", exc_info=True)
