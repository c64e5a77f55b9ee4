"""OpenAI SDK objects <-> storable JSON, stream assembly, uncacheable responses, usage."""

from __future__ import annotations

import copy
import json

import pytest

from semcache import openai_compat as oc
from semcache.errors import SerializationError

openai = pytest.importorskip("openai")
from openai.types import Completion
from openai.types.chat import ChatCompletion, ChatCompletionChunk

COMPLETION = {
    "id": "chatcmpl-1",
    "object": "chat.completion",
    "created": 1_700_000_000,
    "model": "gpt-test",
    "system_fingerprint": None,
    "choices": [
        {
            "index": 0,
            "message": {"role": "assistant", "content": "Paris.", "refusal": None},
            "finish_reason": "stop",
            "logprobs": None,
        }
    ],
    "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11},
    "some_future_field": {"x": 1},
}


def chunk(content: str | None = None, *, role: str | None = None, finish: str | None = None) -> dict:
    delta: dict = {}
    if role:
        delta["role"] = role
    if content is not None:
        delta["content"] = content
    return {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1_700_000_000,
        "model": "gpt-test",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }


def test_chat_completion_round_trips_to_the_same_type() -> None:
    fresh = ChatCompletion.construct(**copy.deepcopy(COMPLETION))
    value, fmt = oc.to_storable(fresh)
    assert fmt == oc.FORMAT_CHAT_COMPLETION
    json.dumps(value)  # storable
    assert value == COMPLETION  # exactly the wire form, unknown fields included
    back = oc.from_storable(json.loads(json.dumps(value)), fmt)
    assert type(back) is ChatCompletion
    assert back == fresh
    assert back.choices[0].message.content == "Paris."


def test_chunks_and_legacy_completions_round_trip() -> None:
    c = ChatCompletionChunk.construct(**chunk("Hi", role="assistant"))
    value, fmt = oc.to_storable(c)
    assert fmt == oc.FORMAT_CHAT_CHUNK and oc.from_storable(value, fmt) == c
    legacy = Completion.construct(
        id="c", object="text_completion", created=1, model="m", choices=[{"index": 0, "text": "x", "finish_reason": "stop"}]
    )
    value, fmt = oc.to_storable(legacy)
    assert fmt == oc.FORMAT_COMPLETION and type(oc.from_storable(value, fmt)) is Completion


def test_plain_values_pass_through() -> None:
    for v in ("text", {"a": [1, 2]}, [1, "x"], 3, None):
        assert oc.to_storable(v) == (v, oc.FORMAT_JSON)
        assert oc.from_storable(v, oc.FORMAT_JSON) == v
    assert oc.from_storable({"a": 1}, None) == {"a": 1}


def test_unknown_format_is_refused() -> None:
    with pytest.raises(SerializationError):
        oc.from_storable({}, "os.system")


def test_items_to_storable() -> None:
    items = [ChatCompletionChunk.construct(**chunk("a", role="assistant")), ChatCompletionChunk.construct(**chunk("b"))]
    values, fmt = oc.items_to_storable(items)
    assert fmt == oc.FORMAT_CHAT_CHUNK and [oc.item_from_storable(v, fmt) for v in values] == items
    assert oc.items_to_storable(["a", "b"]) == (["a", "b"], oc.FORMAT_JSON)
    with pytest.raises(SerializationError):
        oc.items_to_storable([items[0], "text"])


