"""Request and response bodies of the sidecar's JSON API (they make its OpenAPI document)."""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)
from typing_extensions import Self

__all__ = [
    "ChatCompletion",
    "ChatCompletionBody",
    "ChatMessage",
    "ContentPart",
    "EntryList",
    "EntryView",
    "ErrorBody",
    "ErrorDetail",
    "ExplainCandidate",
    "ExplainRequest",
    "ExplainResponse",
    "FeedbackRequest",
    "FeedbackResponse",
    "FlushResponse",
    "GuardCheck",
    "HealthResponse",
    "IndexCheckResponse",
    "IndexRebuildResponse",
    "InvalidateRequest",
    "InvalidateResponse",
    "LookupRequest",
    "LookupResponse",
    "MediaPart",
    "Message",
    "JSON_TEXT_SCHEMA",
    "ModelInfo",
    "ModelList",
    "NO_NUL_PATTERN",
    "OtherMessage",
    "ReadyResponse",
    "StatsResponse",
    "StoreRequest",
    "StoreResponse",
    "TEXT_PATTERN",
    "TextPart",
    "UserMessage",
    "ValidationIssue",
    "check_text",
]

#: Longest TTL accepted (100 years): larger values overflow some tiers' expiry arithmetic.
MAX_TTL_SECONDS = 100 * 365 * 24 * 3600.0
_MAX_TAGS = 64


def check_text(value: Any, depth: int = 0) -> None:
    """Reject values that cannot be re-encoded anywhere in a JSON value.

    JSON allows ``"\\ud800"``; Python decodes it to a string that no hash, database or
    socket can encode, so it is refused up front with a 422 instead of failing later.
    Python's JSON parser also accepts ``NaN`` and ``Infinity``, which strict JSON (the
    key hash, the upstream request, the stored entry) cannot carry: refused the same way.

    Raises:
        ValueError: a lone surrogate, a non-finite number, or nesting deeper than 64 levels.
    """
    if depth > 64:
        raise ValueError("the JSON value is nested too deeply (more than 64 levels)")
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError("strings must be valid Unicode (no lone surrogates)") from exc
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("numbers must be finite (no NaN or Infinity)")
    elif isinstance(value, dict):
        for k, v in value.items():
            check_text(k, depth + 1)
            check_text(v, depth + 1)
    elif isinstance(value, list):
        for v in value:
            check_text(v, depth + 1)


class _Body(BaseModel):
    # strict: a JSON value of another type is a 422 (as the schema says), never coerced
    model_config = ConfigDict(extra="forbid", strict=True)

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        check_text(data)
        return data


def _space_class() -> str:
    """The characters ``str.strip()`` removes, as the body of a regex character class
    (``\\uXXXX`` escapes, which Python's ``re``, Rust's ``regex`` and ECMA-262 all read)."""
    spaces = [c for c in range(0x3001) if chr(c).isspace()]
    ranges: list[tuple[int, int]] = []
    for c in spaces:
        if ranges and ranges[-1][1] == c - 1:
            ranges[-1] = (ranges[-1][0], c)
        else:
            ranges.append((c, c))
    return "".join(
        f"\\u{a:04x}" if a == b else f"\\u{a:04x}-\\u{b:04x}" for a, b in ranges
    )


#: Text every tier can store: no NUL character.
NO_NUL_PATTERN = r"^[^\u0000]*$"
#: Text to match on: no NUL character, and something left once trimmed.
TEXT_PATTERN = rf"^[^\u0000]*[^\u0000{_space_class()}][^\u0000]*$"
_MAX_NAME = 255

#: A prompt (or the text of a user turn): not blank, no NUL.
PromptText = Annotated[str, Field(min_length=1, pattern=TEXT_PATTERN)]
#: A model name or namespace: at most 255 characters, no NUL.
Name = Annotated[str, Field(max_length=_MAX_NAME, pattern=NO_NUL_PATTERN)]
#: A tag: 1 to 255 characters, no NUL.
Tag = Annotated[str, Field(min_length=1, max_length=_MAX_NAME, pattern=NO_NUL_PATTERN)]
_NoNul = Annotated[str, Field(pattern=NO_NUL_PATTERN)]

#: A JSON value whose strings (object keys included) hold no NUL: what metadata may carry.
#: No ``type``: each keyword applies to the values of its own type, at any depth.
JSON_TEXT_SCHEMA: dict[str, Any] = {
    "description": "Any JSON value; its strings and object keys hold no NUL, at any depth.",
    "pattern": NO_NUL_PATTERN,
    "items": {"$ref": "#/components/schemas/JsonText"},
    "propertyNames": {"pattern": NO_NUL_PATTERN},
    "additionalProperties": {"$ref": "#/components/schemas/JsonText"},
}


