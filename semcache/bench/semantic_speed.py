"""Semantic lookup latency at N stored entries, against the bare embedding time.

    semcache bench semantic_speed [--sizes 10000 100000] [-n 300]

For each N: warm a fresh cache (L1 + SQLite in a temporary folder + the default
embedder + FAISS) with N synthetic prompts through the public batch API
(``set_many``, embedding in batches), then time in the same process:

* the bare embedding of one probe (``embedder.embed([text])``), the baseline;
* an exact hit, a semantic hit (a reworded stored prompt) and a semantic miss
  (a prompt on a topic that was never stored), each through ``cache.get``.

Prints p50/p99 in milliseconds, the ratio of each p50 to the bare embedding p50,
how many semantic probes really hit, and the warm-up rate in inserts/s.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from semcache import CacheConfig, MemoryConfig, SemanticCache, SQLConfig  # noqa: E402

VERBS = ["configure", "install", "debug", "optimise", "deploy", "monitor", "secure", "back up",
         "upgrade", "benchmark", "test", "document", "migrate", "scale", "profile", "containerise",
         "uninstall", "restart", "validate", "automate"]
THINGS = ["a PostgreSQL replica", "a Redis cluster", "an nginx reverse proxy", "a Kafka topic",
          "a Django project", "a React app", "a Rust crate", "a Go microservice", "a Kubernetes pod",
          "a Terraform module", "an Airflow DAG", "a Spark job", "a Flask API", "a GraphQL server",
          "an Elasticsearch index", "a RabbitMQ queue", "a Jenkins pipeline", "a Celery worker",
          "a MongoDB shard", "a systemd service", "a Lambda function", "a Docker image",
          "an S3 bucket", "a gRPC service", "a WebSocket server"]
CONTEXTS = ["on Ubuntu", "on Windows", "on macOS", "in production", "for a small team",
            "with zero downtime", "behind a load balancer", "on a Raspberry Pi", "in a CI pipeline",
            "for high availability", "with TLS", "on a budget", "for a beginner", "step by step",
            "in under an hour", "without root access", "across two regions", "for GDPR compliance",
            "with minimal memory", "using only the CLI"]
STARTS = ["How do I", "What is the best way to", "Can you explain how to", "What are the steps to",
          "Is there an easy way to", "Show me how to", "What should I check before I",
          "Which tools help me", "Why does it fail when I", "How long does it take to",
          "What does it cost to", "What are common mistakes when I try to", "Give me a checklist to",
          "Who is responsible when we", "When should I"]
MISS_TOPICS = ["bake sourdough bread at high altitude", "train a puppy to stop barking at night",
               "negotiate a raise after a promotion", "repot a fiddle leaf fig", "learn the cello as an adult",
               "plan a three-day trip to Kyoto", "remove red wine stains from a carpet",
               "improve my chess endgame", "write a sonnet about autumn", "choose running shoes for flat feet"]


def corpus(n: int) -> list[str]:
    """n distinct synthetic prompts (deterministic)."""
    combos = itertools.product(STARTS, VERBS, THINGS, CONTEXTS)
    out = [f"{s} {v} {t} {c}?" for s, v, t, c in itertools.islice(combos, n)]
    if len(out) < n:
        raise SystemExit(f"the generator makes at most {len(out)} prompts")
    return out


def reword(prompt: str) -> str:
    """A paraphrase of a stored prompt (the same question in other words)."""
    return prompt.replace("How do I", "How can I").replace("What is the best way to", "What's the best way to") \
        .replace("Can you explain how to", "Could you explain how to").replace("Show me how to", "Please show me how to") \
        .rstrip("?") + " please?"


def pctl(a: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(a) * 1000, q))


def timed(fn: Callable[[str], Any], items: Iterable[str]) -> tuple[list[float], list[Any]]:
    out: list[float] = []
    res: list[Any] = []
    for it in items:
        t0 = time.perf_counter()
        res.append(fn(it))
        out.append(time.perf_counter() - t0)
    return out, res


def main() -> None:
    ap = argparse.ArgumentParser(description="Semantic lookup latency vs bare embedding time.")
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("-n", type=int, default=300, help="lookups per kind")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semcache.embedders import default_embedder

    emb = default_embedder()
    emb.embed(["warm-up"])
    rng = random.Random(7)
    print(f"embedder: {emb!r}")
    for n in args.sizes:
        prompts = corpus(n)
        with tempfile.TemporaryDirectory() as tmp:
            cfg = CacheConfig(memory=MemoryConfig(), sql=SQLConfig(url=f"sqlite:///{tmp}/b.db"), embedder=emb)
            with SemanticCache(cfg) as cache:
                t0 = time.perf_counter()
                cache.set_many({"prompt": p, "value": f"answer {i}"} for i, p in enumerate(prompts))
                rate = n / (time.perf_counter() - t0)
                cache.index.wait()  # a background HNSW build still running would skew the timings
                sample = rng.sample(prompts, 2 * args.n)
                # distinct stored prompts for the exact and the semantic probes, so the
                # exact probes' promotion into L1 does not flatter the semantic ones
                picks, para_of = sample[: args.n], sample[args.n :]
                hit_q = [reword(p) for p in para_of]
                miss_q = [f"{rng.choice(['How do I', 'What is the best way to', 'Any tips to'])} {t} ({i})?"
                          for i, t in zip(range(args.n), itertools.cycle(MISS_TOPICS))]
                # interleave the baseline with the lookups so both see the same machine load
                base, _ = timed(lambda q: emb.embed([q]), hit_q + miss_q)
                exact_t, exact_r = timed(lambda q: cache.get(q), picks)
                hit_t, hit_r = timed(lambda q: cache.get(q), hit_q)
                miss_t, miss_r = timed(lambda q: cache.get(q), miss_q)
                base2, _ = timed(lambda q: emb.embed([q]), hit_q + miss_q)
                base += base2
                st = cache.stats()
                b50 = pctl(base, 50)
                print(f"\nN = {n:,} entries ({st['index']['hnsw_scopes']} HNSW scope(s)); warm-up {rate:,.0f} inserts/s via set_many")
                print(f"{'':<24}{'p50 ms':>9}{'p99 ms':>9}{'p50 / embed':>13}  outcome")
                print(f"{'bare embedding':<24}{b50:9.2f}{pctl(base, 99):9.2f}{1.0:13.2f}")
                for name, t, r in (("exact hit", exact_t, exact_r), ("semantic hit", hit_t, hit_r), ("semantic miss", miss_t, miss_r)):
                    kinds: dict[str, int] = {}
                    for h in r:
                        k = "miss" if h is None else f"{h.kind}/{h.tier}"
                        kinds[k] = kinds.get(k, 0) + 1
                    print(f"{name:<24}{pctl(t, 50):9.2f}{pctl(t, 99):9.2f}{pctl(t, 50) / b50:13.2f}  {kinds}")


if __name__ == "__main__":
    main()
