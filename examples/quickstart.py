"""A slow "LLM" answered from the cache: exact repeats, paraphrases, and the stats.

    python examples/quickstart.py

Runs offline on the embedded default (L1 memory + SQLite in a temporary folder +
the in-process index with all-MiniLM-L6-v2).
"""

from __future__ import annotations

import tempfile
import time

from semcache import CacheConfig, SemanticCache, SQLConfig


def slow_llm(prompt: str) -> str:
    """Stand-in for an LLM call: one second and a canned answer."""
    time.sleep(1.0)
    return f"(answer to: {prompt})"


def ask(cache: SemanticCache, prompt: str) -> None:
    t0 = time.perf_counter()
    hit = cache.get(prompt, model="demo-model")
    if hit is None:
        answer = slow_llm(prompt)
        cache.set(prompt, answer, model="demo-model", ttl_seconds=3600)
        how = "miss -> called the LLM"
    else:
        answer = hit.value
        how = f"{hit.kind} hit from {hit.tier} (similarity {hit.similarity:.3f})"
    ms = (time.perf_counter() - t0) * 1000
    print(f"{ms:8.1f} ms  {how:<42} {prompt!r}")


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        config = CacheConfig(sql=SQLConfig(url=f"sqlite:///{tmp}/semcache.db"))
        with SemanticCache(config) as cache:
            cache.embed_many(["warm-up"])  # load the model before timing
            for prompt in [
                "How do I reverse a list in Python?",
                "How do I reverse a list in Python?",
                "How can I reverse a list in Python?",  # a paraphrase the verifier accepts
                "How do I sort a list in Python?",  # close, but another question: a miss
                "Find cheap flights from Paris to Rome",
                "Find cheap flights from Rome to Paris",  # similarity 0.999, rejected by the order guard
            ]:
                ask(cache, prompt)
            st = cache.stats()
            print(f"\nhits={st['hits']} (l1={st['hits_l1']}, l2={st['hits_l2']}, l3={st['hits_l3']}) "
                  f"misses={st['misses']} sets={st['sets']} l1_bytes={st['l1_bytes']} "
                  f"guard_rejections={st['guard_rejections']}")
            # what this example shows: one exact and one semantic hit, the swapped route refused
            assert (st["hits_by"], st["guard_rejections"]) == ({"l1_exact": 1, "l1_semantic": 1}, {"order": 1}), st


if __name__ == "__main__":
    main()
