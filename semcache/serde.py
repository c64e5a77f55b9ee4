"""Serialisation of responses and whole entries. Pure, no I/O.

A response payload is one tag byte and a body: ``j`` + UTF-8 JSON for
JSON-serialisable values, ``b`` + raw bytes for ``bytes``. An entry blob (what L2
stores) is the entry's JSON header, a NUL byte, then the payload; JSON never
contains a raw NUL, so the split is unambiguous.

What may be stored is checked here, before anything is written (rules in
:mod:`semcache.validate`): a value nested more than ``MAX_DEPTH`` deep, or metadata
that is too deep or holds a NUL character or a lone surrogate, raises
:class:`~semcache.errors.SerializationError`. NUL characters *inside a value* are fine:
the payload is binary and JSON escapes them.
"""

from __future__ import annotations

import json
from typing import Any

from .errors import SerializationError
from .validate import check_json, check_metadata

__all__ = ["check_metadata", "dumps", "loads"]


def dumps(value: Any) -> bytes:
    """Serialise a response value.

    Raises:
        SerializationError: the value is neither bytes nor JSON-serialisable (NaN
            included), holds a lone surrogate, or is nested more than
            :data:`~semcache.validate.MAX_DEPTH` deep.
    """
    if isinstance(value, (bytes, bytearray, memoryview)):
        return b"b" + bytes(value)
    check_json("the value", value)
    try:
        return b"j" + json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":")).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        # ValueError covers NaN, circular references and (UnicodeEncodeError) lone
        # surrogates; RecursionError cannot happen after check_json, but must never leak
        raise SerializationError(
            f"cannot cache a {type(value).__name__}: store bytes or a JSON-serialisable value ({exc})"
        ) from exc


def loads(payload: bytes) -> Any:
    """Deserialise a response payload.

    Raises:
        SerializationError: the payload is corrupt.
    """
    if not payload:
        raise SerializationError("empty payload")
    tag, body = payload[:1], payload[1:]
    if tag == b"b":
        return bytes(body)
    if tag == b"j":
        try:
            return json.loads(body.decode("utf-8"))  # str: skips json's encoding detection
        except (ValueError, UnicodeDecodeError, RecursionError) as exc:
            raise SerializationError(f"corrupt JSON payload: {exc}") from exc
    raise SerializationError(f"unknown payload tag {tag!r}")
