"""Scope and key rules: what must match exactly, and what is matched semantically.

Pure functions, no I/O. The rules:

* **Plain prompt** (``prompt="..."``): the scope is the namespace, the model and the
  generation params the caller names. The prompt text is what is matched.
* **A plain prompt is a one-turn chat**: ``prompt="X"`` and ``messages=[{"role":
  "user", "content": "X"}]`` (one user turn with no other field, no system prompt and
  no non-text part; the content a string or text parts) are the same request: the same
  scope and the same key, so the JSON API and the OpenAI-compatible proxy share one
  cache. (Before this rule, such a chat had a scope of its own: entries stored that way
  by an earlier release are no longer found and expire with their TTL.)
* **Chat messages** (OpenAI-style ``messages=[...]``): the text matched is the content
  of the *last user turn*. Everything else is scope and must match exactly: the model,
  every generation param that changes the output (temperature, top_p, max_tokens,
  tools, response_format, seed, stop, ...), the system prompt, every earlier turn and
  every turn after the last user turn (tool results, say), and any non-text parts of
  the last user turn (images).
* Params that cannot change the output (``stream``, ``user``, ``timeout``, request
  metadata, ...) are dropped from the scope, so a streamed and an unstreamed call share
  an entry. Every other param is kept: an unknown param splits the cache rather than
  risking a wrong answer.
* Key order in params and in nested dicts does not matter (canonical JSON).
* The prompt is normalised for the exact key conservatively: Unicode NFC (canonical
  equivalence only: "2³" and "23" stay different, as NFKC would merge them), line
  endings unified, trailing spaces on each line and surrounding blank space
  stripped. Inner whitespace and indentation are kept (they matter in code), and so
  is case. Prompts that differ in more than that are left to the semantic path.
* The exact key is ``H(scope, normalised text)`` and is also the entry's id.
* What is stored as text (the prompt or the last user turn's text, ``model``,
  ``namespace``) must be storable by every tier: no NUL character, no lone surrogate
  (:func:`semcache.validate.check_text`). Scope fields are only hashed, so a NUL in
  them is fine, but they must be valid Unicode and JSON-serialisable.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import InvalidInputError
from .validate import MAX_NAME_LENGTH, check_name, check_text  # noqa: F401 (re-exported)

__all__ = [
    "IGNORED_PARAMS",
    "Request",
    "build_request",
    "canonical_json",
    "exact_key",
    "normalize_prompt",
    "scope_hash",
]

#: Params that never change what the model answers; they do not split the cache.
IGNORED_PARAMS = frozenset(
    {
        "stream",
        "stream_options",
        "user",
        "timeout",
        "extra_headers",  # transport only (and may hold secrets); extra_body/extra_query
        # can carry generation params (guided decoding, top_k, API versions): scope
        "metadata",
        "store",
        "request_id",
        "api_key",
        "base_url",
        "service_tier",
        "parallel_tool_calls_hint",
    }
)

_TRAILING_WS = re.compile(r"[ \t]+\n")


def canonical_json(value: Any) -> str:
    """Return JSON with sorted keys and no spaces: equal values give equal strings."""
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"scope fields must be JSON-serialisable: {exc}") from exc
    except RecursionError:
        raise InvalidInputError("scope fields (params, messages) are nested too deeply to be keyed") from None


def _default(obj: Any) -> Any:
    # pydantic models (OpenAI SDK params) and other objects with a dict form
    for attr in ("model_dump", "dict", "to_dict"):
        fn = getattr(obj, attr, None)
        if callable(fn):
            return fn()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj, key=repr)
    if isinstance(obj, tuple):
        return list(obj)
    raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")


def _hash(text: str) -> str:
    return hashlib.blake2b(text.encode("utf-8"), digest_size=16).hexdigest()


def normalize_prompt(text: str) -> str:
    """Normalise a prompt for the exact key: NFC, unified line endings, trimmed."""
    # the fast paths give the same result: ASCII is always NFC, and without a line
    # break there is no line ending to unify and no trailing space before one
    if not text.isascii():
        text = unicodedata.normalize("NFC", text)
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "\n" in text:
        text = _TRAILING_WS.sub("\n", text)
    return text.strip()


def scope_hash(scope: Mapping[str, Any]) -> str:
    """Return the hash of a scope dict.

    Raises:
        InvalidInputError: the scope is not JSON-serialisable, is nested too deeply,
            or holds a lone surrogate.
    """
    text = canonical_json(scope)
    try:
        return _hash(text)
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"scope fields (params, messages) contain a lone surrogate {text[exc.start]!r} (not valid Unicode)"
        ) from None


def exact_key(scope: str, text: str) -> str:
    """Return the exact key (and entry id) of ``text`` in the scope hash ``scope``."""
    return _hash(scope + "\x1f" + normalize_prompt(text))


#: Scope hashes of plain prompts without params, by (namespace, model): the common
#: case, hashed once instead of on every call. Bounded: cleared when full.
_PLAIN_SCOPES: dict[tuple[str | None, str | None], str] = {}
_PLAIN_SCOPES_MAX = 4096


def _plain_scope_hash(namespace: str | None, model: str | None, scope: Mapping[str, Any]) -> str:
    k = (namespace, model)
    sh = _PLAIN_SCOPES.get(k)
    if sh is None:
        sh = scope_hash(scope)
        if len(_PLAIN_SCOPES) >= _PLAIN_SCOPES_MAX:
            _PLAIN_SCOPES.clear()
        _PLAIN_SCOPES[k] = sh
    return sh


@dataclass(frozen=True, slots=True)
class Request:
    """A lookup or store request, reduced to what the cache matches on."""

    text: str
    scope: str
    key: str
    namespace: str | None = None
    model: str | None = None
    scope_fields: dict[str, Any] = field(default_factory=dict)


def _content_text(content: Any) -> tuple[str, list[Any]]:
    """Split a message content into its text and its non-text parts."""
    if content is None:
        return "", []
    if isinstance(content, str):
        return content, []
    if isinstance(content, Sequence):
        texts: list[str] = []
        others: list[Any] = []
        for part in content:
            if isinstance(part, Mapping) and part.get("type") == "text":
                texts.append(str(part.get("text", "")))
            else:
                others.append(part)
        return "\n".join(texts), others
    raise InvalidInputError("message content must be a string or a list of parts")


def _as_message(message: Any) -> dict[str, Any]:
    if isinstance(message, Mapping):
        return dict(message)
    dumped = _default(message) if not isinstance(message, (str, bytes)) else None
    if isinstance(dumped, Mapping):
        return dict(dumped)
    raise InvalidInputError("each message must be a dict with 'role' and 'content'")


def build_request(
    prompt: str | None = None,
    *,
    messages: Sequence[Any] | None = None,
    model: str | None = None,
    params: Mapping[str, Any] | None = None,
    namespace: str | None = None,
) -> Request:
    """Reduce a prompt or a message list (plus scope fields) to a :class:`Request`.

    Raises:
        InvalidInputError: both or neither of ``prompt``/``messages``, an empty
            prompt, no user turn, a NUL character or a lone surrogate in the
            prompt, the last user turn's text, ``model`` or ``namespace``, or scope
            fields that are not JSON-serialisable.
    """
    if (prompt is None) == (messages is None):
        raise InvalidInputError("pass exactly one of prompt= or messages=")
    check_name("namespace", namespace)
    check_name("model", model)
    kept = {k: v for k, v in (params or {}).items() if k not in IGNORED_PARAMS}
    scope: dict[str, Any] = {"ns": namespace, "model": model, "params": kept}
    if prompt is not None:
        if not isinstance(prompt, str):
            raise InvalidInputError(f"prompt must be a string, not {type(prompt).__name__}")
        text = check_text("prompt", prompt)
    else:
        if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence) or not messages:
            raise InvalidInputError("messages must be a non-empty list of chat messages")
        msgs = [_as_message(m) for m in messages]
        last_user = max((i for i, m in enumerate(msgs) if m.get("role") == "user"), default=None)
        if last_user is None:
            raise InvalidInputError("messages must contain at least one user turn")
        text, other_parts = _content_text(msgs[last_user].get("content"))
        check_text(f"messages[{last_user}] (the last user turn)", text)
        last = {k: v for k, v in msgs[last_user].items() if k != "content"}
        if other_parts:
            last["parts"] = other_parts
        if len(msgs) > 1 or last != {"role": "user"}:
            scope["before"] = msgs[:last_user]
            scope["last"] = last
            scope["after"] = msgs[last_user + 1 :]
        # else: one bare user turn, the same request as a plain prompt of its text
    normalized = normalize_prompt(text)
    if not normalized:
        raise InvalidInputError("the prompt is empty: there is nothing to cache on")
    plain = "last" not in scope
    sh = _plain_scope_hash(namespace, model, scope) if plain and not kept else scope_hash(scope)
    return Request(
        text=text,
        scope=sh,
        key=_hash(sh + "\x1f" + normalized),  # exact_key(sh, text), normalised once
        namespace=namespace,
        model=model,
        scope_fields=scope,
    )
