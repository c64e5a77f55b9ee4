"""On a real PostgreSQL, text that PostgreSQL cannot hold (a NUL character) is refused
with InvalidInputError before anything is acknowledged: set() never returns an entry
that L3 then fails to write."""

from __future__ import annotations

import logging

import pytest
from sqlalchemy import create_engine, text

from semcache import CacheConfig, InvalidInputError, MemoryConfig, Policy, SemanticCache, SerializationError, SQLConfig
from semcache.embedders import HashingEmbedder

pytestmark = pytest.mark.postgres

PROMPT = "How do I reverse a list in Python?"


@pytest.fixture
def pg_cache(pg_schema_url, clock):
    cfg = CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url=pg_schema_url), embedder=HashingEmbedder(dim=64), policy=Policy(verifier=None))
    with SemanticCache(cfg, timer=clock) as cache:
        yield cache


def _rows(url):
    eng = create_engine(url)
    try:
        with eng.connect() as conn:
            return [tuple(r) for r in conn.execute(text("SELECT key, prompt, payload, tags, metadata FROM semcache_entries ORDER BY key"))]
    finally:
        eng.dispose()


BAD = {
    "NUL in prompt": (dict(prompt="reverse\x00a list"), InvalidInputError),
    "NUL in chat message": (dict(prompt=None, messages=[{"role": "user", "content": "reverse\x00"}]), InvalidInputError),
    "NUL in model": (dict(prompt=PROMPT, model="gpt\x00"), InvalidInputError),
    "NUL in namespace": (dict(prompt=PROMPT, namespace="acme\x00"), InvalidInputError),
    # the next three need the core's _make_entry to call validate.check_tags and
    # serde.check_metadata
    "NUL in tag": (dict(prompt=PROMPT, model="m", tags=["py\x00"]), InvalidInputError),
    "NUL in metadata value": (dict(prompt=PROMPT, model="m", metadata={"note": "a\x00"}), SerializationError),
    "NUL in metadata key": (dict(prompt=PROMPT, model="m", metadata={"a\x00": 1}), SerializationError),
}


@pytest.mark.parametrize("case", list(BAD))
def test_nul_is_refused_before_anything_is_stored(pg_cache, pg_schema_url, case, caplog):
    good = pg_cache.set(PROMPT, {"content": "lst[::-1]"}, model="m", tags=["py"], metadata={"n": 1})
    before = _rows(pg_schema_url)
    assert [r[0] for r in before] == [good.key]
    kwargs, exc = BAD[case]
    kwargs = dict(kwargs)
    with caplog.at_level(logging.WARNING), pytest.raises(exc, match="NUL"):
        pg_cache.set(kwargs.pop("prompt"), {"content": "replaced"}, **kwargs)
    # refused up front: no L3 write was even attempted (so none failed and was logged)
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert _rows(pg_schema_url) == before
    hit = pg_cache.get(PROMPT, model="m")
    assert hit is not None and hit.value == {"content": "lst[::-1]"} and hit.entry.tags == ("py",)
    # and from L3 itself, after L1 forgets it
    pg_cache.tiers[0].delete([good.key])
    hit = pg_cache.get(PROMPT, model="m", semantic=False)
    assert hit is not None and hit.tier == "l3" and hit.value == {"content": "lst[::-1]"}


def test_set_many_with_a_nul_stores_nothing(pg_cache, pg_schema_url):
    with pytest.raises(InvalidInputError):
        pg_cache.set_many([{"prompt": "fine", "value": 1}, {"prompt": "bad\x00", "value": 2}])
    assert _rows(pg_schema_url) == []


def test_nul_inside_a_value_is_stored_and_read_back_from_postgres(pg_cache):
    e = pg_cache.set(PROMPT, {"content": "a\x00b"}, model="m")
    pg_cache.tiers[0].delete([e.key])
    hit = pg_cache.get(PROMPT, model="m", semantic=False)
    assert hit is not None and hit.tier == "l3" and hit.value == {"content": "a\x00b"}