def _no_nul_strings(value: Any) -> Any:
    problem = _nul_in(value)
    if problem is not None:
        raise ValueError(f"strings may not hold a NUL character ({problem})")
    return value


def _nul_in(value: Any, path: str = "") -> str | None:
    stack: list[tuple[Any, str]] = [(value, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, str):
            if "\x00" in node:
                return where or "the value"
        elif isinstance(node, dict):
            for k, v in node.items():
                if isinstance(k, str) and "\x00" in k:
                    return f"a key of {where or 'the object'}"
                stack.append((v, f"{where}.{k}"))
        elif isinstance(node, list):
            stack.extend((v, f"{where}[{i}]") for i, v in enumerate(node))
    return None


#: Metadata: a JSON object whose strings and keys hold no NUL.
Metadata = Annotated[
    dict[str, Any],
    AfterValidator(_no_nul_strings),
    WithJsonSchema(
        {
            "type": "object",
            "propertyNames": {"pattern": NO_NUL_PATTERN},
            "additionalProperties": {"$ref": "#/components/schemas/JsonText"},
        }
    ),
]


class Message(BaseModel):
    """One OpenAI-style chat message, as the proxy forwards it; fields beyond ``role`` and
    ``content`` are kept (they are scope)."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


class TextPart(BaseModel):
    """A text part of a message's content."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["text"]
    text: _NoNul


class MediaPart(BaseModel):
    """A part of a message's content that is not text (an image, audio, a file, a refusal):
    scope, never matched on."""

    model_config = ConfigDict(extra="allow", strict=True)

    type: Literal["image_url", "input_audio", "file", "refusal"]


ContentPart = Annotated[TextPart | MediaPart, Field(discriminator="type")]

#: A user turn's content holds text: a non-blank string, or parts with a non-blank text part.
_TEXT_PARTS_RULE: dict[str, Any] = {
    "contains": {
        "type": "object",
        "properties": {"type": {"const": "text"}, "text": {"type": "string", "pattern": TEXT_PATTERN}},
        "required": ["type", "text"],
    }
}
_TEXT_RE = re.compile(TEXT_PATTERN)


class UserMessage(BaseModel):
    """A user turn: its content holds text to match on (the last user turn's text is
    matched; every user turn must have some)."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["user"]
    content: PromptText | Annotated[
        list[ContentPart], Field(min_length=1, json_schema_extra=_TEXT_PARTS_RULE)
    ] = Field(
        ...,
        description=(
            "A non-blank string, or content parts of which at least one is a text part "
            "with non-blank text."
        ),
    )

    @field_validator("content")
    @classmethod
    def _has_text(cls, value: Any) -> Any:
        if isinstance(value, list) and not any(
            isinstance(p, TextPart) and _TEXT_RE.search(p.text) for p in value
        ):
            raise ValueError("a user turn needs a text part with non-blank text")
        return value


class OtherMessage(BaseModel):
    """A system, developer, assistant, tool or function turn (scope, never matched on)."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "assistant", "tool", "function"]
    content: str | list[ContentPart] | None = None


ChatMessage = Annotated[UserMessage | OtherMessage, Field(discriminator="role")]

#: ``prompt`` and ``messages``: exactly one of them is given (not null).
_EXACTLY_ONE_PROMPT: dict[str, Any] = {
    "not": {
        "anyOf": [
            {
                "required": ["prompt", "messages"],
                "properties": {"prompt": {"type": "string"}, "messages": {"type": "array"}},
            },
            {"properties": {"prompt": {"type": "null"}, "messages": {"type": "null"}}},
        ]
    }
}
#: ``messages`` holds at least one user turn.
_HAS_USER_TURN: dict[str, Any] = {
    "contains": {
        "type": "object",
        "properties": {"role": {"const": "user"}},
        "required": ["role"],
    }
}


def _dump_messages(messages: list[Any] | None) -> list[dict[str, Any]] | None:
    return None if messages is None else [m.model_dump(exclude_unset=True) for m in messages]


def _check_user_turn(messages: list[Any] | None) -> None:
    if messages is not None and not any(isinstance(m, UserMessage) for m in messages):
        raise ValueError("`messages` must hold at least one user turn")


class _Scoped(_Body):
    """What a lookup, a store and an explain share: the prompt and the scope fields.

    Exactly one of ``prompt`` and ``messages`` is given (a null is the same as leaving
    it out); a body with both or neither is a 422.
    """

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_EXACTLY_ONE_PROMPT)

    prompt: PromptText | None = Field(
        None,
        description="The prompt text (not blank, no NUL). Exactly one of `prompt` and `messages`.",
    )
    messages: Annotated[list[ChatMessage], Field(min_length=1, json_schema_extra=_HAS_USER_TURN)] | None = Field(
        None,
        description=(
            "OpenAI-style chat messages, at least one of them a user turn; the last user turn "
            "is matched. Exactly one of `prompt` and `messages`."
        ),
    )
    model: Name | None = Field(None, description="Scope: the model name (must match exactly).")
    params: dict[str, Any] | None = Field(
        None, description="Scope: generation params that change the output."
    )
    namespace: Name | None = Field(
        None,
        description="Scope: the tenant. Tenant tokens are confined to their own; admin may name any.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> Self:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        _check_user_turn(self.messages)
        return self

    def message_dicts(self) -> list[dict[str, Any]] | None:
        """The messages as plain dicts (what the key rules hash)."""
        return _dump_messages(self.messages)


class LookupRequest(_Scoped):
    """Look a prompt up: exact first, then semantic within its scope."""

    threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="Cosine similarity for this call."
    )
    semantic: bool = Field(True, description="False for an exact-only lookup.")
    include_value: bool = Field(True, description="Return the cached value on a hit.")


