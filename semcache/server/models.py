"""Request and response bodies of the sidecar's JSON API (they make its OpenAPI document)."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = [
    "ChatCompletionBody",
    "EntryList",
    "EntryView",
    "ErrorBody",
    "ExplainRequest",
    "FeedbackRequest",
    "FeedbackResponse",
    "FlushResponse",
    "HealthResponse",
    "InvalidateRequest",
    "InvalidateResponse",
    "LookupRequest",
    "LookupResponse",
    "Message",
    "ReadyResponse",
    "StoreRequest",
    "StoreResponse",
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
    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _valid_unicode(cls, data: Any) -> Any:
        check_text(data)
        return data


class Message(BaseModel):
    """One OpenAI-style chat message; fields beyond ``role`` and ``content`` are kept (they are scope)."""

    model_config = ConfigDict(extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None


#: A body names exactly one of ``prompt`` and ``messages`` (checked by ``_one_of``, documented here).
_ONE_OF_PROMPT: dict[str, Any] = {"oneOf": [{"required": ["prompt"]}, {"required": ["messages"]}]}


class _Scoped(_Body):
    """What a lookup, a store and an explain share: the prompt and the scope fields."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_ONE_OF_PROMPT)

    prompt: str | None = Field(
        None, description="The prompt text (or give `messages`).", min_length=1
    )
    messages: list[Message] | None = Field(
        None, description="OpenAI-style chat messages; the last user turn is matched.", min_length=1
    )
    model: str | None = Field(None, description="Scope: the model name (must match exactly).")
    params: dict[str, Any] | None = Field(
        None, description="Scope: generation params that change the output."
    )
    namespace: str | None = Field(
        None,
        description="Scope: the tenant. Tenant tokens are confined to their own; admin may name any.",
    )

    @model_validator(mode="after")
    def _one_of(self) -> _Scoped:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of `prompt` or `messages`")
        return self

    def message_dicts(self) -> list[dict[str, Any]] | None:
        """The messages as plain dicts (what the key rules hash)."""
        return (
            None
            if self.messages is None
            else [m.model_dump(exclude_unset=True) for m in self.messages]
        )


class LookupRequest(_Scoped):
    """Look a prompt up: exact first, then semantic within its scope."""

    threshold: float | None = Field(
        None, ge=-1.0, le=1.0, description="Cosine similarity for this call."
    )
    semantic: bool = Field(True, description="False for an exact-only lookup.")
    include_value: bool = Field(True, description="Return the cached value on a hit.")


class ExplainRequest(_Scoped):
    """Explain the decision for a prompt: nearest candidates, checks, decision."""

    threshold: float | None = Field(None, ge=-1.0, le=1.0)
    k: int = Field(5, ge=1, le=50, description="How many nearest candidates to show.")


class StoreRequest(_Scoped):
    """Store a response for a prompt."""

    value: Any = Field(..., description="The response: any JSON value.")
    ttl_seconds: float | None = Field(
        None,
        gt=0,
        le=MAX_TTL_SECONDS,
        description="Seconds to live; null never expires; omitted: the default.",
    )
    tags: list[str] = Field(default_factory=list, max_length=_MAX_TAGS)
    metadata: dict[str, Any] | None = Field(
        None, description="Extras; `usage` and `cost` feed the savings counters."
    )


class InvalidateRequest(_Body):
    """What to remove; criteria combine with AND. A tenant is always confined to its own entries."""

    entry_id: str | None = Field(None, description="One entry id (its exact key).", min_length=1)
    keys: list[str] = Field(
        default_factory=list, max_length=10_000, description="Entry ids (exact keys)."
    )
    prompt: str | None = Field(
        None,
        min_length=1,
        description="The entry stored for this exact prompt (with the scope fields).",
    )
    messages: list[Message] | None = Field(None, min_length=1)
    params: dict[str, Any] | None = None
    scope: str | None = Field(None, description="A scope hash.")
    namespace: str | None = None
    model: str | None = None
    tag: str | None = None
    older_than_seconds: float | None = Field(None, ge=0, le=1e12)
    prompt_pattern: str | None = Field(
        None, description="A glob (fnmatch) over the stored prompt.", min_length=1
    )
    dry_run: bool = Field(False, description="Only count what would be removed.")

    def message_dicts(self) -> list[dict[str, Any]] | None:
        """The messages as plain dicts (what the key rules hash)."""
        return (
            None
            if self.messages is None
            else [m.model_dump(exclude_unset=True) for m in self.messages]
        )


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


class ErrorBody(BaseModel):
    """An error, in the OpenAI error shape: ``{"error": {"message", "type", "code"}}``."""

    error: dict[str, Any]


class ChatCompletionBody(BaseModel):
    """An OpenAI chat completion request; fields not listed are forwarded unchanged."""

    model_config = ConfigDict(extra="allow")

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
