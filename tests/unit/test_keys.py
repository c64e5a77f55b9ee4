"""Each scope/key rule of semcache.keys, one test per rule."""

from __future__ import annotations

import pytest

from semcache.errors import InvalidInputError
from semcache.keys import build_request, exact_key, normalize_prompt

SYSTEM = {"role": "system", "content": "You are terse."}


def chat(text, *, system=SYSTEM, earlier=(), **kw):
    msgs = ([system] if system else []) + list(earlier) + [{"role": "user", "content": text}]
    return build_request(messages=msgs, model=kw.pop("model", "gpt-4o"), params=kw or None)


def test_same_prompt_same_key():
    assert build_request("Hi there", model="m").key == build_request("Hi there", model="m").key


def test_surrounding_space_line_endings_and_canonical_unicode_normalised():
    assert build_request("  What is up?\n", model="m").key == build_request("What is up?", model="m").key
    assert normalize_prompt("line one  \r\nline two") == "line one\nline two"
    assert normalize_prompt("cafe\u0301") == normalize_prompt("caf\u00e9")  # NFC: canonical equivalence


def test_compatibility_forms_and_inner_whitespace_are_not_merged():
    # NFKC would make these equal; they are different questions
    assert build_request("What is 2³?", model="m").key != build_request("What is 23?", model="m").key
    assert build_request("½ cup", model="m").key != build_request("1⁄2 cup", model="m").key
    # indentation is meaning in code
    assert build_request("if x:\n    y()\nz()", model="m").key != build_request("if x:\n    y()\n    z()", model="m").key


def test_extra_body_is_scope_extra_headers_is_not():
    a = build_request("q", model="m", params={"extra_body": {"guided_choice": ["yes", "no"]}})
    assert a.scope != build_request("q", model="m").scope
    assert build_request("q", model="m", params={"extra_headers": {"X-Key": "s"}}).scope == build_request("q", model="m").scope


def test_overlong_model_or_namespace_is_rejected():
    with pytest.raises(InvalidInputError):
        build_request("q", model="m" * 300)
    with pytest.raises(InvalidInputError):
        build_request("q", namespace="n" * 300)


def test_case_is_kept():
    assert build_request("Paris", model="m").key != build_request("paris", model="m").key


def test_model_namespace_and_params_split_scope():
    base = build_request("q", model="m", namespace="t1", params={"temperature": 0})
    assert base.scope != build_request("q", model="m2", namespace="t1", params={"temperature": 0}).scope
    assert base.scope != build_request("q", model="m", namespace="t2", params={"temperature": 0}).scope
    assert base.scope != build_request("q", model="m", namespace="t1", params={"temperature": 1}).scope


def test_param_key_order_does_not_matter():
    a = build_request("q", model="m", params={"temperature": 0.2, "top_p": 1, "tools": [{"a": 1, "b": 2}]})
    b = build_request("q", model="m", params={"tools": [{"b": 2, "a": 1}], "top_p": 1, "temperature": 0.2})
    assert a.key == b.key


def test_params_that_cannot_change_output_are_ignored():
    a = build_request("q", model="m", params={"temperature": 0, "stream": True, "user": "u1"})
    b = build_request("q", model="m", params={"temperature": 0})
    assert a.key == b.key


def test_unknown_params_split_the_cache():
    assert build_request("q", model="m", params={"frobnicate": 1}).scope != build_request("q", model="m").scope


def test_messages_last_user_turn_is_the_text():
    r = chat("What is the capital of France?")
    assert r.text == "What is the capital of France?"


def test_different_system_prompt_never_shares_an_entry():
    a = chat("hello")
    b = chat("hello", system={"role": "system", "content": "You are verbose."})
    assert a.scope != b.scope and a.key != b.key


def test_different_temperature_never_shares_an_entry():
    assert chat("hello", temperature=0).key != chat("hello", temperature=0.7).key


def test_tools_and_response_format_are_scope():
    assert chat("hello", tools=[{"type": "function", "function": {"name": "f"}}]).key != chat("hello").key
    assert chat("hello", response_format={"type": "json_object"}).key != chat("hello").key


def test_earlier_turns_are_scope():
    a = chat("and in Spain?", earlier=[{"role": "user", "content": "capital of France?"}, {"role": "assistant", "content": "Paris"}])
    b = chat("and in Spain?", earlier=[{"role": "user", "content": "capital of Italy?"}, {"role": "assistant", "content": "Rome"}])
    assert a.text == b.text == "and in Spain?"
    assert a.scope != b.scope


def test_turns_after_last_user_turn_are_scope():
    msgs = [{"role": "user", "content": "weather?"}, {"role": "tool", "content": "sunny", "tool_call_id": "1"}]
    msgs2 = [{"role": "user", "content": "weather?"}, {"role": "tool", "content": "rain", "tool_call_id": "1"}]
    assert build_request(messages=msgs, model="m").scope != build_request(messages=msgs2, model="m").scope


def test_content_parts_text_matched_images_scoped():
    img = {"type": "image_url", "image_url": {"url": "http://x/a.png"}}
    img2 = {"type": "image_url", "image_url": {"url": "http://x/b.png"}}
    a = build_request(messages=[{"role": "user", "content": [{"type": "text", "text": "what is this"}, img]}], model="m")
    b = build_request(messages=[{"role": "user", "content": [{"type": "text", "text": "what is this"}, img2]}], model="m")
    assert a.text == b.text == "what is this"
    assert a.scope != b.scope


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"prompt": "a", "messages": [{"role": "user", "content": "a"}]},
        {"prompt": "   "},
        {"prompt": 3},
        {"messages": []},
        {"messages": "hello"},
        {"messages": [{"role": "system", "content": "s"}]},
        {"prompt": "a", "params": {"x": object()}},
    ],
)
def test_bad_requests_raise_typed_errors(kwargs):
    prompt = kwargs.pop("prompt", None)
    with pytest.raises(InvalidInputError):
        build_request(prompt, **kwargs)


def test_exact_key_depends_on_scope():
    assert exact_key("s1", "x") != exact_key("s2", "x")


def test_a_plain_prompt_and_a_one_turn_chat_are_one_request():
    from semcache.keys import build_request

    plain = build_request("What is 2+2?", model="gpt-x", params={"temperature": 0})
    for content in ("What is 2+2?", [{"type": "text", "text": "What is 2+2?"}]):
        chat = build_request(messages=[{"role": "user", "content": content}], model="gpt-x", params={"temperature": 0})
        assert (chat.scope, chat.key, chat.text) == (plain.scope, plain.key, plain.text)
    assert build_request("What is 2+2?").key == build_request(messages=[{"role": "user", "content": "What is 2+2?"}]).key
    # anything more than one bare user turn keeps a scope of its own
    for messages in (
        [{"role": "system", "content": "Be terse."}, {"role": "user", "content": "What is 2+2?"}],
        [{"role": "user", "content": "What is 2+2?", "name": "bob"}],
        [{"role": "user", "content": [{"type": "text", "text": "What is 2+2?"}, {"type": "image_url", "image_url": {"url": "x"}}]}],
        [{"role": "user", "content": "What is 2+2?"}, {"role": "tool", "content": "4", "tool_call_id": "t"}],
    ):
        assert build_request(messages=messages, model="gpt-x", params={"temperature": 0}).scope != plain.scope, messages
    # and the model and params still split it
    assert build_request(messages=[{"role": "user", "content": "What is 2+2?"}], model="other").key != plain.key