def _integral(value: Any) -> Any:
    """``5.0`` as ``5``: JSON Schema's ``integer`` is any number without a fraction."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


class ExplainRequest(_Scoped):
    """Explain the decision for a prompt: nearest candidates, checks, decision."""

    threshold: float | None = Field(None, ge=-1.0, le=1.0)
    k: Annotated[int, BeforeValidator(_integral)] = Field(
        5, ge=1, le=50, description="How many nearest candidates to show."
    )


class StoreRequest(_Scoped):
    """Store a response for a prompt."""

    value: Any = Field(..., description="The response: any JSON value.")
    ttl_seconds: float | None = Field(
        None,
        gt=0,
        le=MAX_TTL_SECONDS,
        description="Seconds to live; null never expires; omitted: the default.",
    )
    tags: list[Tag] = Field(
        default_factory=list, max_length=_MAX_TAGS, description="Labels (1 to 255 characters, no NUL)."
    )
    metadata: Metadata | None = Field(
        None,
        description="Extras (JSON; no NUL in its strings); `usage` and `cost` feed the savings counters.",
    )


#: The criteria of an invalidation: at least one is named (``dry_run`` and ``params`` are not criteria).
_CRITERIA = (
    "entry_id",
    "prompt",
    "messages",
    "scope",
    "namespace",
    "model",
    "tag",
    "older_than_seconds",
    "prompt_pattern",
)
_INVALIDATE_RULES: dict[str, Any] = {
    "not": {
        "anyOf": [
            # both `prompt` and `messages`
            {
                "required": ["prompt", "messages"],
                "properties": {"prompt": {"type": "string"}, "messages": {"type": "array"}},
            },
            # no criterion at all
            {
                "properties": {
                    "keys": {"maxItems": 0},
                    **{name: {"type": "null"} for name in _CRITERIA},
                }
            },
        ]
    }
}


class InvalidateRequest(_Body):
    """What to remove; criteria combine with AND, and at least one is named (`keys`
    non-empty, or any other field but `params` and `dry_run` not null). `prompt` and
    `messages` are alternatives: at most one of them. A tenant is always confined to its
    own entries."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=_INVALIDATE_RULES)

    entry_id: str | None = Field(None, description="One entry id (its exact key).", min_length=1)
    keys: list[str] = Field(
        default_factory=list, max_length=10_000, description="Entry ids (exact keys)."
    )
    prompt: PromptText | None = Field(
        None,
        description="The entry stored for this exact prompt (with the scope fields).",
    )
    messages: Annotated[list[ChatMessage], Field(min_length=1, json_schema_extra=_HAS_USER_TURN)] | None = Field(
        None, description="The entry stored for these messages (with the scope fields)."
    )
    params: dict[str, Any] | None = Field(None, description="Scope of `prompt` or `messages`.")
    scope: str | None = Field(None, description="A scope hash.")
    namespace: Name | None = None
    model: Name | None = None
    tag: str | None = None
    older_than_seconds: float | None = Field(None, ge=0, le=1e12)
    prompt_pattern: str | None = Field(
        None, description="A glob (fnmatch) over the stored prompt.", min_length=1
    )
    dry_run: bool = Field(False, description="Only count what would be removed.")

    @model_validator(mode="after")
    def _criteria(self) -> Self:
        if self.prompt is not None and self.messages is not None:
            raise ValueError("give at most one of `prompt` or `messages`")
        _check_user_turn(self.messages)
        if not self.keys and all(getattr(self, name) is None for name in _CRITERIA):
            raise ValueError("name at least one criterion (or use /v1/flush)")
        return self

    def message_dicts(self) -> list[dict[str, Any]] | None:
        """The messages as plain dicts (what the key rules hash)."""
        return _dump_messages(self.messages)


