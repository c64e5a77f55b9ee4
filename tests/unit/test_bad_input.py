"""Bad input is refused with a typed error before anything is acknowledged, and
nothing already stored is lost or changed (SQLite; the PostgreSQL side is in
tests/integration/test_bad_input_pg.py)."""

from __future__ import annotations

import pytest

from semcache import InvalidInputError, SerializationError
from semcache.keys import build_request
from semcache.blob import entry_from_blob
from semcache.serde import check_metadata, dumps, loads
from semcache.validate import MAX_DEPTH, check_json, check_name, check_tags, check_text


def deep(n: int, leaf: object = 1) -> object:
    v: object = leaf
    for _ in range(n):
        v = [v]
    return v


def deep_dict(n: int) -> object:
    v: object = 1
    for _ in range(n):
        v = {"a": v}
    return v


#: A depth far past both MAX_DEPTH and Python's recursion limit (1,000): a walk that
#: recursed would fail on it. (Deeper values only cost time to build and free.)
HUGE = 10_000

NUL = "\x00"
SURROGATE = "\ud800"


# -- the checks themselves --------------------------------------------------------------


def test_check_text_accepts_ordinary_text():
    for s in ("hello", "", "naïve café", "emoji \U0001f600", "tab\tnewline\n", "\x01\x7f"):
        assert check_text("prompt", s) is s


@pytest.mark.parametrize("bad", ["a\x00b", NUL, "x" * 1000 + NUL])
def test_check_text_refuses_nul_and_names_the_field(bad):
    with pytest.raises(InvalidInputError, match=r"^prompt contains a NUL character"):
        check_text("prompt", bad)


@pytest.mark.parametrize("bad", [SURROGATE, "a\udfff", "é" + "\udc80"])
def test_check_text_refuses_lone_surrogates(bad):
    with pytest.raises(InvalidInputError, match=r"^tag .*lone surrogate"):
        check_text("tag", bad)


def test_check_text_refuses_non_strings():
    with pytest.raises(InvalidInputError, match="model must be a string"):
        check_text("model", b"bytes")


def test_check_name():
    assert check_name("model", None) is None
    assert check_name("model", "m" * 255) == "m" * 255
    with pytest.raises(InvalidInputError, match="at most 255"):
        check_name("model", "m" * 256)
    with pytest.raises(InvalidInputError, match="namespace contains a NUL"):
        check_name("namespace", "acme\x00")


def test_check_tags_keeps_todays_rules():
    assert check_tags(["a", "b", "a"]) == ("a", "b")
    assert check_tags(("x",)) == ("x",)
    assert check_tags(iter(["x", "y"])) == ("x", "y")
    assert check_tags(()) == ()
    assert check_tags(None) == ()
    assert check_tags(["t" * 255]) == ("t" * 255,)
    for bad in ("a-string", b"bytes", 5, [""], ["t" * 256], [1], [None]):
        with pytest.raises(InvalidInputError):
            check_tags(bad)


@pytest.mark.parametrize("bad", [["ok", "a\x00"], [SURROGATE]])
def test_check_tags_refuses_nul_and_surrogates(bad):
    with pytest.raises(InvalidInputError, match=r"^tag "):
        check_tags(bad)


def test_check_json_depth_limit_is_exact():
    check_json("v", deep(MAX_DEPTH))  # MAX_DEPTH nested lists
    with pytest.raises(SerializationError, match=f"more than {MAX_DEPTH} levels"):
        check_json("v", deep(MAX_DEPTH + 1))
    check_json("v", deep_dict(MAX_DEPTH))
    with pytest.raises(SerializationError):
        check_json("v", deep_dict(MAX_DEPTH + 1))


def test_check_json_handles_huge_depth_and_cycles_without_recursion():
    with pytest.raises(SerializationError):
        check_json("the value", deep(HUGE))
    cyc: list[object] = []
    cyc.append(cyc)
    with pytest.raises(SerializationError):
        check_json("the value", cyc)


def test_check_json_shared_subobjects_are_cheap_but_depth_still_counts():
    shared = deep(10)
    wide = [shared] * 10_000
    check_json("v", wide)  # walked once, not 10,000 times
    inner = deep(5)
    # the walk meets ``inner`` shallow first (last in, first out), then too deep
    sneaky = [deep(MAX_DEPTH - 2, leaf=inner), inner]
    with pytest.raises(SerializationError):
        check_json("v", sneaky)


def test_check_metadata():
    assert check_metadata(None) == {}
    md = {"usage": {"prompt_tokens": 3}, "note": "naïve", "k\x01": [1, "x"]}
    out = check_metadata(md)
    assert out == md and out is not md
    for bad, match in [
        ({"a": "b\x00"}, r"metadata\.a contains a NUL"),
        ({"a\x00": 1}, r"a key of metadata contains a NUL"),
        ({"a": [{"b": SURROGATE}]}, r"metadata\.a\[0\]\.b contains a lone surrogate"),
        ({"a": deep(HUGE)}, "nested more than"),
        ({"a": float("nan")}, "JSON-serialisable"),
        ({"a": object()}, "JSON-serialisable"),
        (["not", "a", "mapping"], "must be a mapping"),
    ]:
        with pytest.raises(SerializationError, match=match):
            check_metadata(bad)


