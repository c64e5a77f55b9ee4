"""Semantic behaviour end to end with the real all-MiniLM-L6-v2 model, through every tier.

The caches run the default Policy, so the shipped pair verifier decides semantic hits;
the tests of cosine thresholds and guards turn it off (``Policy(verifier=None)``).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from semcache import (
    CacheConfig,
    EmbeddingError,
    IndexConfig,
    InvalidInputError,
    MemoryConfig,
    Policy,
    RedisConfig,
    SemanticCache,
    SQLConfig,
)
from semcache.embedders import CallableEmbedder

pytestmark = pytest.mark.model

Q = "How do I reverse a list in Python?"
# a paraphrase the verifier accepts with a wide margin ("How can I reverse a Python list?"
# is one it does not: it scores under the threshold)
PARA = "How can I reverse a list in Python?"


def cfg(sql_url, minilm, **kw):
    return CacheConfig(
        memory=kw.pop("memory", MemoryConfig()),
        redis=kw.pop("redis", None),
        sql=SQLConfig(url=sql_url),
        embedder=minilm,
        policy=kw.pop("policy", Policy()),
        **kw,
    )


def cosine(policy: Policy = Policy()) -> Policy:
    """``policy`` without the verifier: for the tests that state cosine-similarity
    semantics (thresholds, guards, the nearest candidate deciding)."""
    return replace(policy, verifier=None)


def test_paraphrase_hits_and_reports_how(sqlite_url, minilm, clock):
    with SemanticCache(cfg(sqlite_url, minilm), timer=clock) as cache:
        e = cache.set(Q, "use reversed() or list.reverse()", model="m")
        clock.advance(5)
        hit = cache.get(PARA, model="m")
        assert hit is not None
        assert hit.kind == "semantic" and hit.tier == "l1"
        assert hit.key == e.key and hit.prompt == Q
        assert hit.similarity >= cache.threshold_for(cache.request(PARA, model="m"))
        assert hit.verifier_score is not None and hit.verifier_score >= cache.explain(PARA, model="m")["verifier_threshold"]
        assert hit.age_seconds == pytest.approx(5)
        assert cache.get("What is the capital of Mongolia?", model="m") is None


def test_different_scope_paraphrase_misses(sqlite_url, minilm):
    with SemanticCache(cfg(sqlite_url, minilm)) as cache:
        cache.set(Q, "answer for tenant a", model="m", namespace="tenant-a")
        assert cache.get(PARA, model="m", namespace="tenant-a").value == "answer for tenant a"
        assert cache.get(PARA, model="m", namespace="tenant-b") is None
        assert cache.get(PARA, model="other-model", namespace="tenant-a") is None
        assert cache.get(Q, model="m", namespace="tenant-a", params={"temperature": 1.0}) is None


def test_scope_is_a_hard_filter_not_a_post_filter(sqlite_url, minilm):
    with SemanticCache(cfg(sqlite_url, minilm)) as cache:
        # another tenant holds the closest entry; ours is further away but above threshold
        cache.set(PARA, "tenant b's answer", namespace="b")
        cache.set(Q, "tenant a's answer", namespace="a")
        hit = cache.get(PARA, namespace="a")
        assert hit is not None and hit.value == "tenant a's answer"


def test_guards_reject_a_number_change(sqlite_url, minilm):
    with SemanticCache(cfg(sqlite_url, minilm, policy=cosine(Policy(similarity_threshold=0.8)))) as cache:
        cache.set("What is 15% of 200?", "30")
        ex = cache.explain("What is 15% of 300?")
        top = ex["candidates"][0]
        assert top["similarity"] >= 0.8  # similar enough to be served without the guard
        assert cache.get("What is 15% of 300?") is None
        assert any(g["name"] == "numbers" and not g["passed"] for g in top["guards"])
        assert cache.stats()["guard_rejections"].get("numbers") == 1
    # the same pair is a (wrong) hit with guards switched off: the guard is what stops it
    with SemanticCache(cfg(sqlite_url, minilm, policy=cosine(Policy(similarity_threshold=0.8, guards=())))) as cache:
        assert cache.get("What is 15% of 300?") is not None


def test_guards_reject_negation_and_swapped_direction(sqlite_url, minilm):
    pol = cosine(Policy(similarity_threshold=0.75, guards=("numbers", "negation", "order")))
    with SemanticCache(cfg(sqlite_url, minilm, policy=pol)) as cache:
        cache.set("Is it safe to eat raw eggs?", "mostly, with caveats")
        cache.set("cheap flights from Paris to Rome", "paris->rome")
        assert cache.get("Is it not safe to eat raw eggs?") is None
        assert cache.get("cheap flights from Rome to Paris") is None
        hit = cache.get("inexpensive flights from Paris to Rome")
        assert hit is not None and hit.value == "paris->rome"


def test_threshold_per_call_per_namespace_per_cache(sqlite_url, minilm):
    pol = cosine(Policy(similarity_threshold=0.5, namespace_thresholds={"strict": 0.999}))
    with SemanticCache(cfg(sqlite_url, minilm, policy=pol)) as cache:
        cache.set(Q, "lenient", namespace="lenient")
        cache.set(Q, "strict", namespace="strict")
        assert cache.get(PARA, namespace="lenient").value == "lenient"
        assert cache.get(PARA, namespace="strict") is None
        assert cache.get(PARA, namespace="lenient", threshold=0.999) is None
        with pytest.raises(InvalidInputError):
            cache.get(PARA, threshold=1.5)


def test_restart_rebuilds_index_from_l3_and_answers_the_same(sqlite_url, minilm):
    prompts = [f"{Q} (variant {i})" if i else Q for i in range(3)] + ["What is the tallest mountain in the world?"]
    with SemanticCache(cfg(sqlite_url, minilm)) as cache:
        cache.set_many([{"prompt": p, "value": f"v{i}"} for i, p in enumerate(prompts)])
        before = cache.get("What's the tallest mountain in the world?")
        assert before is not None
    with SemanticCache(cfg(sqlite_url, minilm)) as cache:
        assert len(cache.index) == 4
        after = cache.get("What's the tallest mountain in the world?")
        assert after is not None and after.key == before.key and after.value == before.value
        assert after.tier == "l3"  # nothing in memory after a restart: served from L3, promoted
        assert cache.check_index()["consistent"] is True


def test_entries_of_another_embedder_are_never_compared(sqlite_url, minilm):
    def other(texts):
        rng = np.random.default_rng(0)
        return rng.normal(size=(len(texts), minilm.dim))

    foreign = CallableEmbedder(other, dim=minilm.dim, model_id="some-other-model")
    with SemanticCache(cfg(sqlite_url, foreign)) as cache:
        cache.set(Q, "written with another model")
    with SemanticCache(cfg(sqlite_url, minilm)) as cache:
        assert len(cache.index) == 0
        assert cache.get(PARA) is None
        assert cache.get(Q).kind == "exact"  # exact matching still works
        # repair: re-embed with this model
        assert cache.rebuild_index(reembed=True) == 1
        assert cache.get(PARA).value == "written with another model"


def test_invalidation_and_expiry_remove_from_index(sqlite_url, minilm, clock):
    with SemanticCache(cfg(sqlite_url, minilm), timer=clock) as cache:
        cache.set(Q, "v", tags=["py"], ttl_seconds=100)
        cache.set("What is the tallest mountain?", "Everest", ttl_seconds=10)
        assert len(cache.index) == 2
        cache.invalidate(tag="py")
        assert len(cache.index) == 1 and cache.get(PARA) is None
        assert cache.get("What's the tallest mountain?") is not None
        clock.advance(11)
        assert cache.get("What's the tallest mountain?") is None
        assert cache.sweep() == 1
        assert len(cache.index) == 0


def test_semantic_through_every_tier(sqlite_url, minilm, redis_url, key_prefix):
    c = cfg(sqlite_url, minilm, redis=RedisConfig(url=redis_url, prefix=key_prefix))
    with SemanticCache(c) as cache:
        e = cache.set(Q, "v", model="m")
        l1, l2, l3 = cache.tiers
        l1.delete([e.key])
        hit = cache.get(PARA, model="m")
        assert (hit.kind, hit.tier) == ("semantic", "l2")
        l1.delete([e.key])
        l2.delete([e.key])
        hit = cache.get(PARA, model="m")
        assert (hit.kind, hit.tier) == ("semantic", "l3")
        assert cache.get(PARA, model="m").tier == "l1"
        cache.flush()


test_semantic_through_every_tier = pytest.mark.redis(test_semantic_through_every_tier)


def test_long_prompt_is_exact_only_by_default(sqlite_url, minilm):
    long_a = "Summarise this: " + " ".join(f"word{i}" for i in range(600))
    long_b = long_a + " and one more sentence at the very end."
    with SemanticCache(cfg(sqlite_url, minilm)) as cache:
        cache.set(long_a, "summary a")
        assert cache.get(long_a).kind == "exact"
        # the texts differ only past the model window: a truncated embedding would call
        # them identical, so long prompts are never matched semantically
        assert cache.get(long_b) is None
        assert cache.stats()["long_prompts_exact_only"] >= 1
    with SemanticCache(cfg(sqlite_url, minilm, policy=Policy(long_prompt="error"))) as cache:
        with pytest.raises(InvalidInputError):
            cache.set(long_b, "x")


def test_megabyte_prompt_is_cached_exactly_without_tokenising_it_all(sqlite_url, minilm):
    huge = "lorem ipsum " * 100_000  # 1.2 MB
    with SemanticCache(cfg(sqlite_url, minilm)) as cache:
        cache.set(huge, "ok")
        assert cache.get(huge).value == "ok"
        assert len(cache.index) == 0


def test_nan_and_wrong_dimension_embedders_never_corrupt_the_index(sqlite_url, minilm):
    calls = {"n": 0}

    def flaky(texts):
        calls["n"] += 1
        if any("poison" in t for t in texts):
            return np.full((len(texts), minilm.dim), np.nan)
        return minilm.embed(texts)

    emb = CallableEmbedder(flaky, dim=minilm.dim, model_id=minilm.model_id)
    with SemanticCache(cfg(sqlite_url, emb)) as cache:
        cache.set(Q, "good")
        with pytest.raises(EmbeddingError):
            cache.set("poison pill", "bad")
        with pytest.raises(EmbeddingError):
            cache.get("poison question")
        assert len(cache.index) == 1
        assert cache.get("poison pill", semantic=False) is None  # nothing was stored
        assert cache.get(PARA).value == "good"
    wrong = CallableEmbedder(lambda t: np.ones((len(t), 7)), dim=7, model_id=minilm.model_id)
    with SemanticCache(cfg(sqlite_url, minilm)) as cache:
        with pytest.raises(EmbeddingError):
            cache.store(cache.request("x"), "v", embedding=np.ones(7))
        assert len(cache.index) == 1
    del wrong


def test_hnsw_scope_with_deletes(sqlite_url, minilm):
    small = IndexConfig(hnsw_min_entries=50)
    texts = [f"Question number {i}: how do I configure service {i} on port {8000 + i}?" for i in range(80)]
    with SemanticCache(cfg(sqlite_url, minilm, index=small, policy=Policy(guards=()))) as cache:
        cache.set_many([{"prompt": t, "value": i} for i, t in enumerate(texts)])
        cache.index.wait()
        assert cache.index.stats()["hnsw_scopes"] == 1
        assert cache.get(texts[10]).kind == "exact"
        ex = cache.explain(texts[10] + " please")
        assert ex["candidates"][0]["entry_id"] == cache.request(texts[10]).key
        cache.delete(cache.request(texts[10]).key)
        ex = cache.explain(texts[10] + " please")
        assert all(c["entry_id"] != cache.request(texts[10]).key for c in ex["candidates"])


@pytest.mark.redis
def test_index_updates_reach_other_replicas(tmp_path, minilm, redis_url, key_prefix):
    import time

    sql = f"sqlite:///{tmp_path}/shared.db"
    c = cfg(sql, minilm, redis=RedisConfig(url=redis_url, prefix=key_prefix))
    with SemanticCache(c) as a, SemanticCache(c) as b:
        time.sleep(0.3)  # both listeners subscribed
        a.set_many([{"prompt": Q, "value": "from a"}, {"prompt": "What is the tallest mountain?", "value": "Everest"}])
        deadline = time.time() + 5
        while time.time() < deadline and len(b.index) < 2:
            time.sleep(0.05)
        assert len(b.index) == 2  # b's index learnt a's vectors without a rebuild
        assert b.get(PARA).value == "from a"
        a.invalidate(prompt_pattern="How do I*")
        deadline = time.time() + 5
        while time.time() < deadline and len(b.index) > 1:
            time.sleep(0.05)
        assert len(b.index) == 1 and b.get(PARA) is None
        a.flush()


def test_sliding_expiry_keeps_the_vector_in_l3(sqlite_url, minilm, clock):
    pol = Policy(sliding_expiry=True)
    with SemanticCache(cfg(sqlite_url, minilm, policy=pol), timer=clock) as cache:
        e = cache.set(Q, "v", ttl_seconds=100)
        for _ in range(3):
            clock.advance(60)
            assert cache.get(Q) is not None  # exact hits slide the expiry
        l3 = cache.tiers[-1]
        assert l3.count(clock(), embedder_id=minilm.model_id) == 1  # the vector survived
        assert l3.get(e.key, clock()).expires_at == pytest.approx(clock() + 100)
    with SemanticCache(cfg(sqlite_url, minilm, policy=pol), timer=clock) as cache:
        assert cache.get(PARA).kind == "semantic"  # and the rebuilt index still finds it


def test_semantic_lookup_while_l3_is_down_keeps_the_index(sqlite_url, minilm):
    from semcache.errors import BackendUnavailable

    pol = Policy(backoff_initial_seconds=0.01, backoff_max_seconds=0.01)
    with SemanticCache(cfg(sqlite_url, minilm, policy=pol)) as cache:
        e = cache.set(Q, "v")
        l1, l3 = cache.tiers
        l1.delete([e.key])
        real_get = l3.get

        def down(key, now):
            raise BackendUnavailable("down")

        l3.get = down
        assert cache.get(PARA) is None  # a miss while L3 is down...
        assert len(cache.index) == 1  # ...that does not forget the vector
        l3.get = real_get
        import time

        time.sleep(0.02)
        assert cache.get(PARA).value == "v"


def test_a_failed_rebuild_keeps_the_index(sqlite_url, minilm):
    from semcache.errors import BackendUnavailable

    with SemanticCache(cfg(sqlite_url, minilm)) as cache:
        cache.set(Q, "v")
        l3 = cache.tiers[-1]

        def down(*a, **k):
            raise BackendUnavailable("down")

        l3.iter_embeddings = down
        with pytest.raises(BackendUnavailable):
            cache.rebuild_index()
        assert len(cache.index) == 1 and cache.get(PARA) is not None


def test_a_miss_then_store_embeds_once(sqlite_url, minilm):
    with SemanticCache(cfg(sqlite_url, minilm)) as cache:
        assert cache.get("What is the speed of light in vacuum?") is None
        cache.set("What is the speed of light in vacuum?", "c")
        assert cache.stats()["embeddings"] == 1


def test_precomputed_lookup_vectors_are_checked(sqlite_url, minilm):
    # cosine: a similarity above 1 would be served without a verifier to catch it
    with SemanticCache(cfg(sqlite_url, minilm, policy=cosine())) as cache:
        cache.set(Q, "v")
        unrelated = minilm.embed(["The weather in Lisbon is mild in winter."])[0]
        # an unnormalised vector must not turn a low cosine into a "similarity" above 1
        assert cache.lookup(cache.request("The weather in Lisbon is mild in winter."), embedding=unrelated * 50) is None
        with pytest.raises(EmbeddingError):
            cache.lookup(cache.request("x y z"), embedding=np.full(minilm.dim, np.nan))
