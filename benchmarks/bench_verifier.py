"""What the pair verifier costs on the read path, against bare embedding, in one run.

    python benchmarks/bench_verifier.py [-n 300]

Two caches on the embedded default (L1 + SQLite in a temporary folder + the default
all-MiniLM-L6-v2 embedder), one with the default verifier and one with
``Policy(verifier=None)``, hold the same prompts: the first sides of generated pairs
(``training/synthetic.py``, seed 7). Each probe is looked up with ``cache.get``, once per
cache, and timed by what the lookup turned out to be:

* **semantic hit**: a paraphrase of a stored prompt that is served;
* **verified miss**: a near-miss (another entity, a swapped role, a changed number)
  whose candidates pass the similarity floor, are scored and rejected;
* **clear miss**: an unrelated prompt, nothing past the floor, the verifier never runs;
* **exact hit**: a stored prompt, asked again (neither embedder nor verifier runs);
* **semantic hit, entry seen**: the semantic hits again, reworded once more (" Thanks!"
  appended, so a new text to embed), against entries the verifier has read before: its
  cache of token states already holds the candidate, as for a hot entry in service.

The baseline is ``embedder.embed([probe])`` alone on the same probes: the target is a
semantic hit costing at most 2x bare embedding at p50. Probes are all new texts
(none has been embedded before), so no embedding or token-state cache helps them;
stored prompts' token states are cached by the verifier after first use, as in
steady-state serving.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "training"))

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=300, help="generated pairs")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from synthetic import generate

    from semcache.embedders import default_embedder

    pairs = generate(args.n * 3, seed=7)
    stored = sorted({p.a for p in pairs})
    probes = [p.b for p in pairs if p.b not in stored]
    probes = list(dict.fromkeys(probes))[: args.n]
    unrelated = [f"Write a haiku about the number {i} and a {w}." for i, w in enumerate(["lighthouse", "teapot", "glacier", "violin", "cactus"] * (args.n // 25 + 1))][: args.n // 5]
    emb = default_embedder()
    emb.embed(["warm-up"])
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for label, verifier in (("verifier", "default"), ("no verifier", None)):
            cfg = CacheConfig(
                memory=MemoryConfig(max_entries=100_000),
                sql=SQLConfig(url=f"sqlite:///{tmp}/{label.replace(' ', '_')}.db"),
                embedder=emb,
                policy=Policy(verifier=verifier, default_ttl_seconds=None),
            )
            with SemanticCache(cfg) as cache:
                cache.set_many({"prompt": s, "value": f"answer to {s}"} for s in stored)
                if cache.verifier is not None:  # load it before timing, as the sidecar does
                    cache.verifier.score([("warm-up", "warm up")])
                out: dict[str, list[float]] = {"semantic hit": [], "verified miss": [], "clear miss": [], "exact hit": []}
                if verifier is None:
                    out["miss"] = out.pop("verified miss")
                    del out["clear miss"]
                hit_texts: list[str] = []
                for text in probes + unrelated + stored[: args.n // 5]:
                    calls = cache.stats()["verifier"]["calls"]
                    t0 = time.perf_counter()
                    hit = cache.get(text)
                    dt = time.perf_counter() - t0
                    scored = cache.stats()["verifier"]["calls"] > calls
                    if hit is not None and hit.kind == "exact":
                        out["exact hit"].append(dt)
                    elif hit is not None:
                        out["semantic hit"].append(dt)
                        hit_texts.append(text)
                    elif verifier is None:
                        out["miss"].append(dt)
                    else:
                        out["verified miss" if scored else "clear miss"].append(dt)
                # the hits again, reworded: the candidates' token states are cached now
                out["semantic hit, entry seen"] = []
                for text in hit_texts:
                    t0 = time.perf_counter()
                    hit = cache.get(text + " Thanks!")
                    dt = time.perf_counter() - t0
                    if hit is not None and hit.kind == "semantic":
                        out["semantic hit, entry seen"].append(dt)
                results[label] = out
    # bare embedding of new texts (a fresh embedder call per probe; no cache in front)
    base = []
    for text in probes:
        t0 = time.perf_counter()
        emb.embed([text + " ?"])
        base.append(time.perf_counter() - t0)
    b50 = float(np.percentile(base, 50)) * 1e3
    print(f"bare embedding: p50 {b50:.2f} ms, p99 {float(np.percentile(base, 99)) * 1e3:.2f} ms ({len(base)} texts)")
    print(f"{'':<14}{'lookup':<15}{'n':>5}{'p50 ms':>9}{'p99 ms':>9}{'p50 / embedding':>17}")
    for label, out in results.items():
        for kind, ts in out.items():
            if not ts:
                continue
            p50 = float(np.percentile(ts, 50)) * 1e3
            print(f"{label:<14}{kind:<15}{len(ts):>5}{p50:>9.2f}{float(np.percentile(ts, 99)) * 1e3:>9.2f}{p50 / b50:>16.2f}x")


if __name__ == "__main__":
    main()