def test_serde_dumps_refuses_deep_values_with_serialization_error():
    with pytest.raises(SerializationError, match="nested more than"):
        dumps(deep(HUGE))
    with pytest.raises(SerializationError, match="nested more than"):
        dumps({"choices": [deep_dict(HUGE)]})
    with pytest.raises(SerializationError):
        dumps(["x", SURROGATE])  # the payload is UTF-8
    assert loads(dumps(deep(MAX_DEPTH))) == deep(MAX_DEPTH)


def test_serde_nul_inside_a_value_round_trips():
    v = {"content": "a\x00b", "k\x00": [NUL]}
    assert loads(dumps(v)) == v


def test_serde_loads_of_a_too_deep_payload_is_a_serialization_error():
    payload = b"j" + b"[" * HUGE + b"]" * HUGE
    with pytest.raises(SerializationError):
        loads(payload)
    blob = b'{"k":"k","s":"s","p":"p","c":1,"md":' + b"[" * HUGE + b"]" * HUGE + b"}\x00j1"
    with pytest.raises(SerializationError):
        entry_from_blob(blob)


# -- build_request -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"prompt": "hello\x00world"}, "prompt"),
        ({"prompt": "hi", "model": "gpt\x00"}, "model"),
        ({"prompt": "hi", "namespace": "acme\x00"}, "namespace"),
        ({"messages": [{"role": "user", "content": "hi\x00"}]}, r"messages\[0\]"),
        (
            {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": [{"type": "text", "text": NUL}]}]},
            r"messages\[1\]",
        ),
        ({"prompt": "hi" + SURROGATE}, "prompt"),
        ({"prompt": "hi", "model": SURROGATE}, "model"),
        ({"messages": [{"role": "user", "content": SURROGATE}]}, r"messages\[0\]"),
    ],
)
def test_build_request_refuses_unstorable_text(kwargs, field):
    with pytest.raises(InvalidInputError, match=f"^{field}"):
        build_request(**kwargs)


def test_build_request_scope_fields_may_hold_nul_but_not_surrogates_or_huge_depth():
    # scope fields are only hashed: a NUL there is harmless and still splits the cache
    a = build_request("hi", params={"stop": ["\x00"]})
    b = build_request("hi", params={"stop": ["x"]})
    assert a.key != b.key
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        build_request("hi", params={"stop": [SURROGATE]})
    with pytest.raises(InvalidInputError, match="lone surrogate"):
        build_request(messages=[{"role": "system", "content": SURROGATE}, {"role": "user", "content": "hi"}])
    with pytest.raises(InvalidInputError, match="nested too deeply"):
        build_request("hi", params={"tools": deep(HUGE)})


# -- through the cache: typed error, and nothing stored is lost or changed -------------


PROMPT = "How do I reverse a list in Python?"


def _snapshot(cache, key):
    now = cache.timer()
    out = []
    for t in cache.tiers:
        e = t.get(key, now)
        out.append(None if e is None else (e.prompt, e.payload, e.tags, e.metadata, e.expires_at, e.model))
    return out, cache.count(), (key in cache.index) if cache.index is not None else None


@pytest.fixture
def stored(make_cache):
    cache = make_cache()
    entry = cache.set(PROMPT, {"content": "lst[::-1]"}, model="m", tags=["py"], metadata={"usage": {"total_tokens": 5}})
    before = _snapshot(cache, entry.key)
    assert before[0][0] is not None and before[0][-1] is not None and before[1] == 1
    return cache, entry, before


def _unchanged(cache, entry, before):
    assert _snapshot(cache, entry.key) == before
    hit = cache.get(PROMPT, model="m")
    assert hit is not None and hit.value == {"content": "lst[::-1]"}


# set() calls the core does not need to be changed for: build_request and serde.dumps
# refuse these already
BAD_SET_CALLS = {
    "NUL in prompt": (dict(prompt=PROMPT + NUL), InvalidInputError),
    "NUL in chat message": (dict(prompt=None, messages=[{"role": "user", "content": PROMPT + NUL}]), InvalidInputError),
    "NUL in model": (dict(prompt=PROMPT, model="m\x00"), InvalidInputError),
    "NUL in namespace": (dict(prompt=PROMPT, model="m", namespace="ns\x00"), InvalidInputError),
    "surrogate in prompt": (dict(prompt=PROMPT + SURROGATE), InvalidInputError),
    "surrogate in params": (dict(prompt=PROMPT, model="m", params={"stop": [SURROGATE]}), InvalidInputError),
    f"value {HUGE:,} deep": (dict(prompt=PROMPT, model="m", value=deep(HUGE)), SerializationError),
    f"params {HUGE:,} deep": (dict(prompt=PROMPT, model="m", params={"tools": deep(HUGE)}), InvalidInputError),
}