class FeedbackRequest(_Scoped):
    """A report on a hit: the entry that answered and the request it answered (the
    prompt or messages and the scope fields of the lookup)."""

    entry_id: str = Field(
        ..., min_length=1, max_length=256, description="The id of the entry that answered."
    )
    correct: bool = Field(
        ...,
        description=(
            "false: a wrong answer. On a semantic hit the request is never answered by this "
            "entry again (every replica); on an exact hit the entry is invalidated."
        ),
    )
    source: Literal["user", "llm"] = Field("user", description="Who judged the hit.")


class FeedbackResponse(BaseModel):
    """What the report did."""

    label_id: str
    verdict: Literal["wrong", "correct"]
    kind: Literal["exact", "semantic"]
    entry_id: str
    request_key: str = Field(..., description="The exact key of the request that was answered.")
    similarity: float | None = None
    verifier_score: float | None = None
    blocked: bool = Field(..., description="The pairing is never served again.")
    invalidated: int = Field(..., description="Entries removed (a wrong exact hit).")
    stored_in: Literal["l3", "l2", "handoff", "memory", "process"]
    durable: bool


class LookupResponse(BaseModel):
    """A hit (how it was served) or a miss."""

    hit: bool
    key: str = Field(..., description="The exact key of the request (the id a store would use).")
    kind: Literal["exact", "semantic"] | None = None
    tier: Literal["l1", "l2", "l3"] | None = None
    similarity: float | None = None
    verifier_score: float | None = Field(
        None, description="The pair verifier's score of a semantic hit (null: exact, or no verifier)."
    )
    entry_id: str | None = None
    matched_prompt: str | None = None
    age_seconds: float | None = None
    ttl_seconds_left: float | None = None
    tags: list[str] | None = None
    value: Any = None
    value_base64: str | None = Field(None, description="The value, when it is bytes.")


class StoreResponse(BaseModel):
    """The stored entry's id and expiry."""

    entry_id: str
    scope: str
    namespace: str | None = None
    created_at: float
    expires_at: float | None = None


class EntryView(BaseModel):
    """One entry (the value only when asked for it)."""

    entry_id: str
    prompt: str
    scope: str
    namespace: str | None = None
    model: str | None = None
    tags: list[str] = []
    created_at: float
    expires_at: float | None = None
    age_seconds: float
    ttl_seconds_left: float | None = None
    metadata: dict[str, Any] = {}
    embedder: str | None = None
    value: Any = None
    value_base64: str | None = None


class EntryList(BaseModel):
    """A page of entries, newest first."""

    entries: list[EntryView]
    limit: int
    offset: int


class InvalidateResponse(BaseModel):
    """How many entries were removed (or, for a dry run, matched)."""

    removed: int = 0
    matched: int | None = None
    dry_run: bool = False


class FlushResponse(BaseModel):
    """How many entries a flush removed."""

    removed: int


class HealthResponse(BaseModel):
    """Liveness."""

    status: Literal["ok"]


class ReadyResponse(BaseModel):
    """Readiness: each tier's state (``ok``, ``down`` or ``failed``), the tiers that are not
    ``ok``, and for a 503 the reason (the durable tier and its state)."""

    status: Literal["ready", "degraded", "starting", "down"]
    tiers: dict[str, Literal["ok", "down", "failed"]]
    degraded: list[str] = Field(default_factory=list)
    reason: str | None = None
    index: dict[str, Any] | None = None
    embedder: str | None = None


class ValidationIssue(BaseModel):
    """One problem with a request (a 422 lists them all)."""

    loc: list[str] = Field(..., description="Where: `body`, then the field path.")
    msg: str
    type: str


class ErrorDetail(BaseModel):
    """The ``error`` object of an error body. The sidecar's own errors carry ``message``,
    ``type`` and ``code`` (the HTTP status); an upstream's error is passed through as the
    upstream wrote it (``code`` may then be a string, and other fields may be there)."""

    model_config = ConfigDict(extra="allow")

    message: str
    type: str | None = None
    code: int | str | None = None
    param: str | None = None
    details: list[ValidationIssue] | None = Field(
        None, description="Every validation problem (422 only)."
    )


class ErrorBody(BaseModel):
    """An error, in the OpenAI error shape: ``{"error": {"message", "type", "code"}}``."""

    model_config = ConfigDict(extra="allow")

    error: ErrorDetail


