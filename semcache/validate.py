"""Input checks run before anything is acknowledged or written. Pure, no I/O.

Every tier must be able to hold what :meth:`~semcache.SemanticCache.set` accepts, so
the rules are those of the narrowest tier (PostgreSQL) and are applied up front, on
every backend alike. A call that breaks one raises a typed error naming the field;
nothing is stored and nothing already stored is touched.

* **Text** (the prompt, the text of the last user turn, tags, ``model``,
  ``namespace``): a ``str`` with no NUL character (PostgreSQL ``text`` cannot hold
  one) and no lone surrogate (``"\\ud800"`` is not Unicode and cannot be encoded as
  UTF-8). :class:`~semcache.errors.InvalidInputError`.
* **Tags**: an iterable of text (not a bare string), each non-empty and at most
  :data:`MAX_TAG_LENGTH` characters; duplicates are dropped, first one kept.
  :class:`~semcache.errors.InvalidInputError`.
* **Structured data** (a response value, metadata): nested at most :data:`MAX_DEPTH`
  containers deep, so that it can be written *and read back* by the JSON codec
  without hitting the interpreter's recursion limit in any thread.
  :class:`~semcache.errors.SerializationError` (an ``InvalidInputError``).
* **Metadata** is stored as JSON text in L3 (and returned verbatim to HTTP clients),
  so its keys and its string values follow the text rule too: no NUL and no lone
  surrogate. PostgreSQL's ``json`` column stores ``\\u0000`` and ``\\ud800`` escapes
  as text, but ``->>`` on them and any cast to ``jsonb`` fail ("unsupported Unicode
  escape sequence", "invalid input syntax for type json"), so such metadata is
  refused up front rather than breaking a later query or migration.
  :class:`~semcache.errors.SerializationError`.
* A response **value** is stored as an opaque payload (bytes, or JSON with every
  NUL escaped), so NUL characters inside a value are allowed and round-trip; lone
  surrogates are not (the payload is UTF-8).

The checks are cheap on the hot path: an ASCII string costs one ``in`` scan, and only
containers are walked (iteratively, so the check itself cannot overflow the stack).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from .errors import InvalidInputError, SerializationError

__all__ = [
    "MAX_DEPTH",
    "MAX_NAME_LENGTH",
    "MAX_TAG_LENGTH",
    "check_json",
    "check_metadata",
    "check_name",
    "check_tags",
    "check_text",
    "text_problem",
]

#: Longest tag (the L3 tag column is this wide).
MAX_TAG_LENGTH = 255

#: Longest namespace or model name (the L3 columns are this wide).
MAX_NAME_LENGTH = 255

#: Deepest nesting of lists/dicts in a value or metadata. Well under the
#: interpreter's default recursion limit (1000), which the JSON codec counts against
#: in *both* directions: a value that only just dumps may not load again from a
#: deeper call stack (a server thread, say).
MAX_DEPTH = 128


def text_problem(s: str) -> str | None:
    """Why ``s`` cannot be stored as text, or ``None`` when it can."""
    if "\x00" in s:
        return f"contains a NUL character at position {s.index(chr(0))}"
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError as exc:
            pos = exc.start
            return f"contains a lone surrogate {s[pos]!r} at position {pos} (not valid Unicode)"
    return None


def check_text(field: str, s: Any) -> str:
    """Return ``s`` if it is a string that every tier can store as text.

    Raises:
        InvalidInputError: ``s`` is not a ``str``, or holds a NUL character or a
            lone surrogate; the message names ``field``.
    """
    if not isinstance(s, str):
        raise InvalidInputError(f"{field} must be a string, not {type(s).__name__}")
    problem = text_problem(s)
    if problem is not None:
        raise InvalidInputError(f"{field} {problem}")
    return s


def check_name(field: str, s: Any, *, max_length: int = MAX_NAME_LENGTH) -> str | None:
    """Check an optional short name (``model``, ``namespace``): ``None`` or text of at
    most ``max_length`` characters.

    Raises:
        InvalidInputError: not a string, too long, NUL or lone surrogate.
    """
    if s is None:
        return None
    if not isinstance(s, str) or len(s) > max_length:
        raise InvalidInputError(f"{field} must be a string of at most {max_length} characters")
    return check_text(field, s)


def check_tags(tags: Any) -> tuple[str, ...]:
    """Return ``tags`` as a tuple without duplicates (first occurrence kept).

    ``None`` is no tags. Any other iterable of strings is accepted, as before.

    Raises:
        InvalidInputError: ``tags`` is a bare string (or bytes) or not iterable, or a
            tag is not a non-empty string of at most :data:`MAX_TAG_LENGTH`
            characters, or holds a NUL character or a lone surrogate.
    """
    if tags is None:
        return ()
    if isinstance(tags, (str, bytes, bytearray)):
        raise InvalidInputError("tags must be a list of strings, not a string")
    if not isinstance(tags, Iterable):
        raise InvalidInputError(f"tags must be a list of strings, not {type(tags).__name__}")
    out = tuple(dict.fromkeys(tags))
    for i, t in enumerate(out):
        if not isinstance(t, str) or not t or len(t) > MAX_TAG_LENGTH:
            raise InvalidInputError(
                f"tags must be non-empty strings of at most {MAX_TAG_LENGTH} characters"
                f" (tag {i}: {t!r:.60})"
            )
        problem = text_problem(t)
        if problem is not None:
            raise InvalidInputError(f"tag {t!r:.60} {problem}")
    return out


def check_json(field: str, value: Any, *, strings: bool = False, max_depth: int = MAX_DEPTH) -> None:
    """Walk ``value`` (iteratively) and check its nesting depth.

    With ``strings=True`` every string in it, dict keys included, must also pass the
    text rule. Non-JSON types are left for the serialiser to reject.

    Raises:
        SerializationError: nested deeper than ``max_depth``, or (``strings``) a
            string holds a NUL character or a lone surrogate.
    """
    if not isinstance(value, (dict, list, tuple)):
        if strings and isinstance(value, str):
            _check_string(field, value, "")
        return
    stack: list[tuple[Any, int, str]] = [(value, 1, "")]
    # a sub-object shared by several parents is walked again only when it is met
    # deeper than before, so sharing costs little and a cycle ends at max_depth
    seen: dict[int, int] = {}
    while stack:
        node, depth, path = stack.pop()
        if depth > max_depth:
            raise SerializationError(
                f"{field} is nested more than {max_depth} levels deep (or refers to itself)"
            )
        nid = id(node)
        if seen.get(nid, 0) >= depth:
            continue
        seen[nid] = depth
        if isinstance(node, dict):
            for k, v in node.items():
                if strings and isinstance(k, str):
                    _check_string(field, k, path, key=True)
                if isinstance(v, (dict, list, tuple)):
                    stack.append((v, depth + 1, f"{path}.{k}" if strings else path))
                elif strings and isinstance(v, str):
                    _check_string(field, v, f"{path}.{k}")
        else:
            for i, v in enumerate(node):
                if isinstance(v, (dict, list, tuple)):
                    stack.append((v, depth + 1, f"{path}[{i}]" if strings else path))
                elif strings and isinstance(v, str):
                    _check_string(field, v, f"{path}[{i}]")


def _check_string(field: str, s: str, path: str, *, key: bool = False) -> None:
    problem = text_problem(s)
    if problem is not None:
        where = f"{field}{path}" if path else field
        what = f"a key of {where}" if key else where
        raise SerializationError(f"{what} {problem}")


def check_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """Return ``metadata`` as a plain dict once it is known to be storable.

    Raises:
        SerializationError: not a mapping, not JSON-serialisable (NaN and infinity
            included), nested more than :data:`MAX_DEPTH` deep, or a key or string
            holds a NUL character or a lone surrogate.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise SerializationError(f"metadata must be a mapping, not {type(metadata).__name__}")
    meta = dict(metadata)
    check_json("metadata", meta, strings=True)
    try:
        json.dumps(meta, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise SerializationError(f"metadata must be JSON-serialisable: {exc}") from exc
    return meta
