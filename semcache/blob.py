"""The L2 format of a whole entry: a JSON header, a NUL byte, then the payload
(:func:`semcache.serde.dumps`). Apart from :mod:`semcache.serde` so that the value
codec does not import the entry type that uses it."""

from __future__ import annotations

import base64
import json
import math

from .errors import SerializationError
from .types import Entry

__all__ = ["entry_from_blob", "entry_to_blob"]


def entry_to_blob(entry: Entry, *, with_embedding: bool = False) -> bytes:
    """Serialise a whole entry to one blob (the L2 format)."""
    header = {
        "k": entry.key,
        "s": entry.scope,
        "p": entry.prompt,
        "c": entry.created_at,
        "e": entry.expires_at,
        "n": entry.namespace,
        "m": entry.model,
        "t": list(entry.tags),
        "md": entry.metadata,
        "ei": entry.embedder_id,
        "ttl": entry.ttl_seconds,
    }
    if with_embedding and entry.embedding is not None:
        header["v"] = base64.b64encode(entry.embedding).decode("ascii")
    return json.dumps(header, separators=(",", ":")).encode("utf-8") + b"\x00" + entry.payload


def entry_from_blob(blob: bytes) -> Entry:
    """Inverse of :func:`entry_to_blob`.

    Raises:
        SerializationError: the blob is corrupt.
    """
    try:
        sep = blob.index(b"\x00")
        h = json.loads(blob[:sep])
        payload = bytes(blob[sep + 1 :])
        if not payload or payload[:1] not in (b"j", b"b"):
            raise ValueError("bad payload tag")
        created = float(h["c"])
        expires = None if h.get("e") is None else float(h["e"])
        if math.isnan(created) or (expires is not None and math.isnan(expires)):
            raise ValueError("NaN timestamp")
        emb = base64.b64decode(h["v"]) if h.get("v") else None
        return Entry(
            key=str(h["k"]),
            scope=str(h["s"]),
            prompt=str(h["p"]),
            payload=payload,
            created_at=created,
            expires_at=expires,
            namespace=h.get("n"),
            model=h.get("m"),
            tags=tuple(h.get("t") or ()),
            metadata=dict(h.get("md") or {}),
            embedding=emb,
            embedder_id=h.get("ei"),
            ttl_seconds=None if h.get("ttl") is None else float(h["ttl"]),
        )
    except (ValueError, KeyError, TypeError, AttributeError, RecursionError) as exc:
        raise SerializationError(f"corrupt cache entry: {exc}") from exc