class GuardCheck(BaseModel):
    """One guard's verdict on a candidate."""

    name: str
    passed: bool
    detail: str = ""


class ExplainCandidate(BaseModel):
    """A nearest entry, with its similarity, its checks and what a lookup decided about it."""

    model_config = ConfigDict(extra="allow")

    entry_id: str
    similarity: float
    prompt: str | None = Field(None, description="null: the entry expired or was deleted.")
    passed_threshold: bool
    guards: list[GuardCheck] = Field(default_factory=list)
    verifier_score: float | None = None
    verifier_threshold: float | None = None
    decision: str = Field(..., description="`hit`, `below threshold`, `rejected by guard ...`, ...")


class ExplainResponse(BaseModel):
    """How a lookup would decide: the exact key, the candidates, the decision."""

    model_config = ConfigDict(extra="allow")

    key: str = Field(..., description="The exact key (the entry id an exact hit has).")
    scope: str
    threshold: float
    verifier: str | None = None
    max_false_hit_rate: float | None = None
    verifier_threshold: float | None = None
    similarity_floor: float | None = None
    candidates: list[ExplainCandidate]
    decision: Literal["hit", "miss"]
    kind: Literal["exact", "semantic"] | None = None
    entry_id: str | None = None
    similarity: float | None = None
    verifier_score: float | None = None
    reason: str | None = Field(None, description="Why a miss is a miss, when it is not a candidate's doing.")


class StatsResponse(BaseModel):
    """The cache's counters since it opened (more fields may be present); with
    ``namespace`` set, one namespace's (a tenant token's own, or the admin's
    ``?namespace=``), with no tier, index or embedder fields."""

    model_config = ConfigDict(extra="allow")

    namespace: str | None = Field(None, description="Set when the counters are one namespace's.")
    tracked: bool | None = Field(
        None, description="One namespace: false past the tracked-namespace limit (all zeros then)."
    )
    lookups: int | None = None
    hit_rate: float | None = None

    hits: int
    misses: int
    sets: int
    hits_by: dict[str, int] = Field(default_factory=dict, description="Hits by `tier:kind`.")
    embeddings: int | None = None
    invalidated: int | None = None
    saved_tokens: int | None = None
    saved_cost_usd: float | None = None
    saved_calls: int | None = None
    tiers: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Each tier's own counters.")
    tier_errors: dict[str, int] = Field(default_factory=dict)
    index: dict[str, Any] | None = Field(None, description="The index's size (null: no index).")
    embedder: str | None = None
    feedback: dict[str, Any] | None = None
    audits: dict[str, Any] | None = None


class IndexRebuildResponse(BaseModel):
    """How many vectors the rebuilt index holds."""

    vectors: int


class IndexCheckResponse(BaseModel):
    """The index compared with L3 (only ``semantic`` without an index; without L3 no L3 counts)."""

    model_config = ConfigDict(extra="allow")

    semantic: bool
    embedder: str | None = None
    index: int | None = Field(None, description="Vectors in the index.")
    l3: int | None = None
    l3_embedded: int | None = None
    missing_from_index: int | None = None
    orphans_in_index: int | None = None
    l3_total_live: int | None = None
    consistent: bool | None = None


class ModelInfo(BaseModel):
    """A model, in the OpenAI shape."""

    model_config = ConfigDict(extra="allow")

    id: str
    object: str = "model"
    created: int | None = None
    owned_by: str | None = None


class ModelList(BaseModel):
    """The models: the upstream's list, or (cache-only) the models the cache holds entries for."""

    model_config = ConfigDict(extra="allow")

    object: str = "list"
    data: list[ModelInfo]


class ChatCompletion(BaseModel):
    """An OpenAI ``chat.completion`` (the upstream's fields are all kept)."""

    model_config = ConfigDict(extra="allow")

    id: str | None = None
    object: str | None = None
    created: int | None = None
    model: str | None = None
    choices: list[dict[str, Any]] = Field(default_factory=list)
    usage: dict[str, Any] | None = None


class ChatCompletionBody(BaseModel):
    """An OpenAI chat completion request; fields not listed are forwarded unchanged."""

    model_config = ConfigDict(extra="allow", strict=True)

    model: str = Field(..., min_length=1)
    messages: list[Message] = Field(..., min_length=1)
    stream: bool | None = False

    def message_dicts(self) -> list[dict[str, Any]]:
        """The messages as plain dicts, as the caller sent them."""
        return [m.model_dump(exclude_unset=True) for m in self.messages]

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        check_text(data)
        return data
