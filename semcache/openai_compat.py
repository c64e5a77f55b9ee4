"""OpenAI response objects and their storable JSON form. Pure, no I/O.

The OpenAI Python SDK (``openai``) is optional: nothing here imports it until an
SDK object is seen or rebuilt. Shared by the decorator and the HTTP sidecar.

API::

    to_storable(value) -> (json_value, format)     # SDK object -> wire-format dict
    from_storable(json_value, format) -> value     # back to the same SDK type
    format_of(value) -> str                        # "json" or one of FORMATS
    item_to_storable(item) / items_to_storable(items) -> (list, format)   # stream chunks
    uncacheable_reason(value, *, stream=False) -> str | None   # "empty", "content_filter", "error"
    answer_text(value, *, stream=False) -> str     # the text two answers are compared on
    usage_of(value) -> dict | None                 # {"prompt_tokens", "completion_tokens", "total_tokens"}
    model_of(value) -> str | None                  # the "model" a response names
    chunks_to_completion(chunks) -> dict           # a recorded stream as one chat.completion
    completion_to_chunks(completion) -> list[dict] # a completion replayed as chunks
    sse_events(chunks) -> Iterator[bytes]          # b"data: {...}\\n\\n" ... b"data: [DONE]\\n\\n"

Formats: the storable form of an SDK object is exactly its wire JSON (what the
API sent, ``to_dict()``), so an entry written from a dict by the sidecar and one
written from a ``ChatCompletion`` by the decorator hold the same value. The type
travels beside it, in the entry's metadata under :data:`FORMAT_KEY`; a recorded
stream is a list of items with ``metadata[STREAM_KEY] = True``. Only the types in
:data:`FORMATS` are ever rebuilt (a stored format never names an arbitrary class).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from .errors import MissingDependencyError, SerializationError

__all__ = [
    "FORMATS",
    "FORMAT_CHAT_CHUNK",
    "FORMAT_CHAT_COMPLETION",
    "FORMAT_COMPLETION",
    "FORMAT_JSON",
    "FORMAT_KEY",
    "STREAM_KEY",
    "answer_text",
    "chunks_to_completion",
    "completion_to_chunks",
    "format_of",
    "from_storable",
    "is_openai_object",
    "item_from_storable",
    "item_to_storable",
    "items_to_storable",
    "model_of",
    "sse_events",
    "to_storable",
    "uncacheable_reason",
    "usage_of",
]

#: Entry metadata key naming the stored value's format.
FORMAT_KEY = "format"
#: Entry metadata key: ``True`` when the value is a recorded stream (a list of items).
STREAM_KEY = "stream"

FORMAT_JSON = "json"
FORMAT_CHAT_COMPLETION = "openai.chat.completion"
FORMAT_CHAT_CHUNK = "openai.chat.completion.chunk"
FORMAT_COMPLETION = "openai.completion"

#: format -> (module, class) of the SDK type it is rebuilt as.
FORMATS: dict[str, tuple[str, str]] = {
    FORMAT_CHAT_COMPLETION: ("openai.types.chat", "ChatCompletion"),
    FORMAT_CHAT_CHUNK: ("openai.types.chat", "ChatCompletionChunk"),
    FORMAT_COMPLETION: ("openai.types", "Completion"),
}

# the "object" field the API puts in each wire form
_OBJECT_FIELD = {
    "chat.completion": FORMAT_CHAT_COMPLETION,
    "chat.completion.chunk": FORMAT_CHAT_CHUNK,
    "text_completion": FORMAT_COMPLETION,
}

_USAGE_FIELDS = ("prompt_tokens", "completion_tokens", "total_tokens")


def _sdk_class(fmt: str) -> type[Any]:
    import importlib

    try:
        module, name = FORMATS[fmt]
    except KeyError:
        raise SerializationError(f"unknown stored format {fmt!r}") from None
    try:
        return getattr(importlib.import_module(module), name)  # type: ignore[no-any-return]
    except ImportError as exc:
        raise MissingDependencyError("openai", "openai") from exc


def is_openai_object(value: Any) -> bool:
    """Whether ``value`` is an OpenAI SDK model object (without importing the SDK)."""
    mod = type(value).__module__
    return (mod == "openai" or mod.startswith("openai.")) and hasattr(value, "to_dict")


def format_of(value: Any) -> str:
    """The storage format of a value: one of :data:`FORMATS`, or ``"json"``."""
    if not is_openai_object(value):
        return FORMAT_JSON
    for fmt in FORMATS:
        if isinstance(value, _sdk_class(fmt)):
            return fmt
    return FORMAT_JSON


def _dump(value: Any) -> dict[str, Any]:
    # to_dict() is the SDK's own wire form: fields the API did not send stay out,
    # so rebuilding gives an object equal to a fresh one
    return value.to_dict(mode="json", warnings=False)  # type: ignore[no-any-return]


def to_storable(value: Any) -> tuple[Any, str]:
    """Turn a response into ``(json_value, format)``; non-SDK values pass through as ``"json"``.

    Raises:
        SerializationError: an OpenAI SDK object of a type that is not in :data:`FORMATS`.
    """
    fmt = format_of(value)
    if fmt != FORMAT_JSON:
        return _dump(value), fmt
    if is_openai_object(value):
        raise SerializationError(f"cannot cache an openai {type(value).__name__}: it is not a known response type")
    return value, FORMAT_JSON


def from_storable(value: Any, fmt: str | None) -> Any:
    """Rebuild a stored value: an SDK object of the recorded type, or the JSON value itself.

    Raises:
        SerializationError: an unknown format, or a value that is not a dict for an SDK type.
        MissingDependencyError: the format needs the ``openai`` package.
    """
    if fmt is None or fmt == FORMAT_JSON:
        return value
    cls = _sdk_class(fmt)
    if not isinstance(value, Mapping):
        raise SerializationError(f"a stored {fmt} must be a JSON object")
    # construct() is how the SDK itself builds responses (no strict validation), so
    # the rebuilt object equals a fresh one even for fields newer than this SDK
    return cls.construct(**dict(value))


def item_to_storable(item: Any) -> tuple[Any, str]:
    """Storable form of one stream item (an SDK chunk, a string or any JSON value)."""
    return to_storable(item)


def items_to_storable(items: Iterable[Any]) -> tuple[list[Any], str]:
    """Storable form of a recorded stream: ``(list_of_json_items, format_of_the_items)``.

    Raises:
        SerializationError: the items are of mixed formats.
    """
    out: list[Any] = []
    fmt: str | None = None
    for item in items:
        v, f = to_storable(item)
        if fmt is not None and f != fmt:
            raise SerializationError(f"a stream mixes {fmt} and {f} items")
        fmt = f
        out.append(v)
    return out, fmt or FORMAT_JSON


def item_from_storable(value: Any, fmt: str | None) -> Any:
    """Rebuild one stored stream item."""
    return from_storable(value, fmt)


def _as_wire(value: Any) -> Any:
    return _dump(value) if is_openai_object(value) else value


def _wire_format(value: Any) -> str | None:
    """The format a wire dict declares through its ``object`` field."""
    if isinstance(value, Mapping):
        return _OBJECT_FIELD.get(str(value.get("object")))
    return None


def usage_of(value: Any) -> dict[str, int] | None:
    """Token usage a response carries (a completion, a dict, or a list of stream chunks)."""
    if isinstance(value, (list, tuple)):
        # in a stream, usage rides on the last chunk (stream_options.include_usage)
        for item in reversed(value):
            u = usage_of(item)
            if u is not None:
                return u
        return None
    wire = _as_wire(value)
    if not isinstance(wire, Mapping):
        return None
    usage = wire.get("usage")
    if not isinstance(usage, Mapping):
        return None
    out = {k: usage[k] for k in _USAGE_FIELDS if isinstance(usage.get(k), int) and not isinstance(usage.get(k), bool)}
    if not out:
        return None
    if "total_tokens" not in out and {"prompt_tokens", "completion_tokens"} <= out.keys():
        out["total_tokens"] = out["prompt_tokens"] + out["completion_tokens"]
    return out


def model_of(value: Any) -> str | None:
    """The ``model`` a response (or the first chunk of a stream) names."""
    if isinstance(value, (list, tuple)):
        return next((m for m in (model_of(v) for v in value) if m), None)
    wire = _as_wire(value)
    if isinstance(wire, Mapping) and isinstance(wire.get("model"), str):
        return str(wire["model"])
    return None


def _merge_tool_calls(into: list[dict[str, Any]], deltas: Sequence[Mapping[str, Any]]) -> None:
    for d in deltas:
        idx = d.get("index", len(into))
        while len(into) <= idx:
            into.append({"id": None, "type": "function", "function": {"name": "", "arguments": ""}})
        call = into[idx]
        if d.get("id"):
            call["id"] = d["id"]
        if d.get("type"):
            call["type"] = d["type"]
        fn = d.get("function") or {}
        if fn.get("name"):
            call["function"]["name"] += fn["name"]
        if fn.get("arguments"):
            call["function"]["arguments"] += fn["arguments"]


def chunks_to_completion(chunks: Iterable[Any]) -> dict[str, Any]:
    """Assemble ``chat.completion.chunk`` items (dicts or SDK chunks) into one ``chat.completion`` dict."""
    out: dict[str, Any] = {"object": "chat.completion", "choices": []}
    by_index: dict[int, dict[str, Any]] = {}
    for raw in chunks:
        chunk = _as_wire(raw)
        if not isinstance(chunk, Mapping):
            raise SerializationError("a chat completion stream must hold chunk objects")
        for field in ("id", "created", "model", "system_fingerprint", "service_tier"):
            if chunk.get(field) is not None and field not in out:
                out[field] = chunk[field]
        if chunk.get("usage"):
            out["usage"] = chunk["usage"]
        for ch in chunk.get("choices") or ():
            idx = int(ch.get("index", 0))
            acc = by_index.setdefault(
                idx, {
                    "index": idx,
                    "message": {"role": "assistant", "content": None, "refusal": None},
                    "finish_reason": None,
                    "logprobs": None,
                }
            )
            msg = acc["message"]
            delta = ch.get("delta") or {}
            if delta.get("role"):
                msg["role"] = delta["role"]
            for text_field in ("content", "refusal"):
                if delta.get(text_field) is not None:
                    msg[text_field] = (msg.get(text_field) or "") + delta[text_field]
            if delta.get("tool_calls"):
                _merge_tool_calls(msg.setdefault("tool_calls", []), delta["tool_calls"])
            if delta.get("function_call"):
                fc = msg.setdefault("function_call", {"name": "", "arguments": ""})
                fc["name"] += delta["function_call"].get("name") or ""
                fc["arguments"] += delta["function_call"].get("arguments") or ""
            if ch.get("finish_reason"):
                acc["finish_reason"] = ch["finish_reason"]
            lp = ch.get("logprobs")
            if lp:
                acc_lp = acc["logprobs"] or {"content": [], "refusal": None}
                acc_lp["content"] = (acc_lp.get("content") or []) + list(lp.get("content") or [])
                acc["logprobs"] = acc_lp
    out["choices"] = [by_index[i] for i in sorted(by_index)]
    return out


def completion_to_chunks(completion: Any, *, include_usage: bool = True) -> list[dict[str, Any]]:
    """Replay a ``chat.completion`` (dict or SDK object) as ``chat.completion.chunk`` dicts.

    Each choice becomes one chunk carrying the whole message as its delta; the usage,
    if any, follows in a last chunk with no choices, as the API sends it. With
    ``include_usage=False`` that last chunk is left out, as the API does for a request
    without ``stream_options.include_usage`` (clients may index ``choices[0]``).
    """
    wire = _as_wire(completion)
    if not isinstance(wire, Mapping):
        raise SerializationError("completion_to_chunks needs a chat.completion object")
    head = {k: wire[k] for k in ("id", "created", "model", "system_fingerprint", "service_tier") if k in wire}
    chunks: list[dict[str, Any]] = []
    for ch in wire.get("choices") or ():
        msg = dict(ch.get("message") or {})
        delta: dict[str, Any] = {"role": msg.get("role", "assistant"), "content": msg.get("content")}
        if msg.get("refusal") is not None:
            delta["refusal"] = msg["refusal"]
        if msg.get("tool_calls"):
            delta["tool_calls"] = [dict(tc, index=i) for i, tc in enumerate(msg["tool_calls"])]
        if msg.get("function_call"):
            delta["function_call"] = msg["function_call"]
        chunks.append(
            {
                **head,
                "object": "chat.completion.chunk",
                "choices": [
                    {
                        "index": ch.get("index", 0),
                        "delta": delta,
                        "finish_reason": ch.get("finish_reason"),
                        "logprobs": ch.get("logprobs"),
                    }
                ],
            }
        )
    if include_usage and wire.get("usage"):
        chunks.append({**head, "object": "chat.completion.chunk", "choices": [], "usage": wire["usage"]})
    return chunks


def sse_events(chunks: Iterable[Any]) -> Iterator[bytes]:
    """Server-sent events for a stream of chunks, ending with ``data: [DONE]``."""
    for c in chunks:
        yield b"data: " + json.dumps(_as_wire(c), separators=(",", ":")).encode("utf-8") + b"\n\n"
    yield b"data: [DONE]\n\n"


def _completion_reason(wire: Mapping[str, Any]) -> str | None:
    choices = wire.get("choices")
    if not isinstance(choices, Sequence) or not choices:
        return "empty"
    if any(isinstance(c, Mapping) and c.get("finish_reason") == "content_filter" for c in choices):
        return "content_filter"
    for c in choices:
        if not isinstance(c, Mapping):
            continue
        if "message" in c:
            msg = c.get("message")
            if not isinstance(msg, Mapping):
                continue  # not a message object: nothing here that could be replayed
            content = msg.get("content")
            if (content.strip() if isinstance(content, str) else content) or any(
                msg.get(k) for k in ("tool_calls", "function_call", "audio", "refusal")
            ):
                return None
        elif (c.get("text") or "").strip():  # a legacy text completion
            return None
    return "empty"


def answer_text(value: Any, *, stream: bool = False) -> str:
    """The text of an answer, to compare it with another answer to the same request.

    A chat completion (dict or SDK object): its first choice's message content, or,
    when it has none, its tool calls, function call or refusal as JSON; a completion:
    its first choice's text; a recorded stream (``stream=True``: the list of items) of
    chat chunks: the assembled completion's; a stream of strings: joined; text: as is;
    bytes: decoded (UTF-8, bad bytes replaced); anything else: its canonical JSON (or
    ``str``).
    """
    if stream:
        items = [_as_wire(v) for v in value]
        if items and all(_wire_format(i) == FORMAT_CHAT_CHUNK for i in items):
            return answer_text(chunks_to_completion(items))
        if all(isinstance(i, (str, bytes)) for i in items):
            return "".join(i if isinstance(i, str) else i.decode("utf-8", "replace") for i in items)
        value = items
    if isinstance(value, str):
        return value
    if isinstance(value, (bytes, bytearray)):
        return bytes(value).decode("utf-8", "replace")
    wire = _as_wire(value)
    choices = wire.get("choices") if isinstance(wire, Mapping) else None
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        first = choices[0]
        message = first.get("message")
        if isinstance(message, Mapping):
            content = message.get("content")
            if isinstance(content, str) and content.strip():
                return content
            rest = {k: message[k] for k in ("tool_calls", "function_call", "refusal") if message.get(k)}
            if rest:
                return _json_text(rest)
        elif isinstance(first.get("text"), str):
            return str(first["text"])
    return _json_text(wire)


def _json_text(value: Any) -> str:
    try:
        return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    except (TypeError, ValueError):
        return str(value)


def uncacheable_reason(value: Any, *, stream: bool = False) -> str | None:
    """Why a response should not be cached, or ``None`` when it may be.

    ``"error"``: a dict carrying an ``error``. ``"content_filter"``: a choice stopped by
    the content filter. ``"empty"``: ``None``, a blank string, an empty stream, or a
    completion whose choices hold no content, tool call or refusal. ``"malformed"``: a
    response shaped like a completion (or stream) that cannot be read as one. With
    ``stream=True`` ``value`` is the list of recorded items. Never raises on odd input.
    """
    try:
        return _uncacheable_reason(value, stream=stream)
    except (SerializationError, AttributeError, TypeError, ValueError, LookupError):
        # an answer this check cannot even read would not replay either: never cache it
        return "malformed"


def _uncacheable_reason(value: Any, *, stream: bool) -> str | None:
    if stream:
        items = [_as_wire(v) for v in value]
        if not items:
            return "empty"
        if all(_wire_format(i) == FORMAT_CHAT_CHUNK for i in items):
            return _completion_reason(chunks_to_completion(items))
        if any(isinstance(i, Mapping) and i.get("error") for i in items):
            return "error"
        if all(isinstance(i, (str, bytes)) for i in items) and not "".join(
            i if isinstance(i, str) else i.decode("utf-8", "replace") for i in items
        ).strip():
            return "empty"
        return None
    if value is None:
        return "empty"
    if isinstance(value, (str, bytes)):
        return None if value.strip() else "empty"
    wire = _as_wire(value)
    if isinstance(wire, Mapping):
        if wire.get("error"):
            return "error"
        if _wire_format(wire) == FORMAT_CHAT_CHUNK:
            return _completion_reason(chunks_to_completion([wire]))
        if _wire_format(wire) is not None or "choices" in wire:
            return _completion_reason(wire)
    return None
