"""Hit correctness on labeled paraphrase data, through the public cache API.

    python benchmarks/bench_correctness.py ../shared/data/qqp-dev [../shared/data/paws-wiki-dev ...]

For each dataset folder (``corpus.jsonl`` + ``probes.jsonl``): warm a fresh cache
(L1 + SQLite in a temporary folder + the default embedder) with the corpus through
``set_many``, then look every probe up read-only (``explain``: nothing is stored or
promoted) and score, for a sweep of thresholds, bare cosine (no guards) against the
default guards: correct hits, wrong-entry hits, false hits on must-miss probes,
precision, recall, F1, and the recall reached at <= 5% and <= 1% false hits.

The cache's decision rule makes a sweep exact from one pass: a lookup takes the
nearest candidate in scope; it is a hit when its similarity clears the threshold
and every guard passes, else a miss (a candidate that fails a guard is not replaced
by a further one).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig
from semcache.guards import DEFAULT_GUARDS, GUARD_NAMES


@dataclass
class Probe:
    prompt: str
    match: str | None
    top_id: str | None  # corpus id of the nearest candidate (None: nothing in scope)
    sim: float
    verdicts: dict[str, bool]  # every guard's verdict on the nearest candidate


def load(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_probes(folder: Path, embedder: object) -> tuple[list[Probe], float, float]:
    """Warm a cache with the corpus, then record each probe's nearest candidate and
    every guard's verdict on it (guards are scored later, alone or together)."""
    corpus = load(folder / "corpus.jsonl")
    probes = load(folder / "probes.jsonl")
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CacheConfig(
            memory=MemoryConfig(max_entries=50_000),
            sql=SQLConfig(url=f"sqlite:///{tmp}/bench.db"),
            embedder=embedder,
            policy=Policy(guards=tuple(GUARD_NAMES), default_ttl_seconds=None),
        )
        with SemanticCache(cfg) as cache:
            t0 = time.perf_counter()
            entries = cache.set_many(
                {"prompt": c["prompt"], "value": c["response"], "metadata": {"id": c["id"]}} for c in corpus
            )
            warm_s = time.perf_counter() - t0
            key_to_id = {e.key: e.metadata["id"] for e in entries}
            out: list[Probe] = []
            t0 = time.perf_counter()
            for p in probes:
                ex = cache.explain(p["prompt"], k=1, threshold=-1.0)
                if ex.get("kind") == "exact":
                    out.append(Probe(p["prompt"], p["match"], key_to_id.get(ex["entry_id"]), 1.0, {}))
                    continue
                cands = ex["candidates"]
                if not cands:
                    out.append(Probe(p["prompt"], p["match"], None, -1.0, {}))
                    continue
                c = cands[0]
                verdicts = {g["name"]: g["passed"] for g in c["guards"]}
                out.append(Probe(p["prompt"], p["match"], key_to_id.get(c["entry_id"]), c["similarity"], verdicts))
            look_s = time.perf_counter() - t0
    return out, len(corpus) / warm_s, look_s / len(probes) * 1000


def score(probes: list[Probe], thr: float, guards: tuple[str, ...] = ()) -> dict[str, float]:
    """Score the probes at one threshold with the named guards switched on."""
    must_hit = [p for p in probes if p.match is not None]
    must_miss = [p for p in probes if p.match is None]
    def hit(p: Probe) -> bool:
        return p.top_id is not None and p.sim >= thr and all(p.verdicts.get(g, True) for g in guards)

    correct = sum(1 for p in must_hit if hit(p) and p.top_id == p.match)
    wrong = sum(1 for p in must_hit if hit(p) and p.top_id != p.match)
    false = sum(1 for p in must_miss if hit(p))
    hits = correct + wrong + false
    precision = correct / hits if hits else 1.0
    recall = correct / len(must_hit) if must_hit else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "thr": thr,
        "correct": correct,
        "wrong": wrong,
        "false": false,
        "fhr": false / len(must_miss) if must_miss else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }


