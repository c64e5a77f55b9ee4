"""Hit correctness on labeled paraphrase data, through the public cache API.

    semcache bench correctness ../shared/data/qqp-dev ../shared/data/paws-wiki-dev

For each dataset folder (``corpus.jsonl`` + ``probes.jsonl``): warm a fresh cache
(L1 + SQLite in a temporary folder + the default embedder) with the corpus through
``set_many``, then look every probe up read-only with ``explain`` (nothing is stored or
promoted) and score four decision rules, for a sweep of thresholds and at the default:

* **bare cosine**: the nearest candidate in scope is a hit when its cosine clears the
  threshold (``Policy(verifier=None, guards=())``);
* **guards**: the same, and every default guard passes (the old default);
* **verifier**: the default verifier scores up to ``verifier_top_k`` candidates past the
  similarity floor; the first, in cosine order, whose score clears the threshold wins
  (the new default, swept over the score threshold);
* **verifier + guards**: the same with the guards as vetoes (a vetoed candidate is
  skipped).

Reported per rule: correct hits, wrong-entry hits, false hits on must-miss probes,
precision, recall, F1, the recall at <= 5% and <= 1% false hits, and the false-hit rate
and recall at the default operating point (``Policy()``: ``max_false_hit_rate=0.01``
through the verifier's shipped calibration; cosine 0.95 for the rules without it), plus
the time per probe of each read-only lookup. One pass per probe gives an exact sweep,
since every rule only thresholds numbers the pass records.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from semcache import CacheConfig, MemoryConfig, Policy, SemanticCache, SQLConfig
from semcache.config import DEFAULT_SIMILARITY_THRESHOLD
from semcache.guards import DEFAULT_GUARDS, GUARD_NAMES, build_guards


@dataclass
class Cand:
    entry_id: str | None  # corpus id
    sim: float
    score: float | None  # verifier score (None: not scored, e.g. below the floor)
    verdicts: dict[str, bool]  # every guard's verdict on this candidate


@dataclass
class Probe:
    match: str | None
    exact: str | None = None  # corpus id of an exact hit
    cands: list[Cand] = field(default_factory=list)


def load(path: Path) -> list[dict[str, Any]]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def run_probes(folder: Path, embedder: object, verifier: bool) -> tuple[list[Probe], float, dict[str, float]]:
    """Warm a cache with the corpus, then record each probe's candidates: cosine, the
    verifier's score (when ``verifier``) and the default guards' verdict."""
    corpus = load(folder / "corpus.jsonl")
    probes = load(folder / "probes.jsonl")
    guards = build_guards(GUARD_NAMES)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = CacheConfig(
            memory=MemoryConfig(max_entries=50_000),
            sql=SQLConfig(url=f"sqlite:///{tmp}/bench.db"),
            embedder=embedder,
            # verifier_threshold=0: every candidate past Policy.similarity_floor is scored
            # (the cache would skip those the default threshold cannot pass), so that the
            # sweep below sees every score; the default threshold is the calibration's.
            policy=Policy(guards=(), default_ttl_seconds=None, verifier="default" if verifier else None, verifier_threshold=0.0 if verifier else None),
        )
        with SemanticCache(cfg) as cache:
            entries = cache.set_many(
                {"prompt": c["prompt"], "value": c["response"], "metadata": {"id": c["id"]}} for c in corpus
            )
            key_to_id = {e.key: e.metadata["id"] for e in entries}
            out: list[Probe] = []
            times: list[float] = []
            for p in probes:
                t0 = time.perf_counter()
                if verifier:
                    ex = cache.explain(p["prompt"], k=3)
                else:
                    ex = cache.explain(p["prompt"], k=1, threshold=-1.0)
                times.append(time.perf_counter() - t0)
                probe = Probe(p["match"])
                if ex.get("kind") == "exact":
                    probe.exact = key_to_id.get(ex["entry_id"])
                for c in ex.get("candidates", []):
                    if c["prompt"] is None:
                        continue
                    verdicts = {r.name: r.passed for r in (g(p["prompt"], c["prompt"]) for g in guards)}
                    probe.cands.append(Cand(key_to_id.get(c["entry_id"]), c["similarity"], c.get("verifier_score"), verdicts))
                out.append(probe)
            vthr = cache.verifier.calibration.threshold_for(Policy().max_false_hit_rate) if verifier else None
    t = np.array(times) * 1000
    return out, (vthr if vthr is not None else float("nan")), {"p50_ms": float(np.percentile(t, 50)), "p99_ms": float(np.percentile(t, 99))}


Rule = Callable[[Probe, float], str | None]


def cosine_rule(guards: tuple[str, ...]) -> Rule:
    def decide(p: Probe, thr: float) -> str | None:
        if p.exact is not None:
            return p.exact
        if not p.cands or p.cands[0].sim < thr:
            return None
        c = p.cands[0]
        return c.entry_id if all(c.verdicts[g] for g in guards) else None

    return decide


def verifier_rule(guards: tuple[str, ...]) -> Rule:
    def decide(p: Probe, thr: float) -> str | None:
        if p.exact is not None:
            return p.exact
        for c in p.cands:
            if c.score is None or not all(c.verdicts[g] for g in guards):
                continue
            if c.score >= thr:
                return c.entry_id
        return None

    return decide


def score(probes: list[Probe], decide: Rule, thr: float) -> dict[str, float]:
    must_hit = [p for p in probes if p.match is not None]
    must_miss = [p for p in probes if p.match is None]
    got = [(p, decide(p, thr)) for p in probes]
    correct = sum(1 for p, h in got if p.match is not None and h == p.match)
    wrong = sum(1 for p, h in got if p.match is not None and h is not None and h != p.match)
    false = sum(1 for p, h in got if p.match is None and h is not None)
    hits = correct + wrong + false
    precision = correct / hits if hits else 1.0
    recall = correct / len(must_hit) if must_hit else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"thr": thr, "correct": correct, "wrong": wrong, "false": false, "fhr": false / max(1, len(must_miss)), "precision": precision, "recall": recall, "f1": f1}


def summarise(probes: list[Probe], decide: Rule, thresholds: np.ndarray, default: float) -> dict[str, Any]:
    rows = [score(probes, decide, float(t)) for t in thresholds]

    def recall_at(limit: float) -> tuple[float, float | None]:
        ok = [r for r in rows if r["fhr"] <= limit]
        if not ok:
            return 0.0, None
        r = max(ok, key=lambda r: r["recall"])
        return r["recall"], r["thr"]

    return {"rows": rows, "best": max(rows, key=lambda r: r["f1"]), "r5": recall_at(0.05), "r1": recall_at(0.01), "default": score(probes, decide, default)}


def _at(r: tuple[float, float | None]) -> str:
    return "0.000 (none)" if r[1] is None else f"{r[0]:.3f} @{r[1]:.4f}"


def main() -> None:
    ap = argparse.ArgumentParser(description="Hit correctness of semcache on labeled data.")
    ap.add_argument("datasets", nargs="+", type=Path)
    ap.add_argument("--json", type=Path, help="also write the summaries here")
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from semcache.embedders import default_embedder

    emb = default_embedder()
    emb.embed(["warm-up"])
    cos_grid = np.unique(np.concatenate([np.arange(0.70, 0.95, 0.01), np.arange(0.95, 1.0001, 0.0025), [DEFAULT_SIMILARITY_THRESHOLD]]))
    report: dict[str, object] = {}
    for folder in args.datasets:
        print(f"\n=== {folder.name} ===", flush=True)
        bare, _, t_bare = run_probes(folder, emb, verifier=False)
        ver, vthr, t_ver = run_probes(folder, emb, verifier=True)
        scores = sorted({c.score for p in ver for c in p.cands if c.score is not None})
        score_grid = np.unique(np.concatenate([[0.0], np.quantile(scores, np.linspace(0, 1, 600)) if scores else [], [vthr, 1.0]]))
        default = tuple(DEFAULT_GUARDS)
        rules = {
            "bare cosine": summarise(bare, cosine_rule(()), cos_grid, DEFAULT_SIMILARITY_THRESHOLD),
            f"guards ({'+'.join(default)})": summarise(bare, cosine_rule(default), cos_grid, DEFAULT_SIMILARITY_THRESHOLD),
            "verifier": summarise(ver, verifier_rule(()), score_grid, vthr),
            f"verifier + {'+'.join(default)}": summarise(ver, verifier_rule(default), score_grid, vthr),
        }
        for g in GUARD_NAMES:
            rules[f"verifier + {g}"] = summarise(ver, verifier_rule((g,)), score_grid, vthr)
        print(f"explain per probe: cosine p50 {t_bare['p50_ms']:.2f} ms, p99 {t_bare['p99_ms']:.2f} ms; "
              f"with the verifier p50 {t_ver['p50_ms']:.2f} ms, p99 {t_ver['p99_ms']:.2f} ms; default verifier threshold {vthr:.4f}")
        print(f"{'rule':<26}{'best F1':>8} {'R@FHR<=5%':>16} {'R@FHR<=1%':>16} {'FHR@default':>12} {'R@default':>10} {'P@default':>10}")
        for label, s in rules.items():
            d = s["default"]
            print(f"{label:<26}{s['best']['f1']:8.3f} {_at(s['r5']):>16} {_at(s['r1']):>16} {d['fhr']:12.1%} {d['recall']:10.3f} {d['precision']:10.3f}")
        # bare cosine's recall at the verifier's default false-hit rate
        d = rules["verifier"]["default"]
        ok = [r for r in rules["bare cosine"]["rows"] if r["fhr"] <= d["fhr"]]
        same = max((r["recall"] for r in ok), default=0.0)
        print(f"bare cosine at the verifier's default false-hit rate ({d['fhr']:.1%}): recall {same:.3f} (verifier {d['recall']:.3f})")
        report[folder.name] = {k: {kk: v for kk, v in s.items() if kk != "rows"} for k, s in rules.items()} | {"latency": {"cosine": t_bare, "verifier": t_ver}, "cosine_recall_at_verifier_default_fhr": same}
    if args.json:
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    sys.stdout.flush()


if __name__ == "__main__":
    main()