def test_chunks_assemble_into_a_completion_and_back() -> None:
    chunks = [chunk("", role="assistant"), chunk("Par"), chunk("is."), chunk(finish="stop")]
    usage_chunk = dict(chunk(), choices=[], usage={"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11})
    done = oc.chunks_to_completion(chunks + [usage_chunk])
    assert done["object"] == "chat.completion"
    assert done["choices"][0]["message"]["content"] == "Paris."
    assert done["choices"][0]["finish_reason"] == "stop"
    assert done["usage"]["total_tokens"] == 11
    ChatCompletion.model_validate(done)  # a valid completion
    again = oc.chunks_to_completion(oc.completion_to_chunks(done))
    assert again["choices"] == done["choices"] and again["usage"] == done["usage"]
    for c in oc.completion_to_chunks(done):
        ChatCompletionChunk.model_validate(c)


def test_tool_call_deltas_are_merged() -> None:
    deltas = [
        {"index": 0, "id": "call_1", "type": "function", "function": {"name": "get_", "arguments": '{"ci'}},
        {"index": 0, "function": {"name": "weather", "arguments": 'ty":"Oslo"}'}},
    ]
    chunks = [dict(chunk(), choices=[{"index": 0, "delta": {"tool_calls": [d]}, "finish_reason": None}]) for d in deltas]
    chunks.append(chunk(finish="tool_calls"))
    msg = oc.chunks_to_completion(chunks)["choices"][0]["message"]
    assert msg["tool_calls"] == [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Oslo"}'}}
    ]
    assert oc.uncacheable_reason(chunks, stream=True) is None


def test_uncacheable_reasons() -> None:
    ok = ChatCompletion.construct(**copy.deepcopy(COMPLETION))
    assert oc.uncacheable_reason(ok) is None
    filtered = copy.deepcopy(COMPLETION)
    filtered["choices"][0]["finish_reason"] = "content_filter"
    assert oc.uncacheable_reason(filtered) == "content_filter"
    assert oc.uncacheable_reason(ChatCompletion.construct(**filtered)) == "content_filter"
    empty = copy.deepcopy(COMPLETION)
    empty["choices"][0]["message"]["content"] = "  "
    assert oc.uncacheable_reason(empty) == "empty"
    assert oc.uncacheable_reason(dict(COMPLETION, choices=[])) == "empty"
    assert oc.uncacheable_reason({"error": {"message": "rate limited"}}) == "error"
    assert oc.uncacheable_reason(None) == "empty"
    assert oc.uncacheable_reason("   ") == "empty"
    assert oc.uncacheable_reason("fine") is None
    assert oc.uncacheable_reason({"answer": 1}) is None
    # streams
    assert oc.uncacheable_reason([], stream=True) == "empty"
    assert oc.uncacheable_reason(["", " "], stream=True) == "empty"
    assert oc.uncacheable_reason(["a"], stream=True) is None
    assert oc.uncacheable_reason([chunk("x", role="assistant"), chunk(finish="content_filter")], stream=True) == "content_filter"
    assert oc.uncacheable_reason([chunk("", role="assistant"), chunk(finish="stop")], stream=True) == "empty"


def test_uncacheable_reason_never_raises_on_odd_shapes() -> None:
    # what an upstream may send with a 200: none of it is replayable, none of it may raise
    assert oc.uncacheable_reason({"object": "chat.completion", "choices": [{"message": "hi"}]}) == "empty"
    assert oc.uncacheable_reason({"object": "chat.completion", "choices": ["x", 5]}) == "empty"
    odd_content = {"choices": [{"message": {"content": 5}, "finish_reason": "stop"}]}
    assert oc.uncacheable_reason(odd_content) is None
    assert oc.uncacheable_reason({"choices": [{"message": {"content": [1]}}]}) is None
    bad_chunk = {"object": "chat.completion.chunk", "choices": [{"index": "x", "delta": {}}]}
    assert oc.uncacheable_reason(bad_chunk) == "malformed"
    assert oc.uncacheable_reason([bad_chunk], stream=True) == "malformed"
    assert oc.uncacheable_reason(5, stream=True) == "malformed"


def test_completion_to_chunks_leaves_usage_out_when_asked() -> None:
    assert "usage" in oc.completion_to_chunks(COMPLETION)[-1]  # the default keeps it
    chunks = oc.completion_to_chunks(COMPLETION, include_usage=False)
    assert all(c["choices"] and "usage" not in c for c in chunks)


def test_usage_and_model() -> None:
    ok = ChatCompletion.construct(**copy.deepcopy(COMPLETION))
    assert oc.usage_of(ok) == {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}
    assert oc.usage_of({"usage": {"prompt_tokens": 1, "completion_tokens": 2}}) == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }
    assert oc.usage_of("text") is None and oc.usage_of({"usage": None}) is None
    stream = [chunk("a", role="assistant"), dict(chunk(), choices=[], usage=COMPLETION["usage"])]
    assert oc.usage_of(stream)["total_tokens"] == 11
    assert oc.model_of(ok) == "gpt-test" and oc.model_of(stream) == "gpt-test" and oc.model_of("x") is None


def test_sse_events() -> None:
    events = list(oc.sse_events([chunk("a"), chunk("b")]))
    assert events[-1] == b"data: [DONE]\n\n"
    assert json.loads(events[0][len(b"data: ") :]) == chunk("a")