def summarise(probes: list[Probe], thresholds: np.ndarray, guards: tuple[str, ...]) -> dict[str, object]:
    """Score a sweep; best F1 and the recall reachable under 5% and 1% false hits."""
    rows = [score(probes, float(t), guards) for t in thresholds]
    best = max(rows, key=lambda r: r["f1"])

    def recall_at(limit: float) -> tuple[float, float | None]:
        ok = [r for r in rows if r["fhr"] <= limit]
        if not ok:
            return 0.0, None
        r = max(ok, key=lambda r: r["recall"])
        return r["recall"], r["thr"]

    return {"rows": rows, "best": best, "r5": recall_at(0.05), "r1": recall_at(0.01)}


def fmt_row(r: dict[str, float]) -> str:
    return (
        f"{r['thr']:7.4f} {r['correct']:7d} {r['wrong']:6d} {r['false']:6d} {r['fhr']:6.1%} "
        f"{r['precision']:9.3f} {r['recall']:7.3f} {r['f1']:6.3f}"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description="Hit correctness of semcache on labeled data.")
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--step", type=float, default=0.01)
    ap.add_argument("--lo", type=float, default=0.70)
    ap.add_argument("--hi", type=float, default=0.999)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semcache.embedders import default_embedder

    emb = default_embedder()
    emb.embed(["warm-up"])
    default_thr = Policy().similarity_threshold
    thresholds = np.round(np.arange(args.lo, args.hi + 1e-9, args.step), 4)
    # a finer grid at the top, where the strict operating points are
    fine = np.round(np.arange(0.95, args.hi + 1e-9, 0.0025), 4)
    thresholds = np.unique(np.concatenate([thresholds, fine, [default_thr, args.hi]]))
    header = f"{'thr':>7} {'correct':>7} {'wrong':>6} {'false':>6} {'FHR':>6} {'precision':>9} {'recall':>7} {'F1':>6}"
    for folder in args.datasets:
        print(f"\n=== {folder.name} ===")
        summaries = {}
        probes, warm_rate, ms = run_probes(folder, emb)
        print(f"warm-up {warm_rate:.0f} inserts/s (set_many, embedding included); explain {ms:.2f} ms/probe")
        variants = [("bare cosine", ())] + [(f"guard {g} alone", (g,)) for g in GUARD_NAMES]
        variants.append((f"default: {'+'.join(DEFAULT_GUARDS)}", tuple(DEFAULT_GUARDS)))
        for label, guards in variants:
            s = summarise(probes, thresholds, guards)
            summaries[label] = s
            if guards and label != variants[-1][0]:
                continue  # single guards: summary line only
            print(f"\n-- {label}")
            print(header)
            for r in s["rows"]:
                mark = "  <- default" if abs(r["thr"] - default_thr) < 1e-9 else ""
                print(fmt_row(r) + mark)
        print(f"\nsummary {folder.name}:")
        print(f"{'':<34}{'best F1':>8} {'@thr':>6} {'R@FHR<=5% @thr':>14} {'R@FHR<=1% @thr':>14} {'P@default':>10} {'R@default':>10} {'FHR@default':>12}")
        for label, s in summaries.items():
            d = score_at(s, default_thr)
            print(
                f"{label:<34}{s['best']['f1']:8.3f} {s['best']['thr']:6.4f} {_at(s['r5']):>14} {_at(s['r1']):>14} "
                f"{d['precision']:10.3f} {d['recall']:10.3f} {d['fhr']:12.1%}"
            )
    sys.stdout.flush()


def _at(r: tuple[float, float | None]) -> str:
    return "0.000 (none)" if r[1] is None else f"{r[0]:.3f} @{r[1]:.4f}"


def score_at(summary: dict[str, object], thr: float) -> dict[str, float]:
    rows = summary["rows"]
    return min(rows, key=lambda r: abs(r["thr"] - thr))  # type: ignore[arg-type, return-value]


if __name__ == "__main__":
    main()