# these reach the checks only once the core's _make_entry calls validate.check_tags and
# serde.check_metadata
BAD_SET_CALLS_VIA_MAKE_ENTRY = {
    "NUL in tag": (dict(prompt=PROMPT, model="m", tags=["py", "x\x00"]), InvalidInputError),
    "surrogate in tag": (dict(prompt=PROMPT, model="m", tags=[SURROGATE]), InvalidInputError),
    "NUL in metadata value": (dict(prompt=PROMPT, model="m", metadata={"note": "a\x00"}), SerializationError),
    "NUL in metadata key": (dict(prompt=PROMPT, model="m", metadata={"a\x00": 1}), SerializationError),
    "surrogate in metadata": (dict(prompt=PROMPT, model="m", metadata={"note": SURROGATE}), SerializationError),
    f"metadata {HUGE:,} deep": (dict(prompt=PROMPT, model="m", metadata={"a": deep(HUGE)}), SerializationError),
}


def _call_set(cache, kwargs):
    kwargs = dict(kwargs)
    prompt = kwargs.pop("prompt")
    value = kwargs.pop("value", {"content": "replaced"})
    return cache.set(prompt, value, **kwargs)


@pytest.mark.parametrize("case", list(BAD_SET_CALLS))
def test_set_refuses_bad_input_and_keeps_what_is_stored(stored, case):
    cache, entry, before = stored
    kwargs, exc = BAD_SET_CALLS[case]
    with pytest.raises(exc):
        _call_set(cache, kwargs)
    _unchanged(cache, entry, before)


@pytest.mark.parametrize("case", list(BAD_SET_CALLS_VIA_MAKE_ENTRY))
def test_set_refuses_bad_tags_and_metadata_and_keeps_what_is_stored(stored, case):
    cache, entry, before = stored
    kwargs, exc = BAD_SET_CALLS_VIA_MAKE_ENTRY[case]
    with pytest.raises(exc):
        _call_set(cache, kwargs)
    _unchanged(cache, entry, before)


@pytest.mark.parametrize("case", list(BAD_SET_CALLS) + list(BAD_SET_CALLS_VIA_MAKE_ENTRY))
def test_set_many_with_one_bad_item_stores_nothing(stored, case):
    cache, entry, before = stored
    all_cases = {**BAD_SET_CALLS, **BAD_SET_CALLS_VIA_MAKE_ENTRY}
    kwargs, exc = all_cases[case]
    item = dict(kwargs)
    item.setdefault("value", {"content": "replaced"})
    if item.get("prompt") is None:
        item.pop("prompt")
    good = {"prompt": "a brand new prompt", "value": 1}
    with pytest.raises(exc):
        cache.set_many([good, item])
    _unchanged(cache, entry, before)
    assert cache.get("a brand new prompt") is None


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt=PROMPT + NUL),
        dict(prompt=PROMPT + SURROGATE),
        dict(prompt=PROMPT, model="m\x00"),
        dict(prompt=None, messages=[{"role": "user", "content": SURROGATE}]),
    ],
)
def test_get_refuses_bad_text_with_invalid_input_error(stored, kwargs):
    cache, entry, before = stored
    kwargs = dict(kwargs)
    with pytest.raises(InvalidInputError):
        cache.get(kwargs.pop("prompt"), **kwargs)
    _unchanged(cache, entry, before)


def test_nul_inside_a_value_is_stored_and_read_back(make_cache):
    cache = make_cache()
    cache.set("a prompt", {"content": "a\x00b"}, model="m")
    for t in cache.tiers[:-1]:
        t.delete([cache.request("a prompt", model="m").key])
    hit = cache.get("a prompt", model="m", semantic=False)
    assert hit is not None and hit.tier == "l3" and hit.value == {"content": "a\x00b"}


# -- the key fast paths give the same keys as the reference functions ------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(prompt="  How do I reverse a list?  "),
        dict(prompt="line one  \r\nline two\t\n", model="m"),
        dict(prompt="cafe\u0301", namespace="acme", model="m"),
        dict(prompt="p", model="m", params={"temperature": 0.2, "stream": True}),
        dict(prompt="p", model="m", params={"stream": True}),
        dict(messages=[{"role": "system", "content": "s"}, {"role": "user", "content": " hi \n"}], model="m"),
    ],
)
def test_request_key_and_scope_match_the_reference_functions(kwargs):
    from semcache.keys import exact_key, scope_hash

    for _ in range(2):  # the second call takes the memoised scope hash
        r = build_request(**kwargs)
        assert r.scope == scope_hash(r.scope_fields)
        assert r.key == exact_key(r.scope, r.text)
